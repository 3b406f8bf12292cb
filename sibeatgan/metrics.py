"""Anomaly scores and their metrics: the floor under training and evaluation (torch and numpy only).

A beat's score is its mean squared reconstruction error; a student saved with its teacher's encoder may score
instead by the teacher-student latent discrepancy, or by a weighted sum of both (AnomalyScore). Metrics: ROC AUC (ties count half), average
precision as sklearn defines it, best F1 (an oracle figure: its threshold is picked on the very beats it
is scored on), F1/precision/recall at a threshold chosen without test labels, and bootstrap intervals.
Intervals resample records (patients, all beats of a drawn record together) by default, or beats within
each class; a comparison over several trained pairs (units: seeds, folds) resamples the units too, so training
variance counts (paired_compare_units, level unit+record). Every resample is a row of weights on the beats, so a
chunk of resamples is one array sum.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from sibeatgan.data.artifact import CLASSES

_CELLS = 4_000_000  # resamples x beats held in memory at once
_MAX_REDRAW = 100  # a record resample lacking a class is drawn again; give up past 100 redraws per resample on average


def _per_beat(
    who: str,
    generator: torch.nn.Module,
    beats: torch.Tensor | np.ndarray,
    batch_size: int,
    device: str | torch.device | None,
    amp: bool,
    reconstruction: bool = True,
    teacher_encoder: torch.nn.Module | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One pass over the beats, the models in eval mode on `device`: each beat's mean squared reconstruction error
    (if `reconstruction`) and, given the teacher's encoder, the mean squared distance between the generator's latent
    code and the teacher's; (n,) float32 each, None where not asked for. Both from one forward pass of the generator."""
    param = next(generator.parameters())
    dev = torch.device(device) if device is not None else param.device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if param.device != dev:
        raise ValueError(f"{who}: the generator is on {param.device} but device {dev} was asked for; move it first")
    x = torch.as_tensor(beats)
    if not x.is_floating_point() or x.dim() != 3:
        raise ValueError(f"{who}: beats must be float of shape (n, leads, length), got {x.dtype} {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"{who}: batch_size must be positive, got {batch_size}")
    rec = torch.empty(x.shape[0], dtype=torch.float32, device=dev) if reconstruction else None
    gap = torch.empty(x.shape[0], dtype=torch.float32, device=dev) if teacher_encoder is not None else None
    models = [m for m in (generator, teacher_encoder) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(dev, torch.float32, non_blocking=True)
                rows = slice(start, start + xb.shape[0])
                if rec is not None:
                    reconstructed, latent = generator(xb)
                    rec[rows] = (reconstructed.float() - xb).pow(2).flatten(1).mean(1)
                else:
                    latent = generator.encoder(xb)
                if gap is not None:
                    gap[rows] = (latent.float() - teacher_encoder(xb).float()).pow(2).flatten(1).mean(1)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return tuple(None if t is None else t.cpu().numpy() for t in (rec, gap))  # type: ignore[return-value]


def score(
    generator: torch.nn.Module,
    beats: torch.Tensor | np.ndarray,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> np.ndarray:
    """Per-beat mean squared reconstruction error, (n,) float32; the generator runs in eval mode on `device`.

    Beats already on `device` are read in place; beats elsewhere are copied there batch by batch, so callers
    that score a whole split (training's validation, run_evaluate) move it to the device once beforehand.
    """
    return _per_beat("score", generator, beats, batch_size, device, amp)[0]


SCORE_KINDS = ("reconstruction", "discrepancy", "combined")


def latent_gap(
    generator: torch.nn.Module,
    teacher_encoder: torch.nn.Module,
    beats: torch.Tensor | np.ndarray,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> np.ndarray:
    """Per-beat mean squared distance between the generator's latent code and the teacher encoder's, (n,) float32.

    A student learns to match its teacher on normal beats only, so their disagreement is a score of its own (as
    STPM and Reverse Distillation use it for images). Both run in eval mode on `device`, as `score` does."""
    return _per_beat("latent_gap", generator, beats, batch_size, device, amp, reconstruction=False, teacher_encoder=teacher_encoder)[1]


def score_and_gap(
    generator: torch.nn.Module,
    teacher_encoder: torch.nn.Module,
    beats: torch.Tensor | np.ndarray,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`score` and `latent_gap` of the same beats from one forward pass of the generator."""
    return _per_beat("score_and_gap", generator, beats, batch_size, device, amp, teacher_encoder=teacher_encoder)  # type: ignore[return-value]


def standardizer(values: np.ndarray) -> list[float]:
    """[mean, sd] of scores of normal validation beats, so scores on different scales can be added (sd floored)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"standardizer: needs finite scores of normal beats, got {v.size} value(s), {int((~np.isfinite(v)).sum())} not finite")
    return [float(v.mean()), float(max(v.std(), 1e-12 * max(abs(v.mean()), 1.0), 1e-30))]


def combine(reconstruction: np.ndarray, gap: np.ndarray, weight: float, rec_stats: Sequence[float], gap_stats: Sequence[float]) -> np.ndarray:
    """(1 - weight) * standardized reconstruction error + weight * standardized latent discrepancy, (n,) float32."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"combine: weight must be in [0, 1], got {weight}")
    r = (np.asarray(reconstruction, np.float64) - rec_stats[0]) / rec_stats[1]
    g = (np.asarray(gap, np.float64) - gap_stats[0]) / gap_stats[1]
    return ((1.0 - weight) * r + weight * g).astype(np.float32)


class AnomalyScore:
    """A model's anomaly score of each beat, as its generator file says (`meta["score"]`):

    - "reconstruction" (default, and every teacher): mean squared reconstruction error;
    - "discrepancy": the teacher-student latent gap (`latent_gap`), for a student saved with its teacher's encoder;
    - "combined": `combine` of both with the weight and the normal-validation statistics saved with the model.

    `kind` overrides the file's choice (evaluation can report every score a model offers); a kind the file cannot
    give (no teacher encoder, no saved statistics) is a ValueError naming what is missing.
    """

    def __init__(self, generator: torch.nn.Module, spec: dict[str, Any] | None = None, teacher_encoder: torch.nn.Module | None = None,
                 kind: str | None = None, source: str = "the model"):
        self.generator, self.teacher_encoder, self.spec = generator, teacher_encoder, dict(spec or {"kind": "reconstruction"})
        self.kind = kind or self.spec.get("kind", "reconstruction")
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"{source}: unknown score {self.kind!r}; use one of {', '.join(SCORE_KINDS)}")
        if self.kind != "reconstruction" and teacher_encoder is None:
            raise ValueError(f"{source}: the {self.kind} score needs the teacher's encoder, which this model file does not carry "
                             "(only students trained by this version of train-student carry it)")
        if self.kind == "combined" and not all(k in self.spec for k in ("weight", "reconstruction_stats", "discrepancy_stats")):
            raise ValueError(f"{source}: the combined score needs a weight and normal-validation statistics, which this model file lacks")

    @property
    def is_model_default(self) -> bool:
        return self.kind == self.spec.get("kind", "reconstruction")

    def __call__(self, beats: torch.Tensor | np.ndarray, batch_size: int = 4096, device: str | torch.device | None = None,
                 amp: bool = False) -> np.ndarray:
        if self.kind == "reconstruction":
            return score(self.generator, beats, batch_size, device, amp)
        if self.kind == "discrepancy":
            return latent_gap(self.generator, self.teacher_encoder, beats, batch_size, device, amp)
        rec, gap = score_and_gap(self.generator, self.teacher_encoder, beats, batch_size, device, amp)
        return combine(rec, gap, float(self.spec["weight"]), self.spec["reconstruction_stats"], self.spec["discrepancy_stats"])


def _weighted(pos_w: np.ndarray, neg_w: np.ndarray) -> dict[str, np.ndarray]:
    """AUC, AP, best F1 (and its group) from rows of per-tie-group positive/negative weights, scores descending.

    AP is sklearn's: the sum over thresholds of (recall step) x precision. A group where the recall steps
    holds a positive, so tp + fp > 0 there; groups with no weight in a resample add nothing (their precision
    is only ever multiplied by a zero step). Callers guarantee every row has positives and negatives.
    """
    p, n = pos_w.sum(1), neg_w.sum(1)
    tp, fp = np.cumsum(pos_w, 1), np.cumsum(neg_w, 1)
    rowdot = lambda x, y: np.einsum("ij,ij->i", x, y)  # noqa: E731  (row-wise sums without a (b, g) temporary)
    # negatives ranked below a positive's group, plus half of those tied with it
    auc = (p * n - rowdot(pos_w, fp) + 0.5 * rowdot(pos_w, neg_w)) / (p * n)
    flagged = tp + fp  # weights are counts, so flagged is 0 or at least 1, and tp is 0 where flagged is 0
    ap = rowdot(pos_w, tp / np.maximum(flagged, 1.0)) / p
    f1 = 2 * tp / (flagged + p[:, None])
    best = np.argmax(f1, 1)
    return {"auc": auc, "ap": ap, "f1": f1[np.arange(f1.shape[0]), best], "best": best}


class _Ranking:
    """One score vector sorted once (descending, stable) into tie groups: the thresholds of every curve."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray):
        self.order = np.argsort(-scores, kind="mergesort")
        s = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.values = s[self.starts]
        self.pos = positive[self.order].astype(np.float64)

    def evaluate(self, w: np.ndarray | _Draw, unit: int = 0) -> dict[str, np.ndarray]:
        """Metrics of each row of beat weights: `w` (b, n) with beats in input order, or unit `unit` of a draw."""
        ws = w.weights(unit, self.order) if isinstance(w, _Draw) else w[:, self.order]
        pos_w = np.add.reduceat(ws * self.pos, self.starts, axis=1)
        return _weighted(pos_w, np.add.reduceat(ws, self.starts, axis=1) - pos_w)


def _check(scores: np.ndarray, positive: np.ndarray, who: str) -> None:
    if scores.ndim != 1 or scores.shape != positive.shape:
        raise ValueError(f"{who}: scores {scores.shape} and labels {positive.shape} must be 1-D of one length")
    if not np.isfinite(scores).all():
        raise ValueError(f"{who}: {int((~np.isfinite(scores)).sum())} score(s) are not finite")
    if positive.all() or not positive.any():
        raise ValueError(f"{who}: need normal and anomalous beats, got {int((~positive).sum())} normal and {int(positive.sum())} anomalous")


def ranked_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """AUC (ties count half), AP and best F1 with its threshold (score >= threshold is anomalous); numpy only."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    _check(scores, positive, "ranked_metrics")
    rank = _Ranking(scores, positive)
    r = rank.evaluate(np.ones((1, scores.shape[0])))
    return {"auc": float(r["auc"][0]), "ap": float(r["ap"][0]), "f1": float(r["f1"][0]), "threshold": float(rank.values[r["best"][0]])}


def _counts(rng: np.random.Generator, b: int, m: int) -> np.ndarray:
    """(b, m) multiplicities of m items drawn m times with replacement, one row per resample."""
    picks = rng.integers(0, m, (b, m)) + (np.arange(b) * m)[:, None]
    return np.bincount(picks.ravel(), minlength=b * m).reshape(b, m)


class _Sampler:
    """Bootstrap weights on the beats of one or more units (folds, seeds) that share one set of records.

    groups=None: beat level, positives and negatives resampled apart (one unit only). Otherwise records are
    drawn with replacement and each drawn record brings all its beats, in every unit; a draw in which some
    unit has no positive or no negative beat is redrawn (counted in `redrawn`), so intervals are
    conditional on both classes being present.
    """

    def __init__(self, positives: Sequence[np.ndarray], groups: Sequence[np.ndarray] | None):
        self.positives = [np.asarray(p, dtype=bool) for p in positives]
        self.redrawn = 0
        self.drawn = 0
        if groups is None:
            if len(self.positives) != 1:
                raise ValueError("beat-level bootstrap takes one unit; pass groups to pool units")
            self.gids: list[np.ndarray] | None = None
            self.n_groups = int(self.positives[0].shape[0])
            return
        if len(groups) != len(self.positives):
            raise ValueError(f"{len(groups)} group arrays for {len(self.positives)} units")
        flat = [np.asarray(g).astype(str) for g in groups]
        for g, p in zip(flat, self.positives):
            if g.shape != p.shape:
                raise ValueError(f"groups {g.shape} and labels {p.shape} must have one length")
        names, inverse = np.unique(np.concatenate(flat), return_inverse=True)
        self.n_groups = int(names.shape[0])
        self.gids = np.split(inverse.ravel(), np.cumsum([g.shape[0] for g in flat])[:-1])
        self.pos_per = np.stack([np.bincount(g, weights=p, minlength=self.n_groups) for g, p in zip(self.gids, self.positives)])
        self.neg_per = np.stack([np.bincount(g, weights=~p, minlength=self.n_groups) for g, p in zip(self.gids, self.positives)])

    def _bad(self, counts: np.ndarray) -> np.ndarray:
        return ((counts @ self.pos_per.T) == 0).any(1) | ((counts @ self.neg_per.T) == 0).any(1)

    def draw(self, rng: np.random.Generator, b: int) -> _Draw:
        """`b` resamples: beat multiplicities (beat level) or record multiplicities (record level)."""
        self.drawn += b
        if self.gids is None:
            pos = self.positives[0]
            w = np.zeros((b, pos.shape[0]))
            for member in (np.flatnonzero(pos), np.flatnonzero(~pos)):
                w[:, member] = _counts(rng, b, member.shape[0])
            return _Draw(w, None)
        counts = _counts(rng, b, self.n_groups).astype(np.float64)
        bad = self._bad(counts)
        while bad.any():
            self.redrawn += int(bad.sum())
            if self.redrawn > _MAX_REDRAW * self.drawn:
                raise ValueError(
                    f"record bootstrap: fewer than 1 in {_MAX_REDRAW} resamples of the {self.n_groups} records hold both "
                    "normal and anomalous beats; use the beat-level bootstrap"
                )
            counts[bad] = _counts(rng, int(bad.sum()), self.n_groups)
            bad = self._bad(counts)
        return _Draw(counts, self.gids)


class _Draw:
    """One chunk of resamples: (b, n) beat multiplicities, or (b, records) multiplicities with each unit's record ids."""

    def __init__(self, counts: np.ndarray, gids: list[np.ndarray] | None):
        self.counts, self.gids = counts, gids

    def weights(self, unit: int, order: np.ndarray | None = None) -> np.ndarray:
        """(b, n_unit) beat weights, beats in `order` (default: input order); one gather either way."""
        if self.gids is None:
            return self.counts if order is None else self.counts[:, order]
        gid = self.gids[unit]
        return self.counts[:, gid if order is None else gid[order]]

    def sums(self, unit: int, values: np.ndarray) -> np.ndarray:
        """(b,) weighted sum of one value per beat: per record first, so no (b, n) array is made."""
        if self.gids is None:
            return self.counts @ values.astype(np.float64)
        return self.counts @ np.bincount(self.gids[unit], weights=values.astype(np.float64), minlength=self.counts.shape[1])


def _chunks(n_bootstrap: int, n: int) -> list[int]:
    step = max(1, _CELLS // max(n, 1))
    return [min(step, n_bootstrap - s) for s in range(0, n_bootstrap, step)]


def _operating(w: np.ndarray | _Draw, flagged: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """F1, precision (0 when nothing is flagged, as sklearn's zero_division=0), recall, false-alarm rate per weight row."""
    draw = w if isinstance(w, _Draw) else _Draw(w, None)
    tp, fp = draw.sums(0, flagged & positive), draw.sums(0, flagged & ~positive)
    p, n = draw.sums(0, positive), draw.sums(0, ~positive)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    return {"f1": 2 * tp / (tp + fp + p), "precision": precision, "recall": tp / p, "false_alarm_rate": fp / n}


def bootstrap(
    scores: np.ndarray,
    positive: np.ndarray,
    n_bootstrap: int,
    seed: int,
    groups: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """AUC, AP and best F1 of `n_bootstrap` resamples: of records when `groups` (the record of each beat) is
    given, else of beats within each class. With `threshold`, also F1, precision, recall and false-alarm rate
    at it. Every value is finite; `redrawn` counts record resamples drawn again for lacking a class."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    _check(scores, positive, "bootstrap")
    rank = _Ranking(scores, positive)
    sampler = _Sampler([positive], None if groups is None else [np.asarray(groups)])
    flagged = scores >= threshold if threshold is not None else None
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for b in _chunks(n_bootstrap, scores.shape[0]):
        w = sampler.draw(rng, b)
        r = rank.evaluate(w)
        parts = {k: r[k] for k in ("auc", "ap", "f1")}
        if flagged is not None:
            parts.update({f"{k}_at_threshold": v for k, v in _operating(w, flagged, positive).items()})
        for k, v in parts.items():
            out.setdefault(k, []).append(v)
    result: dict[str, Any] = {k: np.concatenate(v) for k, v in out.items()}
    for k in ("auc", "ap", "f1"):
        result.setdefault(k, np.empty(0))
    for k, v in result.items():
        if not np.isfinite(v).all():  # cannot happen by construction; never hide it if it does
            raise RuntimeError(f"bootstrap: {int((~np.isfinite(v)).sum())} non-finite {k} value(s)")
    result.update(redrawn=sampler.redrawn, n_groups=sampler.n_groups)
    return result


def interval(samples: np.ndarray, ci: float) -> list[float]:
    """The central `ci` percentile interval of bootstrap samples (all finite)."""
    lo, hi = np.percentile(samples, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return [float(lo), float(hi)]


def choose_threshold(val_scores: np.ndarray, val_labels: np.ndarray | None = None, rule: str = "far", far: float = 0.01) -> float:
    """A threshold chosen on validation beats (score >= threshold is anomalous), never on test labels.

    rule "far": the (1 - far) quantile of the normal validation scores, so about `far` of normal beats raise
    an alarm; it needs no anomaly labels (val_labels None: every beat is taken as normal). rule "f1": the
    threshold of the best validation F1 (the paper protocol, which labels anomalies in validation).
    """
    scores = np.asarray(val_scores, dtype=np.float64)
    labels = np.zeros(scores.shape[0], np.int64) if val_labels is None else np.asarray(val_labels)
    if scores.ndim != 1 or scores.shape != labels.shape or scores.size == 0:
        raise ValueError(f"choose_threshold: scores {scores.shape} and labels {labels.shape} must be 1-D of one non-zero length")
    if not np.isfinite(scores).all():
        raise ValueError(f"choose_threshold: {int((~np.isfinite(scores)).sum())} validation score(s) are not finite")
    if rule == "far":
        if not 0 < far < 1:
            raise ValueError(f"choose_threshold: far must be in (0, 1), got {far}")
        normal = scores[labels == 0]
        if normal.size == 0:
            raise ValueError("choose_threshold: rule 'far' needs normal validation beats, found none")
        return float(np.quantile(normal, 1 - far))
    if rule == "f1":
        return ranked_metrics(scores, labels != 0)["threshold"]
    raise ValueError(f"choose_threshold: unknown rule {rule!r}; use 'far' or 'f1'")


def metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    groups: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics of anomaly scores against class labels (indices into `classes`, 0 = normal) with bootstrap CIs.

    groups: the record of each beat, for record-level intervals (None: beat-level, stratified by class).
    threshold: chosen without test labels (choose_threshold); adds F1, precision, recall, false-alarm rate and
    per-class recall at it. `f1_oracle` is the best F1 over thresholds picked on these very beats; `f1` is kept
    as its alias for older readers.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    positive = labels != 0
    _check(scores, positive, "metrics")
    if not 0 < ci < 1:
        raise ValueError(f"metrics: ci must be in (0, 1), got {ci}")
    if groups is not None and np.asarray(groups).shape != scores.shape:
        raise ValueError(f"metrics: groups {np.asarray(groups).shape} and scores {scores.shape} must have one length")
    ranked = ranked_metrics(scores, positive)
    oracle = _operating(np.ones((1, scores.shape[0])), scores >= ranked["threshold"], positive)
    result: dict[str, Any] = {
        "n": int(scores.shape[0]),
        "n_normal": int((~positive).sum()),
        "n_anomalous": int(positive.sum()),
        "prevalence": float(positive.mean()),
        "n_records": None if groups is None else int(np.unique(np.asarray(groups).astype(str)).shape[0]),
        "n_records_anomalous": None if groups is None else int(np.unique(np.asarray(groups)[positive].astype(str)).shape[0]),
        "auc": ranked["auc"],
        "ap": ranked["ap"],
        "f1_oracle": ranked["f1"],
        "threshold_oracle": ranked["threshold"],
        "precision_oracle": float(oracle["precision"][0]),
        "recall_oracle": float(oracle["recall"][0]),
        "false_alarm_rate_oracle": float(oracle["false_alarm_rate"][0]),
        "ci": ci,
        "n_bootstrap": int(n_bootstrap),
        "bootstrap": "record" if groups is not None else "beat",
    }
    if threshold is not None:
        at = _operating(np.ones((1, scores.shape[0])), scores >= threshold, positive)
        result["operating"] = {"threshold": float(threshold), **{k: float(v[0]) for k, v in at.items()}}
    if n_bootstrap > 0:
        boot = bootstrap(scores, positive, n_bootstrap, seed, groups, threshold)
        result["redrawn"] = boot["redrawn"]
        for k in ("auc", "ap"):
            result[f"{k}_ci"] = interval(boot[k], ci)
        result["f1_oracle_ci"] = interval(boot["f1"], ci)
        if threshold is not None:
            for k in ("f1", "precision", "recall", "false_alarm_rate"):
                result["operating"][f"{k}_ci"] = interval(boot[f"{k}_at_threshold"], ci)
    per_class: dict[str, Any] = {}
    normal = labels == 0
    for index, name in enumerate(classes):
        member = labels == index
        if index == 0 or not member.any():
            continue
        keep = normal | member
        r = ranked_metrics(scores[keep], member[keep])
        entry: dict[str, Any] = {"n": int(member.sum()), "auc": r["auc"], "ap": r["ap"]}
        if threshold is not None:
            entry["recall"] = float((scores[member] >= threshold).mean())
        if groups is not None:
            entry["n_records"] = int(np.unique(np.asarray(groups)[member].astype(str)).shape[0])
        if n_bootstrap > 0:
            sub_groups = None if groups is None else np.asarray(groups)[keep]
            b = bootstrap(scores[keep], member[keep], n_bootstrap, seed + index, sub_groups, threshold)
            entry.update(auc_ci=interval(b["auc"], ci), ap_ci=interval(b["ap"], ci), redrawn=b["redrawn"])
            if threshold is not None:
                entry["recall_ci"] = interval(b["recall_at_threshold"], ci)
        per_class[name] = entry
    result["per_class"] = per_class
    return result


def _p_value(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'no difference': twice the smaller tail mass at 0, with the +1 correction."""
    b = deltas.shape[0]
    lower, upper = (int((deltas <= 0).sum()) + 1) / (b + 1), (int((deltas >= 0).sum()) + 1) / (b + 1)
    return float(min(1.0, 2 * min(lower, upper)))


COMPARE_LEVELS = ("auto", "unit+record", "record")


def _level(level: str, n_units: int, grouped: bool) -> str:
    """The bootstrap level a comparison uses: auto is unit+record with records and more than one unit, else record (beat
    without records)."""
    if level not in COMPARE_LEVELS:
        raise ValueError(f"paired_compare: unknown level {level!r}; use one of {', '.join(COMPARE_LEVELS)}")
    if not grouped:
        if level == "unit+record":
            raise ValueError("paired_compare: level unit+record needs the record of each beat (groups)")
        return "beat"
    if level == "auto":
        return "unit+record" if n_units > 1 else "record"
    if level == "unit+record" and n_units < 2:
        raise ValueError(f"paired_compare: level unit+record needs at least 2 units (trained pairs), got {n_units}")
    return level


def paired_compare_units(
    units: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    level: str = "auto",
) -> dict[str, Any]:
    """Paired comparison of models a and b over units (folds, seeds), each (scores_a, scores_b, labels, groups).

    A unit is one trained pair (a seed, a fold, a search repeat). Figures are means over units of each unit's AUC/AP;
    delta = b - a. Every resample draws records (groups) with replacement once for every unit, so a patient drawn
    counts in every fold and seed it appears in, and both models are scored on the same resampled beats.

    level "unit+record" (the default, `auto`, when groups are given and there is more than one unit) also draws the
    units: each resample weighs the units by how often they come up in K - 1 draws with replacement from the K units
    (K draws would shrink the spread of a mean over units by (K - 1) / K), so the interval counts training variance,
    not only patients. The record-only figures of the same draws come with it under `record_only`. level "record":
    patients only, each trained model taken as fixed. groups None (one unit only): beats within class ("beat").
    """
    if not units:
        raise ValueError("paired_compare: no units to compare")
    if not 0 < ci < 1:
        raise ValueError(f"paired_compare: ci must be in (0, 1), got {ci}")
    ranks, positives, n = [], [], 0
    for i, (a, b, labels, _) in enumerate(units):
        a, b, positive = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(labels) != 0
        _check(a, positive, f"paired_compare (unit {i}, a)")
        _check(b, positive, f"paired_compare (unit {i}, b)")
        ranks.append((_Ranking(a, positive), _Ranking(b, positive)))
        positives.append(positive)
        n += a.shape[0]
    group_list = [u[3] for u in units]
    grouped = not any(g is None for g in group_list)
    chosen = _level(level, len(units), grouped)
    sampler = _Sampler(positives, group_list if grouped else None)
    full = [[ra.evaluate(np.ones((1, p.shape[0]))), rb.evaluate(np.ones((1, p.shape[0])))] for (ra, rb), p in zip(ranks, positives)]
    result: dict[str, Any] = {}
    for key in ("auc", "ap"):
        per_a, per_b = np.array([fa[key][0] for fa, _ in full]), np.array([fb[key][0] for _, fb in full])
        result[f"{key}_a"] = float(per_a.mean())
        result[f"{key}_b"] = float(per_b.mean())
        result[f"delta_{key}"] = result[f"{key}_b"] - result[f"{key}_a"]
        result[f"unit_delta_{key}"] = [float(d) for d in per_b - per_a]
        result[f"unit_sd_delta_{key}"] = float(np.std(per_b - per_a, ddof=1)) if len(units) > 1 else None
    result.update(n=n, n_groups=sampler.n_groups, n_units=len(units), n_bootstrap=int(n_bootstrap), ci=ci, bootstrap=chosen)
    if chosen == "unit+record":
        result["units_drawn"] = len(units) - 1
    if n_bootstrap <= 0:
        for key in ("auc", "ap"):
            result.update({f"delta_{key}_ci": None, f"p_{key}": None})
        return result
    rng = np.random.default_rng(seed)  # record draws: the same stream at every level, so record-only figures match
    unit_rng = np.random.default_rng([seed, 1])
    n_u, m = len(units), len(units) - 1
    samples: dict[str, list[np.ndarray]] = {name: [] for name in ("auc_a", "auc_b", "ap_a", "ap_b", "rec_auc", "rec_ap")}
    for chunk in _chunks(n_bootstrap, sum(p.shape[0] for p in positives)):
        draw = sampler.draw(rng, chunk)
        per_unit = [(ra.evaluate(draw, u), rb.evaluate(draw, u)) for u, (ra, rb) in enumerate(ranks)]
        weights = None
        if chosen == "unit+record":
            picks = unit_rng.integers(0, n_u, (chunk, m)) + (np.arange(chunk) * n_u)[:, None]
            weights = np.bincount(picks.ravel(), minlength=chunk * n_u).reshape(chunk, n_u) / m
        for key in ("auc", "ap"):
            va, vb = np.stack([ra[key] for ra, _ in per_unit], 1), np.stack([rb[key] for _, rb in per_unit], 1)
            samples[f"rec_{key}"].append(vb.mean(1) - va.mean(1))
            samples[f"{key}_a"].append(va.mean(1) if weights is None else (va * weights).sum(1))
            samples[f"{key}_b"].append(vb.mean(1) if weights is None else (vb * weights).sum(1))
    s = {k: np.concatenate(v) for k, v in samples.items()}
    for name, v in s.items():
        if not np.isfinite(v).all():
            raise RuntimeError(f"paired_compare: {int((~np.isfinite(v)).sum())} non-finite {name} value(s)")
    record_only: dict[str, Any] = {}
    for key in ("auc", "ap"):
        delta = s[f"{key}_b"] - s[f"{key}_a"]
        result[f"{key}_a_ci"] = interval(s[f"{key}_a"], ci)
        result[f"{key}_b_ci"] = interval(s[f"{key}_b"], ci)
        result[f"delta_{key}_ci"] = interval(delta, ci)
        result[f"p_{key}"] = _p_value(delta)
        record_only[f"delta_{key}_ci"] = interval(s[f"rec_{key}"], ci)
        record_only[f"p_{key}"] = _p_value(s[f"rec_{key}"])
    if chosen == "unit+record":
        result["record_only"] = record_only
    result["redrawn"] = sampler.redrawn
    return result


def paired_compare(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Models a and b on the same beats: AUC and AP of each, delta = b - a with a paired record-level
    bootstrap interval and two-sided p-value (groups: the record of each beat; None: beat level)."""
    return paired_compare_units([(scores_a, scores_b, labels, groups)], n_bootstrap, seed, ci)
