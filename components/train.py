"""Training components: the (fold, seed) grid and the BeatGAN teacher.

The teacher trains in `checkpoint_root/<run_id>/fold<F>-seed<S>` when checkpoint_root is set (on a
cluster: a PersistentVolumeClaim mounted there), so a retried pod resumes from the last epoch's
checkpoint; the finished folder is then copied into the Model artifact. Output artifacts are
uploaded only when a task succeeds, so a checkpoint written straight into one would die with a
preempted pod.
"""


from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_runs(folds: List[int], seeds: List[int]) -> List[dict]:
    """Every (fold, seed) pair to train, as the items of the pipeline's ParallelFor."""
    from sibeatgan.pipeline import run_grid

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
    run_id: str = "local",
):
    """BeatGAN teacher on one fold and seed; resumes from its checkpoint when the task is retried."""
    import shutil
    from pathlib import Path

    from sibeatgan.config import TeacherConfig
    from sibeatgan.pipeline import step_config
    from sibeatgan.train.teacher import run_train_teacher

    conf = step_config(TeacherConfig, config_yaml, fold=fold, seed=seed, epochs=epochs, device=device)
    work = Path(checkpoint_root) / run_id / f"fold{fold}-seed{seed}" if checkpoint_root else Path(model.path)
    result = run_train_teacher(conf, Path(beats.path), work, resume=True)
    if work != Path(model.path):
        shutil.copytree(work, model.path)
    model.metadata.update(fold=fold, seed=seed, kind="teacher", selection=result["selection"],
                          criterion=result["criterion"], best_epoch=result["best_epoch"])
    metrics.log_metric("best_epoch", result["best_epoch"])
    metrics.log_metric("epochs", result["epochs"])
    if result["best_metric"] is not None:
        metrics.log_metric(result["criterion"], float(result["best_metric"]))
