"""Anomaly scores, metrics and plots of a trained generator on its fold's test split.

A beat's score is its mean squared reconstruction error. Metrics: ROC AUC, average precision,
best F1 with its threshold, per-class AUC (each anomalous class against N), and stratified
bootstrap confidence intervals computed for all resamples at once. Scoring and every metric need
only torch and numpy (one implementation, ranked_metrics); sklearn and matplotlib load lazily, for plots only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sibeatgan.data.artifact import CLASSES
from sibeatgan.errors import ConfigError, DatasetError
from sibeatgan.files import atomic_open, write_json

if TYPE_CHECKING:
    from sibeatgan.config import EvaluateConfig

log = logging.getLogger(__name__)

_BOOTSTRAP_CELLS = 20_000_000  # resamples x beats held in memory at once


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
    param = next(generator.parameters())
    dev = torch.device(device) if device is not None else param.device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if param.device != dev:
        raise ValueError(f"score: the generator is on {param.device} but device {dev} was asked for; move it first")
    x = torch.as_tensor(beats)
    if not x.is_floating_point() or x.dim() != 3:
        raise ValueError(f"score: beats must be float of shape (n, leads, length), got {x.dtype} {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"score: batch_size must be positive, got {batch_size}")
    out = torch.empty(x.shape[0], dtype=torch.float32, device=dev)
    was_training = generator.training
    generator.eval()
    try:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(dev, torch.float32, non_blocking=True)
                rec = generator(xb)[0].float()
                out[start : start + xb.shape[0]] = (rec - xb).pow(2).flatten(1).mean(1)
    finally:
        generator.train(was_training)
    return out.cpu().numpy()


def _groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order (descending score), the tie-group id of each sorted beat, and each group's score."""
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    starts = np.r_[True, s[1:] != s[:-1]]
    return order, np.cumsum(starts) - 1, s[starts]


def _weighted(pos_w: np.ndarray, neg_w: np.ndarray) -> dict[str, np.ndarray]:
    """AUC, AP, best F1 (and its group) for rows of per-group positive/negative weights in descending score order."""
    p, n = pos_w.sum(1), neg_w.sum(1)
    tp, fp = np.cumsum(pos_w, 1), np.cumsum(neg_w, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_w * (n[:, None] - fp + 0.5 * neg_w)).sum(1) / (p * n)
        ap = (pos_w * (tp / (tp + fp))).sum(1) / p
        f1 = 2 * tp / (tp + fp + p[:, None])
    best = np.argmax(f1, 1)
    return {"auc": auc, "ap": ap, "f1": f1[np.arange(f1.shape[0]), best], "best": best}


def ranked_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """AUC (ties count half), AP and best F1 with its threshold (score >= threshold is anomalous); numpy only."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    _, group, values = _groups(scores)
    pos_sorted = positive[np.argsort(-scores, kind="mergesort")]
    g = values.shape[0]
    pos_w = np.bincount(group[pos_sorted], minlength=g)[None].astype(np.float64)
    neg_w = np.bincount(group[~pos_sorted], minlength=g)[None].astype(np.float64)
    r = _weighted(pos_w, neg_w)
    return {"auc": float(r["auc"][0]), "ap": float(r["ap"][0]), "f1": float(r["f1"][0]), "threshold": float(values[r["best"][0]])}


def bootstrap(scores: np.ndarray, positive: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """AUC, AP and best F1 of `n_bootstrap` stratified resamples (positives and negatives resampled apart)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order, group, values = _groups(scores)
    g = values.shape[0]
    gid = np.empty_like(group)
    gid[order] = group
    pos_g, neg_g = gid[positive], gid[~positive]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(scores.shape[0], g))
    out: dict[str, list[np.ndarray]] = {"auc": [], "ap": [], "f1": []}
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        offset = (np.arange(b) * g)[:, None]
        weights = []
        for member in (pos_g, neg_g):
            picks = member[rng.integers(0, member.shape[0], (b, member.shape[0]))]
            weights.append(np.bincount((picks + offset).ravel(), minlength=b * g).reshape(b, g).astype(np.float64))
        r = _weighted(*weights)
        for k in out:
            out[k].append(r[k])
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}


def _interval(samples: np.ndarray, ci: float) -> list[float]:
    lo, hi = np.nanpercentile(samples, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return [float(lo), float(hi)]


def metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
) -> dict[str, Any]:
    """Metrics of anomaly scores against class labels (indices into `classes`, 0 = normal) with bootstrap CIs.

    AUC, AP, best F1 and its threshold come from ranked_metrics (numpy only, ties counted as sklearn does);
    precision and recall are those of the rule "score >= threshold is anomalous".
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"metrics: scores {scores.shape} and labels {labels.shape} must be 1-D of one length")
    if not np.isfinite(scores).all():
        raise ValueError(f"metrics: {int((~np.isfinite(scores)).sum())} score(s) are not finite")
    if not 0 < ci < 1:
        raise ValueError(f"metrics: ci must be in (0, 1), got {ci}")
    positive = labels != 0
    if positive.all() or not positive.any():
        raise ValueError(f"metrics: need normal and anomalous beats, got {int((~positive).sum())} normal and {int(positive.sum())} anomalous")
    ranked = ranked_metrics(scores, positive)
    flagged = scores >= ranked["threshold"]
    hits = int((flagged & positive).sum())
    result: dict[str, Any] = {
        "n": int(scores.shape[0]),
        "n_normal": int((~positive).sum()),
        "n_anomalous": int(positive.sum()),
        "auc": ranked["auc"],
        "ap": ranked["ap"],
        "f1": ranked["f1"],
        "threshold": ranked["threshold"],
        "precision_at_f1": hits / int(flagged.sum()),
        "recall_at_f1": hits / int(positive.sum()),
        "ci": ci,
        "n_bootstrap": int(n_bootstrap),
    }
    if n_bootstrap > 0:
        boot = bootstrap(scores, positive, n_bootstrap, seed)
        for k in ("auc", "ap", "f1"):
            result[f"{k}_ci"] = _interval(boot[k], ci)
    per_class: dict[str, Any] = {}
    normal = labels == 0
    for index, name in enumerate(classes):
        member = labels == index
        if index == 0 or not member.any():
            continue
        keep = normal | member
        entry: dict[str, Any] = {"n": int(member.sum()), "auc": ranked_metrics(scores[keep], member[keep])["auc"]}
        if n_bootstrap > 0:
            entry["auc_ci"] = _interval(bootstrap(scores[keep], member[keep], n_bootstrap, seed + index)["auc"], ci)
        per_class[name] = entry
    result["per_class"] = per_class
    return result


def plot(scores: np.ndarray, labels: np.ndarray, out_dir: str | Path, title: str = "", classes: tuple[str, ...] = CLASSES) -> list[Path]:
    """ROC, precision-recall and per-class score histograms as PNG files (matplotlib Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positive = np.asarray(labels) != 0
    written = []

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        path = out / name
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=110)
        written.append(path)

    fpr, tpr, _ = roc_curve(positive, scores)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC {title}".strip())
    save(fig, "roc.png")

    precision, recall, _ = precision_recall_curve(positive, scores)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(recall, precision, lw=1.5)
    ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall {title}".strip())
    save(fig, "pr.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    logs = np.log10(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    bins = np.linspace(logs.min(), logs.max() + 1e-9, 60)
    for index, name in enumerate(classes):
        member = np.asarray(labels) == index
        if member.any():
            ax.hist(logs[member], bins=bins, density=True, histtype="step", label=f"{name} ({int(member.sum())})")
    ax.set(xlabel="log10 anomaly score", ylabel="density", title=f"scores by class {title}".strip())
    ax.legend()
    save(fig, "hist.png")
    return written


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


def run_evaluate(config: EvaluateConfig, dataset: Path, models: dict[int, Path] | Path, out: Path, split: Path | None = None) -> dict[str, Any]:
    """Score each fold's generator on its own test split; write evaluation.json, scores and plots per fold.

    `models` maps fold -> generator file (or its training folder); a single path is evaluated on the
    fold it was trained for. Test beats come from the split artifact (`split`, default the dataset's own); a model
    trained on another dataset or another split is refused.
    """
    from sibeatgan.config import to_dict
    from sibeatgan.data.artifact import load
    from sibeatgan.data.splits import resolve_split
    from sibeatgan.device import resolve_device
    from sibeatgan.modelio import load_generator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load(dataset)
    content_hash = ds.content_hash()
    split_set = resolve_split(dataset, split, content_hash)
    dev = resolve_device(config.device)
    folds: dict[str, Any] = {}
    for fold, path in _model_paths(models, tuple(config.folds)):
        gen, meta = load_generator(path, dev)
        trained = meta.get("config") or {}
        model_fold = int(trained.get("fold", fold if fold is not None else 0))
        if fold is None:
            fold = model_fold
        split_name = trained.get("split", config.split)
        if split_name != config.split:
            raise DatasetError(f"{path}: trained on the {split_name!r} split, but evaluation asks for {config.split!r}")
        if split_name == "beatgan" and model_fold != fold:
            raise DatasetError(f"{path}: trained on fold {model_fold}, refused as the model of fold {fold} (its test beats were training beats)")
        if meta.get("dataset_hash") not in (None, content_hash):
            raise DatasetError(f"{path}: trained on dataset {meta['dataset_hash'][:12]}, but {dataset} is {content_hash[:12]}")
        if (gen.nc, gen.length) != (ds.leads, ds.length):
            raise DatasetError(f"{path}: model takes {gen.nc} lead(s) x {gen.length}, dataset {dataset} has {ds.leads} x {ds.length}")
        if meta.get("split_hash") != split_set.hash:
            raise DatasetError(f"{path}: trained on split {str(meta.get('split_hash'))[:12]}, but the split given is {split_set.hash[:12]}; "
                               "evaluate it with the split it was trained on (--split)")
        part = split_set.fold(split_name, fold)
        labels = ds.labels[part.test].astype(np.int64)
        test_x = torch.from_numpy(ds.float_beats(part.test)).to(dev)  # one copy to the device, as training does with val_x
        scores = score(gen, test_x, config.batch_size, dev, config.amp)
        del test_x
        m = metrics(scores, labels, config.n_bootstrap, config.ci, config.seed)
        fold_dir = out / f"fold_{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(fold_dir / "scores.npz") as fh:
            np.savez_compressed(fh, index=part.test, scores=scores, labels=labels, records=ds.records[part.test].astype(str))
        if config.plots:
            m["plots"] = [str(p) for p in plot(scores, labels, fold_dir, f"fold {fold}")]
        m.update(model=str(path), selection=meta.get("selection"), epoch=meta.get("epoch"), split=split_name)
        folds[str(fold)] = m
        log.info("fold %s: AUC %.4f AP %.4f F1 %.4f on %d test beats (%s)", fold, m["auc"], m["ap"], m["f1"], m["n"], path)
    overall: dict[str, Any] = {}
    for key in ("auc", "ap", "f1"):
        values = np.array([f[key] for f in folds.values()])
        overall[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None}
    result = {"folds": folds, "overall": overall, "dataset_hash": content_hash, "split_hash": split_set.hash, "config": to_dict(config)}
    write_json(out / "evaluation.json", result)
    return result
