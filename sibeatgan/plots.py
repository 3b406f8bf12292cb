"""Evaluation plots a reader can use: ROC and PR with their intervals, per-class ROC, scores by class.

matplotlib (Agg canvas, no pyplot state) and sklearn's curves load lazily: the metrics need neither.
Each figure is labelled from the metrics dict of sibeatgan.metrics.metrics, so the numbers on a plot are
the numbers in evaluation.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.data.artifact import CLASSES
from sibeatgan.files import atomic_open

_COLORS = {"N": "#4d4d4d", "S": "#1f77b4", "V": "#d62728", "F": "#2ca02c", "Q": "#9467bd"}


def _ci(m: dict[str, Any], key: str) -> str:
    lo_hi = m.get(f"{key}_ci")
    return f"{m[key]:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else f"{m[key]:.3f}"


def _rule(op: dict[str, Any]) -> str:
    rule = op.get("rule")
    if rule == "far":
        far = op.get("far")
        return f"{100 * far:g}% false alarms on validation" if far is not None else "false-alarm rate on validation"
    if rule == "f1":
        return "best validation F1"
    return str(op.get("source") or "given")


def plot(
    scores: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    title: str = "",
    classes: tuple[str, ...] = CLASSES,
    result: dict[str, Any] | None = None,
) -> list[Path]:
    """Write roc.png, roc_per_class.png, pr.png and hist.png into out_dir; `result` (metrics()) adds intervals
    to the labels and marks the chosen-threshold and oracle best-F1 operating points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    from sibeatgan.metrics import metrics as compute

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    m = result if result is not None else compute(scores, labels, n_bootstrap=0, classes=classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positive = labels != 0
    written: list[Path] = []
    suffix = f" ({title})" if title else ""
    op = m.get("operating")
    oracle_label = f"best F1 {m['f1_oracle']:.3f} (oracle: threshold picked on test)"

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        path = out / name
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=110)
        written.append(path)

    def legend_below(ax: Any) -> None:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)

    interval_note = f"{100 * m['ci']:g}% {m['bootstrap']}-level bootstrap intervals" if m.get("auc_ci") else "no intervals"

    # ROC, all anomalies against N, with both operating points
    fpr, tpr, _ = roc_curve(positive, scores)
    fig = Figure(figsize=(5.5, 6.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=1.6, color="black", label=f"all anomalies vs N: AUC {_ci(m, 'auc')}")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.plot(m["false_alarm_rate_oracle"], m["recall_oracle"], "s", color="tab:orange",
            ms=7, label=oracle_label)
    if op:
        ax.plot(op["false_alarm_rate"], op["recall"], "o", color="tab:green", ms=7,
                label=f"threshold {op['threshold']:.4g} ({_rule(op)}): recall {op['recall']:.3f}")
    ax.set(xlabel="false positive rate (normal beats flagged)", ylabel="true positive rate (anomalies flagged)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=f"ROC{suffix}\n{interval_note}")
    legend_below(ax)
    save(fig, "roc.png")

    # ROC per anomalous class against N
    fig = Figure(figsize=(5.5, 6.4), layout="constrained")
    ax = fig.add_subplot()
    normal = labels == 0
    for index, name in enumerate(classes):
        member = labels == index
        if index == 0 or not member.any():
            continue
        keep = normal | member
        f, t, _ = roc_curve(member[keep], scores[keep])
        pc = m["per_class"][name]
        ax.plot(f, t, lw=1.4, color=_COLORS.get(name), label=f"{name} vs N (n={pc['n']:,}): AUC {_ci(pc, 'auc')}")
    ax.plot(fpr, tpr, "--", lw=1, color="black", label=f"all anomalies: AUC {m['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    if op:
        ax.axvline(op["false_alarm_rate"], color="tab:green", lw=0.8, ls="-.", label=f"false-alarm rate at threshold {op['threshold']:.4g}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title=f"ROC per class{suffix}\n{interval_note}")
    legend_below(ax)
    save(fig, "roc_per_class.png")

    # precision-recall with the prevalence baseline
    precision, recall, _ = precision_recall_curve(positive, scores)
    fig = Figure(figsize=(5.5, 6.4), layout="constrained")
    ax = fig.add_subplot()
    # sklearn ends the curve at (recall 0, precision 1) by convention, not by any threshold: leave that point out
    ax.step(recall[:-1], precision[:-1], where="post", lw=1.6, color="black", label=f"AP {_ci(m, 'ap')}")
    ax.axhline(m["prevalence"], color="gray", ls=":", label=f"baseline: prevalence {m['prevalence']:.3f} (random scores)")
    ax.plot(m["recall_oracle"], m["precision_oracle"], "s", color="tab:orange", ms=7, label=oracle_label)
    if op:
        ax.plot(op["recall"], op["precision"], "o", color="tab:green", ms=7,
                label=f"threshold {op['threshold']:.4g} ({_rule(op)}): F1 {op['f1']:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=f"precision-recall{suffix}\n{interval_note}")
    legend_below(ax)
    save(fig, "pr.png")

    save(_histogram(scores, labels, classes, m, suffix, Figure), "hist.png")
    return written


def _histogram(scores: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], m: dict[str, Any], suffix: str, Figure: Any) -> Any:
    """Scores by class, one row per class on a shared log axis (linear for a score that can be negative, as a
    combined one), each row its own density scale (a class of 13 beats cannot dwarf the rest); small classes get
    coarser bins and a rug of their beats."""
    log_axis = bool((scores > 0).all())
    axis = (lambda v: np.log10(np.maximum(v, 1e-12))) if log_axis else (lambda v: np.asarray(v, dtype=np.float64))
    logs = axis(scores)
    present = [(i, c) for i, c in enumerate(classes) if (labels == i).any()]
    lo, hi = float(logs.min()), float(logs.max()) + 1e-9
    fig = Figure(figsize=(7.5, 1.25 * len(present) + 1.3), layout="constrained")
    axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    op = m.get("operating")
    for ax, (index, name) in zip(axes, present):
        values = logs[labels == index]
        n_bins = int(np.clip(2 * np.sqrt(values.size), 8, 60))
        ax.hist(values, bins=np.linspace(lo, hi, n_bins + 1), density=True, histtype="stepfilled", alpha=0.35,
                color=_COLORS.get(name), edgecolor=_COLORS.get(name), lw=1.2)
        if values.size < 200:
            ax.plot(values, np.zeros_like(values), "|", color=_COLORS.get(name), ms=10, mew=1)
        ax.set_ylabel(f"{name}\nn={values.size:,}", rotation=0, ha="right", va="center", fontsize=9)
        ax.set_yticks([])
        ax.axvline(axis(m["threshold_oracle"]), color="tab:orange", ls="--", lw=1)
        if op:
            ax.axvline(axis(op["threshold"]), color="tab:green", lw=1.2)
    axes[-1].set_xlabel("log10 anomaly score" if log_axis else "anomaly score")
    axes[0].set_title(f"scores by class, each row scaled to its own density{suffix}")
    handles = [axes[0].plot([], [], color="tab:orange", ls="--")[0]]
    names = [f"best-F1 threshold (oracle, picked on test): {m['threshold_oracle']:.4g}"]
    if op:
        handles.append(axes[0].plot([], [], color="tab:green")[0])
        names.append(f"chosen threshold ({_rule(op)}): {op['threshold']:.4g}")
    fig.legend(handles, names, loc="outside lower center", fontsize=8, frameon=False)
    return fig
