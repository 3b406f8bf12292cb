"""Evaluation steps: a model scored on its fold's test beats, and two models compared on the same beats; each one
MLflow run (its figures, tables, plots and lineage) when tracking is on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from sibeatgan.config import EvaluateConfig, TrackingConfig
from sibeatgan.steps.tracked import log_step


def evaluation_figures(result: dict[str, Any]) -> dict[str, float]:
    """An evaluation's headline figures as metrics: per fold AUC, AP, F1 at the validation threshold, and the oracle
    F1 (best over test thresholds), named as such."""
    figures = {f"fold{k}_{m}": f[m] for k, f in result["folds"].items() for m in ("auc", "ap", "f1_oracle") if f.get(m) is not None}
    figures.update({f"fold{k}_f1_at_threshold": f["operating"]["f1"] for k, f in result["folds"].items() if f.get("operating")})
    if len(result["folds"]) == 1:
        (m,) = result["folds"].values()
        figures.update(auc=m["auc"], ap=m["ap"], f1_at_threshold=(m.get("operating") or {}).get("f1", float("nan")), f1_oracle=m["f1_oracle"])
    return figures


def run_evaluate_step(config: EvaluateConfig, dataset: Path, model: dict[int, Path] | Path, out: Path, tracking: TrackingConfig | None = None,
                      split: Path | None = None, run_name: str | None = None, **tags: Any) -> dict[str, Any]:
    """sibeatgan.evaluate.run_evaluate, then its MLflow run: figures, evaluation.json, table.txt, scores and plots."""
    from sibeatgan.evaluate import run_evaluate

    out = Path(out)
    result = run_evaluate(config, dataset, model, out, split=split)
    plots = tuple(Path(p) for f in result["folds"].values() for p in f.get("plots", []))
    scores = tuple(out / f"fold_{k}" / "scores.npz" for k in result["folds"])
    result["run_id"] = log_step(tracking, "evaluate", config, out, evaluation_figures(result),
                                (out / "evaluation.json", out / "table.txt", *scores, *plots), result["dataset_hash"],
                                result.get("split_hash"), run_name=run_name, **tags)
    return result


def run_compare_step(config: EvaluateConfig, dataset: Path | None, a: Path | Sequence[Path], b: Path | Sequence[Path], out: Path,
                     tracking: TrackingConfig | None = None, run_name: str | None = None, level: str = "auto", **tags: Any) -> dict[str, Any]:
    """sibeatgan.compare.run_compare (b - a, paired on the same beats; `level`: the bootstrap's, see there), then its MLflow
    run: the pooled deltas, their intervals and p-values, and the comparison table."""
    from sibeatgan.compare import run_compare

    out = Path(out)
    result = run_compare(config, dataset, a, b, out, level=level)
    pooled = result["pooled"]
    figures = {k: float(pooled[k]) for k in ("auc_a", "auc_b", "delta_auc", "p_auc", "ap_a", "ap_b", "delta_ap", "p_ap")
               if pooled.get(k) is not None}
    for key in ("delta_auc_ci", "delta_ap_ci"):
        if pooled.get(key):
            figures[f"{key}_low"], figures[f"{key}_high"] = (float(v) for v in pooled[key])
    result["run_id"] = log_step(tracking, "compare", config, out, figures, (out / "table.txt", out / "compare.json"),
                                result.get("dataset_hash"), run_name=run_name, **tags)
    return result
