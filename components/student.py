"""Student components: pick the teacher, create the Optuna study, its workers, the best config, the student.

The workers of one study run as the items of a ParallelFor and meet in one storage: on a cluster the
PostgreSQL URL of the `sibeatgan-optuna` secret ($OPTUNA_STORAGE), locally an Optuna journal file on the
shared filesystem (the `optuna_storage` parameter). The study is named after the pipeline run, so a
rerun starts a fresh search and a retried worker rejoins its own.
"""


from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pick_teacher(teachers: Input[List[Model]], evaluations: Input[List[Artifact]], folds: List[int], seeds: List[int],
                 teacher: Output[Model], evaluation: Output[Artifact]):
    """The teacher the student is distilled from (the grid's first fold and seed, chosen before any test score
    is seen) and its evaluation, as single artifacts for the steps after the ParallelFor."""
    import shutil

    from sibeatgan.pipeline import pick_run

    fold, seed = int(folds[0]), int(seeds[0])
    model = pick_run(teachers, fold, seed, "teacher")
    scored = pick_run(evaluations, fold, seed, "evaluation")
    shutil.copytree(model.path, teacher.path)
    shutil.copytree(scored.path, evaluation.path)
    teacher.metadata.update(model.metadata)
    evaluation.metadata.update(scored.metadata)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def create_study(
    teacher: Input[Model], trials: int, workers: int, members_per_worker: int, optuna_storage: str = "", config_yaml: str = "",
    run_id: str = "local", mlflow_uri: str = "",
) -> List[int]:
    """Create the run's study once, before its workers attach, with its MLflow parent run (each trial becomes a
    nested child run, logged by its worker); returns the workers' indices (the ParallelFor's items; every task
    derives the study's name from the run id)."""
    import logging
    import tempfile
    from pathlib import Path

    from sibeatgan.config import StudentConfig, TrackingConfig, to_dict
    from sibeatgan.pipeline import step_config, tune_config
    from sibeatgan.search import open_study
    from sibeatgan.tracking import client_env, flatten, study_run, tracking_uri

    tune = tune_config(config_yaml, trials, workers, members_per_worker, optuna_storage, run_id)
    base = step_config(StudentConfig, config_yaml)
    tracking = step_config(TrackingConfig, config_yaml, tracking_uri=mlflow_uri or None)
    with tempfile.TemporaryDirectory() as tmp:
        study = open_study(tune, base.selection, Path(tmp))
        if mlflow_uri and "mlflow_run_id" not in study.user_attrs:
            client_env(tracking.http_timeout_s)
            parent = study_run(tracking_uri(tracking, tmp), Path(tmp) / "tracking", tune.study_name,
                               {**flatten(to_dict(tune), "tune."), **flatten(to_dict(base), "student.")},
                               experiment=tracking.experiment, tags={"teacher": teacher.uri, "pipeline_run": run_id})
            if parent is None:
                logging.getLogger(__name__).warning("MLflow at %s did not answer: the trials are not logged (the search goes on)",
                                                    mlflow_uri)
            else:
                study.set_user_attr("mlflow_run_id", parent)
    return list(range(tune.workers))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune_worker(
    beats: Input[Dataset], teacher: Input[Model], trials_out: Output[Artifact], worker: int, trials: int, workers: int,
    members_per_worker: int, tune_epochs: int, optuna_storage: str = "", config_yaml: str = "", device: str = "auto",
    run_id: str = "local", mlflow_uri: str = "",
):
    """One Optuna worker: asks `members_per_worker` trials at a time and trains them as one batched group, until the
    study's budget is met, each trial a child run of the study's MLflow run; a retried worker rejoins the study (a
    dead one's trials are retried after its heartbeat)."""
    from pathlib import Path

    from sibeatgan.config import StudentConfig, TrackingConfig
    from sibeatgan.pipeline import step_config, tune_config
    from sibeatgan.search import open_study
    from sibeatgan.search import tune_worker as work
    from sibeatgan.tracking import TrialRuns, client_env
    from sibeatgan.train.distill import StudentGroup

    tune = tune_config(config_yaml, trials, workers, members_per_worker, optuna_storage, run_id)
    base = step_config(StudentConfig, config_yaml, fold=int(teacher.metadata["fold"]), epochs=tune_epochs, device=device)
    out = Path(trials_out.path)
    parent = open_study(tune, base.selection, out, int(worker)).user_attrs.get("mlflow_run_id")
    callbacks = None
    if mlflow_uri and parent:
        tracking = step_config(TrackingConfig, config_yaml, tracking_uri=mlflow_uri)
        client_env(tracking.http_timeout_s)
        callbacks = TrialRuns(mlflow_uri, out / "tracking", parent, tracking.experiment)
    result = work(tune, base, out, StudentGroup(Path(beats.path), Path(teacher.path)), int(worker), callbacks)
    trials_out.metadata.update(worker=int(worker), told=result["told"], study=tune.study_name)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def best_config(
    workers_done: Input[List[Artifact]], teacher: Input[Model], best: Output[Dataset], metrics: Output[Metrics], trials: int,
    workers: int, members_per_worker: int, tune_epochs: int, optuna_storage: str = "", config_yaml: str = "", device: str = "auto",
    run_id: str = "local",
):
    """After every worker: best.json (the best trial's student config), summary.json, trials.csv and the study's plots."""
    from pathlib import Path

    from sibeatgan.config import StudentConfig
    from sibeatgan.pipeline import step_config, tune_config
    from sibeatgan.search import write_outputs

    tune = tune_config(config_yaml, trials, workers, members_per_worker, optuna_storage, run_id)
    base = step_config(StudentConfig, config_yaml, fold=int(teacher.metadata["fold"]), epochs=tune_epochs, device=device)
    summary = write_outputs(tune, base, Path(best.path))
    best.metadata.update(study=tune.study_name, trial=summary["trial"], criterion=summary["criterion"], params=summary["params"],
                         trials=summary["trials"], workers_told=sum(int(w.metadata.get("told", 0)) for w in workers_done))
    metrics.log_metric(summary["criterion"], float(summary["value"]))
    metrics.log_metric("best_trial", summary["trial"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_student(
    beats: Input[Dataset], teacher: Input[Model], best: Input[Dataset], model: Output[Model], metrics: Output[Metrics], epochs: int,
    device: str = "auto", checkpoint_root: str = "", run_id: str = "local",
):
    """The student with the search's best config, distilled from the same fold's teacher; resumes from its checkpoint
    when the task is retried (as the teacher does)."""
    import shutil
    from pathlib import Path

    from sibeatgan.config import StudentConfig, load_config
    from sibeatgan.train.distill import run_train_student

    conf = load_config(StudentConfig, Path(best.path) / "best.json", {"epochs": epochs, "device": device})
    work = Path(checkpoint_root) / run_id / f"student-fold{conf.fold}-seed{conf.seed}" if checkpoint_root else Path(model.path)
    result = run_train_student(conf, Path(beats.path), Path(teacher.path), work, resume=True)
    if work != Path(model.path):
        shutil.copytree(work, model.path)
    model.metadata.update(fold=conf.fold, seed=conf.seed, kind="student", selection=result["selection"],
                          criterion=result["criterion"], best_epoch=result["best_epoch"], trial=best.metadata.get("trial"))
    metrics.log_metric("best_epoch", result["best_epoch"])
    metrics.log_metric("epochs", result["epochs"])
    if result["best_metric"] is not None:
        metrics.log_metric(result["criterion"], float(result["best_metric"]))
