"""Evaluation components: test metrics of one trained model (its ROC curve, a summary), and the paired comparison of
two models evaluated on the same test beats; each one MLflow run under the pipeline's."""


from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    beats: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
    config_yaml: str = "",
    device: str = "auto",
    mlflow_uri: str = "",
    kfp_run_id: str = "", experiment: str = "",
):
    """Score the test beats of the fold the model was trained on: AUC, AP, F1 at the validation threshold, the oracle
    F1, per-class AUC, ROC."""
    from pathlib import Path

    import numpy as np

    from sibeatgan.config import EvaluateConfig
    from sibeatgan.files import write_text
    from sibeatgan.steps.evaluate import run_evaluate_step
    from sibeatgan.steps.protocol import evaluation_markdown, pipeline_tracking, roc_points, step_config

    conf = step_config(EvaluateConfig, config_yaml, device=device, folds=())  # the model's own fold, whatever the file says
    kind, seed = str(model.metadata.get("kind", "teacher")), int(model.metadata.get("seed", 0))
    if model.metadata.get("no_model"):  # a candidate that selected no epoch: nothing to score; the winner's choice counts it lost
        Path(evaluation.path).mkdir(parents=True, exist_ok=True)
        evaluation.metadata.update(kind=kind, seed=seed, no_model=True)
        write_text(summary.path, f"# Evaluation: {kind}, seed {seed}\n\nNo model: no epoch had a finite validation criterion.\n")
        print(f"SIBEATGAN-HEADLINE: {kind} seed {seed}: no model to evaluate (no finite validation epoch)")
        return
    result = run_evaluate_step(conf, Path(beats.path), Path(model.path), Path(evaluation.path),
                               pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None), run_name=f"evaluate-{kind}-s{seed}", kind=kind)
    (fold, m), = result["folds"].items()
    for key in ("auc", "ap", "f1_oracle", "threshold_oracle", "n"):
        metrics.log_metric(key, m[key])
    for key in ("f1", "threshold", "precision", "recall", "false_alarm_rate"):  # at the threshold chosen without test labels
        metrics.log_metric(f"{key}_at_threshold", m["operating"][key])
    metrics.metadata.update(fold=int(fold), seed=seed, kind=kind)
    evaluation.metadata.update(fold=int(fold), seed=seed, kind=kind, auc=float(m["auc"]))
    scored = np.load(Path(evaluation.path) / f"fold_{fold}" / "scores.npz")
    roc.log_roc_curve(*roc_points(scored["scores"], scored["labels"] != 0))
    write_text(summary.path, evaluation_markdown(result, f"Evaluation: {kind}, fold {fold}, seed {seed}"))
    print(f"SIBEATGAN-HEADLINE: {kind} fold {fold} seed {seed}: test AUC {m['auc']:.4f}, AP {m['ap']:.4f}, "
          f"F1 {m['operating']['f1']:.4f} at the validation threshold")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare(
    beats: Input[Dataset],
    evaluation_a: Input[Artifact],
    evaluation_b: Input[Artifact],
    comparison: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
    config_yaml: str = "",
    mlflow_uri: str = "",
    kfp_run_id: str = "", experiment: str = "",
):
    """Model b against model a on the same test beats: delta AUC and AP with a record-level paired bootstrap interval
    and p-value."""
    from pathlib import Path

    from sibeatgan.config import EvaluateConfig
    from sibeatgan.files import write_json, write_text
    from sibeatgan.steps.evaluate import run_compare_step
    from sibeatgan.steps.protocol import pipeline_tracking, step_config

    a, b = (str(e.metadata.get("kind", "?")) for e in (evaluation_a, evaluation_b))
    missing = [str(e.metadata.get("kind")) for e in (evaluation_a, evaluation_b) if e.metadata.get("no_model")]
    if missing:  # nothing to pair: the comparison says so, and the winner's choice goes on without it
        why = f"no comparison: the {' and the '.join(missing)} had no model (no finite validation epoch)"
        Path(comparison.path).mkdir(parents=True, exist_ok=True)
        write_json(Path(comparison.path) / "compare.json", {"skipped": why})
        write_text(Path(comparison.path) / "table.txt", why + "\n")
        write_text(summary.path, f"# {b} against {a}\n\n{why}\n")
        comparison.metadata.update(a=a, b=b, skipped=why)
        print(f"SIBEATGAN-HEADLINE: {why}")
        return
    conf = step_config(EvaluateConfig, config_yaml)
    result = run_compare_step(conf, Path(beats.path), Path(evaluation_a.path), Path(evaluation_b.path), Path(comparison.path),
                              pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None), run_name=f"compare-{b}-vs-{a}", model_a=a, model_b=b)
    pooled = result["pooled"]
    for key in ("auc_a", "auc_b", "delta_auc", "p_auc", "ap_a", "ap_b", "delta_ap", "p_ap"):
        if pooled.get(key) is not None:  # p-values are absent without bootstrap resamples
            metrics.log_metric(key, float(pooled[key]))
    comparison.metadata.update(a=a, b=b, delta_auc=float(pooled["delta_auc"]), p_auc=pooled.get("p_auc"))
    table = (Path(comparison.path) / "table.txt").read_text()
    write_text(summary.path, f"# {b} against {a} (delta = {b} - {a}), same test beats\n\n```\n{table}```\n")
    p = pooled.get("p_auc")
    print(f"SIBEATGAN-HEADLINE: {b} - {a}: delta AUC {pooled['delta_auc']:+.4f}" + (f" (p {p:.3f})" if p is not None else ""))
