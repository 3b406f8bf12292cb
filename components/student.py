"""Student components: pick the teacher, create the Optuna study, its workers, the best config, the candidates (the
best student and its no-KD control) and the winner on validation.

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

    from sibeatgan.steps.protocol import pick_run

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
    run_id: str = "local", mlflow_uri: str = "", kfp_run_id: str = "", experiment: str = "",
) -> List[int]:
    """Create the run's study once, before its workers attach, with its MLflow run under the pipeline's (each trial
    becomes a nested child run, logged by its worker); returns the workers' indices (the ParallelFor's items; every
    task derives the study's name from the run id)."""
    import tempfile
    from pathlib import Path

    from sibeatgan.config import StudentConfig
    from sibeatgan.steps.protocol import pipeline_tracking, step_config, tune_config
    from sibeatgan.steps.tune import start_study_run

    tune = tune_config(config_yaml, trials, workers, members_per_worker, optuna_storage, run_id)
    base = step_config(StudentConfig, config_yaml)
    tracking = pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None)
    with tempfile.TemporaryDirectory() as tmp:
        if tracking is not None:
            start_study_run(tune, base, tracking, Path(tmp), teacher=teacher.uri, pipeline_run=run_id)
        else:
            from sibeatgan.search import open_study

            open_study(tune, base.selection, Path(tmp))
    return list(range(tune.workers))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune_worker(
    beats: Input[Dataset], teacher: Input[Model], trials_out: Output[Artifact], worker: int, trials: int, workers: int,
    members_per_worker: int, tune_epochs: int, optuna_storage: str = "", config_yaml: str = "", device: str = "auto",
    run_id: str = "local", mlflow_uri: str = "", experiment: str = "",
):
    """One Optuna worker: asks `members_per_worker` trials at a time and trains them as one batched group, until the
    study's budget is met, each trial a child run of the study's MLflow run; a retried worker rejoins the study (a
    dead one's trials are retried after its heartbeat)."""
    from pathlib import Path

    from sibeatgan.config import StudentConfig
    from sibeatgan.search import open_study
    from sibeatgan.search import tune_worker as work
    from sibeatgan.steps.protocol import pipeline_tracking, step_config, tune_config
    from sibeatgan.steps.tune import StudentGroup
    from sibeatgan.tracking import TrialRuns, client_env

    tune = tune_config(config_yaml, trials, workers, members_per_worker, optuna_storage, run_id)
    base = step_config(StudentConfig, config_yaml, fold=int(teacher.metadata["fold"]), epochs=tune_epochs, device=device)
    out = Path(trials_out.path)
    parent = open_study(tune, base.selection, out, int(worker)).user_attrs.get("mlflow_run_id")
    tracking = pipeline_tracking(config_yaml, mlflow_uri, experiment=experiment or None)
    callbacks = None
    if tracking is not None and parent:
        client_env(tracking.http_timeout_s)
        callbacks = TrialRuns(mlflow_uri, out / "tracking", parent, tracking.experiment)
    result = work(tune, base, out, StudentGroup(Path(beats.path), Path(teacher.path)), int(worker), callbacks)
    trials_out.metadata.update(worker=int(worker), told=result["told"], study=tune.study_name)
    print(f"SIBEATGAN-HEADLINE: worker {worker}: {result['told']} trial(s) told")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def best_config(
    workers_done: Input[List[Artifact]], teacher: Input[Model], best: Output[Dataset], metrics: Output[Metrics], trials: int,
    workers: int, members_per_worker: int, tune_epochs: int, optuna_storage: str = "", config_yaml: str = "", device: str = "auto",
    run_id: str = "local", mlflow_uri: str = "", experiment: str = "",
):
    """After every worker: best.json (the best trial's student config), summary.json, trials.csv and the study's plots;
    the study's MLflow run ends FINISHED with the best value and the plots."""
    from pathlib import Path

    from sibeatgan.config import StudentConfig
    from sibeatgan.search import open_study, write_outputs
    from sibeatgan.steps.protocol import pipeline_tracking, step_config, tune_config
    from sibeatgan.steps.tune import end_study_run

    tune = tune_config(config_yaml, trials, workers, members_per_worker, optuna_storage, run_id)
    base = step_config(StudentConfig, config_yaml, fold=int(teacher.metadata["fold"]), epochs=tune_epochs, device=device)
    summary = write_outputs(tune, base, Path(best.path))
    end_study_run(pipeline_tracking(config_yaml, mlflow_uri, experiment=experiment or None), open_study(tune, base.selection, Path(best.path)).user_attrs.get("mlflow_run_id"),
                  summary, Path(best.path))
    best.metadata.update(study=tune.study_name, trial=summary["trial"], criterion=summary["criterion"], params=summary["params"],
                         trials=summary["trials"], workers_told=sum(int(w.metadata.get("told", 0)) for w in workers_done))
    metrics.log_metric(summary["criterion"], float(summary["value"]))
    metrics.log_metric("best_trial", summary["trial"])
    print(f"SIBEATGAN-HEADLINE: best trial {summary['trial']}: {summary['criterion']} {summary['value']:.4g} "
          f"({summary['trials'].get('complete', 0)} complete)")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_candidates(
    beats: Input[Dataset], teacher: Input[Model], best: Input[Dataset], student: Output[Model], control: Output[Model], epochs: int,
    device: str = "auto", checkpoint_root: str = "", config_yaml: str = "", mlflow_uri: str = "", kfp_run_id: str = "", experiment: str = "",
):
    """The search's best student and its no-KD control (the same init, epochs, beats and seed; alpha = beta = 0),
    trained together as one batched group from the same teacher, each its own MLflow run with every epoch; resumes
    from its content-keyed checkpoint when the task is retried or the run resubmitted."""
    import shutil
    from pathlib import Path

    from sibeatgan.card import read_card
    from sibeatgan.config import StudentConfig, load_config
    from sibeatgan.files import sha256_file
    from sibeatgan.steps.protocol import checkpoint_key, pipeline_tracking
    from sibeatgan.steps.train import run_train_candidates

    conf = load_config(StudentConfig, Path(best.path) / "best.json", {"epochs": epochs, "device": device})
    key = checkpoint_key("candidates", conf, str(beats.metadata.get("content_hash", "")), sha256_file(Path(teacher.path) / "generator.pt"))
    work = Path(checkpoint_root) / key if checkpoint_root else Path(student.path).parent / "candidates"
    results = run_train_candidates(conf, Path(beats.path), Path(teacher.path), work, pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None))
    for name, artifact in (("student", student), ("control", control)):
        shutil.copytree(work / name, artifact.path, ignore=shutil.ignore_patterns("tracking"))
        card = read_card(artifact.path)  # a candidate with no model has a stand-in card (no_model: it is never evaluated)
        artifact.metadata.update(fold=card.fold, seed=card.seed, kind=name, selection=card.selection, criterion=card.criterion,
                                 best_epoch=card.epoch, validation_metric=card.validation_metric, trial=best.metadata.get("trial"),
                                 no_model=not card.has_model)
    s, c = results["student"], results["control"]
    print(f"SIBEATGAN-HEADLINE: student {s['criterion']} {s['best_metric']}, control {c['best_metric']} on validation")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pick_winner(
    student: Input[Model], control: Input[Model], student_evaluation: Input[Artifact], control_evaluation: Input[Artifact],
    comparison: Input[Artifact], winner: Output[Model], evaluation: Output[Artifact], evidence: Output[Artifact],
):
    """The model to register: whichever of the student and its no-KD control is better on validation (test figures
    never enter the choice), with the evidence: the candidates, each one's validation value, the margin, the reason, and
    the paired test comparison and its table."""
    import json
    import shutil
    from pathlib import Path

    from sibeatgan.card import read_card
    from sibeatgan.files import write_json
    from sibeatgan.steps.protocol import choose_winner

    comp = json.loads((Path(comparison.path) / "compare.json").read_text())
    compared = "skipped" not in comp  # skipped: a candidate had no model to evaluate
    found = choose_winner({"student": read_card(student.path), "control": read_card(control.path)}, comp if compared else None,
                          Path(comparison.path) / "table.txt" if compared else None)
    model, scored = (student, student_evaluation) if found["winner"] == "student" else (control, control_evaluation)
    shutil.copytree(model.path, winner.path)
    shutil.copytree(scored.path, evaluation.path)
    Path(evidence.path).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(comparison.path) / "table.txt", Path(evidence.path) / "comparison.txt")  # or why it was skipped
    found["table"] = str(Path(evidence.path) / "comparison.txt")
    write_json(Path(evidence.path) / "evidence.json", found)
    winner.metadata.update(model.metadata)
    evaluation.metadata.update(scored.metadata)
    evidence.metadata.update({k: found[k] for k in ("winner", "criterion", "margin", "reason")})
    margin = f" by {found['margin']:.4g}" if found["margin"] is not None else ""
    print(f"SIBEATGAN-HEADLINE: the {found['winner']} wins{margin} on validation {found['criterion']}")
