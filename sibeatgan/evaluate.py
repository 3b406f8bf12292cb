"""The evaluation step: each fold's generator scored on its own test split, with tables and plots.

Scoring and metrics live in sibeatgan.metrics (below training and evaluation alike); plots in
sibeatgan.plots. Figures: AUC, AP and the oracle best F1 (threshold picked on the test beats, as the
reference does), plus F1, precision and per-class recall at a threshold chosen without test labels, all
with record-level bootstrap intervals by default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sibeatgan.card import ModelCard, ThresholdPolicy, card_of
from sibeatgan.data.artifact import CLASSES
from sibeatgan.errors import ConfigError, DatasetError
from sibeatgan.files import atomic_open, write_json, write_text
from sibeatgan.metrics import bootstrap, choose_threshold, metrics, ranked_metrics, score  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from sibeatgan.config import EvaluateConfig
    from sibeatgan.data.artifact import BeatDataset
    from sibeatgan.metrics import AnomalyScore

log = logging.getLogger(__name__)


def _model_paths(models: dict[int, Path] | Path | str, folds: tuple[int, ...]) -> list[tuple[int | None, Path]]:
    """(fold, generator file) pairs; the folds asked for (if any) must be exactly the models' folds."""
    if not isinstance(models, dict):
        if len(folds) > 1:
            raise ConfigError(f"EvaluateConfig.folds: {len(folds)} folds asked for but one model given; give one model per fold")
        models = {folds[0]: models} if folds else {None: models}
    elif folds and sorted(folds) != sorted(int(k) for k in models):
        raise ConfigError(f"EvaluateConfig.folds: folds {list(folds)} asked for, models given for folds {sorted(models)}")
    pairs = [(None if k is None else int(k), Path(v)) for k, v in sorted(models.items(), key=lambda kv: -1 if kv[0] is None else kv[0])]
    return [(fold, p / "generator.pt" if p.is_dir() else p) for fold, p in pairs]


def _splits_for(split_set: Any, card: ModelCard, path: Path, split_name: str, fold: int, content_hash: str) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test indices of the model's fold, from the split artifact it was trained on (the card's check
    refuses another dataset, split, protocol or fold)."""
    card.check(content_hash, split_set.hash, fold, split_name, what=str(path))
    part = split_set.fold(split_name, fold)
    return part.val, part.test


def _score_split(anomaly: AnomalyScore, ds: BeatDataset, index: np.ndarray, config: EvaluateConfig, dev: torch.device) -> np.ndarray:
    x = torch.from_numpy(ds.float_beats(index)).to(dev)  # one copy to the device, as training does with val_x
    return anomaly(x, config.batch_size, dev, config.amp)


def _threshold(card: ModelCard, val_scores: np.ndarray | None, val_labels: np.ndarray, config: EvaluateConfig) -> dict[str, Any]:
    """The operating threshold: the one saved with the model (val_scores None: the caller scores validation beats only
    when the model has none for the score being scored), else chosen on its validation split by the threshold policy
    (config.threshold_rule; `auto` is the model's own protocol's rule)."""
    if val_scores is None:
        policy = card.threshold_policy
        return {"threshold": float(card.threshold), "source": "model", "rule": policy.rule if policy else None,
                "far": policy.far if policy else None}
    policy = ThresholdPolicy.resolve(config.threshold_rule, card.selection, config.far)
    value = policy.choose(val_scores, val_labels)
    if value is None:
        raise DatasetError(f"the {policy.rule!r} threshold rule cannot apply to this validation split "
                           f"({'no labelled anomalies' if policy.rule == 'f1' else 'no normal beats'})")
    return {"threshold": value, "source": "validation", "rule": policy.rule, "far": policy.far}


def run_evaluate(config: EvaluateConfig, dataset: Path, models: dict[int, Path] | Path, out: Path, split: Path | None = None) -> dict[str, Any]:
    """Score each fold's generator on its own test split; write evaluation.json, table.txt, scores and plots per fold.

    `models` maps fold -> generator file (or its training folder); a single path is evaluated on the
    fold it was trained for. Test beats come from the split artifact (`split`, default the dataset's own); a model
    trained on another dataset or another split is refused. The operating threshold is the one saved with the
    model, else chosen on the model's validation split (config.threshold_rule).
    """
    from sibeatgan.config import to_dict
    from sibeatgan.data.artifact import load
    from sibeatgan.data.splits import resolve_split
    from sibeatgan.device import resolve_device
    from sibeatgan.modelio import load_score

    if not 0 < config.far < 1:
        raise ConfigError(f"EvaluateConfig.far: must be in (0, 1), got {config.far}")
    ds = load(dataset)
    content_hash = ds.content_hash()
    split_set = resolve_split(dataset, split, content_hash)
    records = ds.records.astype(str)
    dev = resolve_device(config.device)
    checked = []  # every model is loaded and checked before anything is written
    for fold, path in _model_paths(models, tuple(config.folds)):
        anomaly, meta = load_score(path, dev, None if config.score == "model" else config.score)
        gen = anomaly.generator
        card = card_of(meta)
        if fold is None:
            fold = card.fold
        split_name = card.protocol
        if split_name != config.split:
            raise DatasetError(f"{path}: trained on the {split_name!r} split, but evaluation asks for {config.split!r}")
        _splits_for(split_set, card, path, split_name, fold, content_hash)  # refuses another split before anything is written
        if (gen.nc, gen.length) != (ds.leads, ds.length):
            raise DatasetError(f"{path}: model takes {gen.nc} lead(s) x {gen.length}, dataset {dataset} has {ds.leads} x {ds.length}")
        checked.append((fold, path, anomaly, meta, card, split_name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds: dict[str, Any] = {}
    for fold, path, anomaly, meta, card, split_name in checked:
        val, test = _splits_for(split_set, card, path, split_name, fold, content_hash)
        labels, val_labels = ds.labels[test].astype(np.int64), ds.labels[val].astype(np.int64)
        scores = _score_split(anomaly, ds, test, config, dev)
        # the saved threshold belongs to the model's own score; another score gets one chosen on validation
        saved = card.threshold is not None and anomaly.is_model_default
        val_scores = None if saved else _score_split(anomaly, ds, val, config, dev)
        chosen = _threshold(card, val_scores, val_labels, config)
        groups = records[test] if config.bootstrap == "record" else None
        if groups is not None and config.n_bootstrap > 0 and np.unique(groups).shape[0] < 10:
            log.warning("fold %s: the test beats come from %d record(s) only; record-level intervals are rough", fold, np.unique(groups).shape[0])
        m = metrics(scores, labels, config.n_bootstrap, config.ci, config.seed, groups=groups, threshold=chosen["threshold"])
        m["operating"].update({k: v for k, v in chosen.items() if k != "threshold"})
        fold_dir = out / f"fold_{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        arrays = dict(index=test, scores=scores, labels=labels, records=records[test])
        if val_scores is not None:
            arrays.update(val_index=val, val_scores=val_scores, val_labels=val_labels)
        with atomic_open(fold_dir / "scores.npz") as fh:
            np.savez_compressed(fh, **arrays)
        if config.plots:
            from sibeatgan.plots import plot

            m["plots"] = [str(p) for p in plot(scores, labels, fold_dir, f"fold {fold}", result=m)]
        m.update(model=str(path), selection=meta.get("selection"), epoch=meta.get("epoch"), split=split_name, split_hash=meta.get("split_hash"),
                 score=anomaly.kind, score_spec={k: v for k, v in anomaly.spec.items() if k != "validation_auc"})
        folds[str(fold)] = m
        log.info("fold %s: AUC %.4f AP %.4f best F1 (oracle) %.4f, F1 %.4f at threshold %.4g on %d test beats (%s score, %s)", fold,
                 m["auc"], m["ap"], m["f1_oracle"], m["operating"]["f1"], chosen["threshold"], m["n"], anomaly.kind, path)
    overall: dict[str, Any] = {}
    columns = {"auc": lambda f: f["auc"], "ap": lambda f: f["ap"], "f1_oracle": lambda f: f["f1_oracle"],
               "f1_at_threshold": lambda f: f["operating"]["f1"]}  # "f1" alone would hide which of the two it is
    for key, get in columns.items():
        values = np.array([get(f) for f in folds.values()])
        overall[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None}
    result = {"folds": folds, "overall": overall, "dataset_hash": content_hash, "split_hash": split_set.hash, "config": to_dict(config)}
    write_json(out / "evaluation.json", result)
    table = format_table(result)
    write_text(out / "table.txt", table + "\n")
    return result


def _fmt(value: float, lo_hi: list[float] | None, digits: int = 3) -> str:
    text = f"{value:.{digits}f}"
    return f"{text} [{lo_hi[0]:.{digits}f}, {lo_hi[1]:.{digits}f}]" if lo_hi else text


def _rule_text(op: dict[str, Any]) -> str:
    where = "saved with the model" if op.get("source") == "model" else "chosen on validation"
    if op.get("rule") == "far" and op.get("far") is not None:
        return f"{where}: {100 * op['far']:g}% false alarms on normal validation beats"
    if op.get("rule") == "f1":
        return f"{where}: best validation F1"
    return where


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as text: per fold, overall and per-class AUC, AP and recall at the chosen threshold with
    their intervals, the oracle best F1 and the operating point; then the mean over folds."""
    lines: list[str] = []
    for fold, m in result["folds"].items():
        recs = f" from {m['n_records']} records" if m.get("n_records") else ""
        ci = (f"{100 * m['ci']:g}% intervals: {m['n_bootstrap']} {m['bootstrap']}-level bootstrap resamples"
              if m.get("auc_ci") else "no intervals (n_bootstrap=0)")
        op = m["operating"]
        kind = m.get("score", "reconstruction")
        lines += [f"fold {fold}: {m['n']:,} test beats{recs}, {m['n_anomalous']:,} anomalous ({100 * m['prevalence']:.1f}%); {kind} score; {ci}",
                  f"  {'class':<6}{'beats':>8}{'rec':>5}  {'AUC':<24}{'AP':<24}recall at threshold"]
        rows = [("all", {**m, "n": m["n_anomalous"], "n_records": m.get("n_records_anomalous"), "recall": op["recall"], "recall_ci": op.get("recall_ci")})]
        per_class = sorted(m["per_class"].items(), key=lambda kv: CLASSES.index(kv[0]) if kv[0] in CLASSES else len(CLASSES))
        for name, pc in [*rows, *per_class]:
            recall = _fmt(pc["recall"], pc.get("recall_ci")) if "recall" in pc else "-"
            lines.append(f"  {name:<6}{pc['n']:>8,}{pc.get('n_records') or '-':>5}  {_fmt(pc['auc'], pc.get('auc_ci')):<24}"
                         f"{_fmt(pc['ap'], pc.get('ap_ci')):<24}{recall}")
        lines.append(f"  threshold {op['threshold']:.6g} ({_rule_text(op)}): F1 {_fmt(op['f1'], op.get('f1_ci'))}, "
                     f"precision {_fmt(op['precision'], op.get('precision_ci'))}, false alarms {_fmt(op['false_alarm_rate'], op.get('false_alarm_rate_ci'))}")
        lines.append(f"  best F1 (oracle: threshold {m['threshold_oracle']:.6g} picked on these test beats): {_fmt(m['f1_oracle'], m.get('f1_oracle_ci'))}")
        redrawn = {"all": m.get("redrawn", 0), **{k: v.get("redrawn", 0) for k, v in m["per_class"].items()}}
        if any(redrawn.values()):
            counts = ", ".join(f"{k} {v}" for k, v in redrawn.items() if v)
            lines.append(f"  record resamples drawn again because they lacked normal or anomalous beats: {counts}")
    if len(result["folds"]) > 1:
        o = result["overall"]
        parts = [f"{k} {o[k]['mean']:.4f} +- {o[k]['std']:.4f}" for k in ("auc", "ap", "f1_oracle", "f1_at_threshold")]
        lines.append(f"mean +- sd over {len(result['folds'])} folds: " + ", ".join(parts))
    return "\n".join(lines)
