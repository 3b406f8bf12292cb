"""Training components: the (fold, seed) grid and the BeatGAN teacher.

The teacher trains in `checkpoint_root/<content key>` when checkpoint_root is set (on a cluster: a
PersistentVolumeClaim mounted there): the key is the fold, the seed and a hash of the config and the dataset
(`sibeatgan.steps.protocol.checkpoint_key`), so a retried pod and a resubmitted run resume from the last epoch's
checkpoint, and another config gets a folder of its own (`sibeatgan checkpoints prune` removes old ones). The finished
folder is then copied into the Model artifact: output artifacts are uploaded only when a task succeeds, so a
checkpoint written straight into one would die with a preempted pod.
"""


from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_runs(folds: List[int], seeds: List[int]) -> List[dict]:
    """Every (fold, seed) pair to train, as the items of the pipeline's ParallelFor."""
    from sibeatgan.steps.protocol import run_grid

    return run_grid(folds, seeds)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_teacher(
    beats: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    fold: int,
    seed: int,
    epochs: int,
    config_yaml: str = "",
    device: str = "auto",
    checkpoint_root: str = "",
    mlflow_uri: str = "",
    kfp_run_id: str = "", experiment: str = "",
):
    """BeatGAN teacher on one fold and seed, one MLflow run with every epoch; resumes from its checkpoint."""
    import shutil
    from pathlib import Path

    from sibeatgan.config import TeacherConfig
    from sibeatgan.steps.protocol import checkpoint_key, pipeline_tracking, step_config
    from sibeatgan.steps.train import run_train_teacher

    conf = step_config(TeacherConfig, config_yaml, fold=fold, seed=seed, epochs=epochs, device=device)
    key = checkpoint_key("teacher", conf, str(beats.metadata.get("content_hash", "")))
    work = Path(checkpoint_root) / key if checkpoint_root else Path(model.path)
    result = run_train_teacher(conf, Path(beats.path), work, pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None), resume=True)
    if work != Path(model.path):
        shutil.copytree(work, model.path, ignore=shutil.ignore_patterns("checkpoint.pt", "tracking"))
    model.metadata.update(fold=fold, seed=seed, kind="teacher", selection=result["selection"], criterion=result["criterion"],
                          best_epoch=result["best_epoch"], checkpoint=key)
    metrics.log_metric("best_epoch", result["best_epoch"])
    metrics.log_metric("epochs", result["epochs"])
    if result["best_metric"] is not None:
        metrics.log_metric(result["criterion"], float(result["best_metric"]))
    print(f"SIBEATGAN-HEADLINE: teacher fold {fold} seed {seed}: best epoch {result['best_epoch']}, "
          f"{result['criterion']} {result['best_metric']:.4g}" if result["best_metric"] is not None else
          f"SIBEATGAN-HEADLINE: teacher fold {fold} seed {seed}: no epoch selected")
