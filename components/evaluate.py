"""The evaluation component: test metrics of one trained generator, its ROC curve and a summary."""


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
):
    """Score the test beats of the fold the model was trained on: AUC, AP, F1, per-class AUC, ROC."""
    from pathlib import Path

    import numpy as np

    from sibeatgan.config import EvaluateConfig
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.files import write_text
    from sibeatgan.pipeline import evaluation_markdown, roc_points, step_config

    conf = step_config(EvaluateConfig, config_yaml, device=device, folds=())  # the model's own fold, whatever the file says
    result = run_evaluate(conf, Path(beats.path), Path(model.path), Path(evaluation.path))
    (fold, m), = result["folds"].items()
    for key in ("auc", "ap", "f1", "threshold", "n"):
        metrics.log_metric(key, m[key])
    kind, seed = str(model.metadata.get("kind", "teacher")), int(model.metadata.get("seed", 0))
    metrics.metadata.update(fold=int(fold), seed=seed, kind=kind)
    evaluation.metadata.update(fold=int(fold), seed=seed, kind=kind, auc=float(m["auc"]))
    scored = np.load(Path(evaluation.path) / f"fold_{fold}" / "scores.npz")
    roc.log_roc_curve(*roc_points(scored["scores"], scored["labels"] != 0))
    name = f"{kind}, fold {fold}, seed {seed}"
    write_text(summary.path, evaluation_markdown(result, f"Evaluation: {name}"))
