"""`sibeatgan tune`: the Optuna study of the student over lambda, T, tau (and alpha, beta, lr, init), its workers on
one storage, and its MLflow runs (the study's run, each trial a child run)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sibeatgan.config import StudentConfig, TuneConfig
from sibeatgan.train.distill import _prepare, train_student_group

log = logging.getLogger(__name__)


class StudentGroup:
    """The search's `train_group`: picklable, so spawned worker processes can take it."""

    def __init__(self, dataset: Path, teacher: Path, split: Path | None = None):
        self.dataset, self.teacher, self.split = Path(dataset), Path(teacher), split

    def __call__(self, configs: list[StudentConfig], out: Path, callbacks: list[Any]) -> list[dict[str, Any]]:
        # a group's folder belongs to its trials: never resumed (a retried trial is a new trial, trained afresh)
        return train_student_group(configs, self.dataset, self.teacher, out, callbacks, self.split, resume=False, scores=False)


def study_params(tune: TuneConfig, student: StudentConfig) -> dict[str, str]:
    """The study's settings as MLflow params; `flatten` redacts the storage URL's password (every MLflow user reads params)."""
    from sibeatgan.config import to_dict
    from sibeatgan.tracking import flatten

    return {**flatten(to_dict(tune), "tune."), **flatten(to_dict(student), "student.")}


def start_study_run(tune: TuneConfig, student: StudentConfig, tracking: Any, out: Path, **tags: Any) -> str | None:
    """The study's MLflow run, made once by whoever creates the study (nested under `tracking.parent_run_id`), its id
    kept in the study so every worker finds it; None when the server is away (the search goes on untracked)."""
    from sibeatgan.search import open_study
    from sibeatgan.tracking import client_env, study_run, tracking_uri

    client_env(tracking.http_timeout_s)
    study = open_study(tune, student.selection, out)
    parent = study.user_attrs.get("mlflow_run_id")
    if parent is None:
        uri = tracking_uri(tracking)
        parent = study_run(uri, Path(out) / "tracking" / "study", tune.study_name, study_params(tune, student), experiment=tracking.experiment,
                           tags=tags, parent_run_id=tracking.parent_run_id)
        if parent is None:
            log.warning("MLflow at %s did not answer: the study's trials are not logged (the search goes on)", uri)
        else:
            study.set_user_attr("mlflow_run_id", parent)
    return parent


def end_study_run(tracking: Any, run_id: str | None, summary: dict[str, Any], out: Path) -> None:
    """After the search: the study's run gets the best trial's value and params, the trial counts, best.json, trials.csv and
    the plots (history, importances, slices), and ends FINISHED."""
    if tracking is None or not run_id:
        return
    from sibeatgan.tracking import Tracker, tracking_uri

    t = Tracker.attach(Path(out) / "tracking" / "study-end", tracking_uri(tracking), run_id, tracking.experiment)
    t.log_metrics({"best_value": summary["value"], "best_trial": summary["trial"],
                   **{f"trials_{state}": n for state, n in summary["trials"].items()}})
    t.set_tags({"best_params": json.dumps(summary["params"]), "criterion": summary["criterion"]})
    for name in ("best.json", "summary.json", "trials.csv"):
        if (Path(out) / name).is_file():
            t.log_artifact(Path(out) / name)
    for plot in summary.get("plots", []):
        t.log_artifact(Path(plot), "plots")
    t.finish("FINISHED")


def run_tune(tune: TuneConfig, student: StudentConfig, dataset: Path, teacher: Path, out: Path, split: Path | None = None,
             tracking: Any = None) -> dict[str, Any]:
    """`sibeatgan tune`: the study over lambda, T, tau (and alpha, beta, lr, init), `tune.workers` processes on one storage.

    With a TrackingConfig, the study is one MLflow run (ended FINISHED with the best value and the plots) and each trial
    a nested child run (params, per-epoch values, state: complete, pruned or failed), logged from the workers."""
    from sibeatgan.search import run_workers
    from sibeatgan.tracking import TrialRuns, tracking_uri

    out = Path(out)
    _prepare(student, Path(dataset), Path(teacher), split)  # refuse a wrong teacher or split before any worker starts
    parent = start_study_run(tune, student, tracking, out, teacher=str(teacher)) if tracking is not None else None
    callbacks = TrialRuns(tracking_uri(tracking), out / "tracking", parent, tracking.experiment) if parent else None
    summary = run_workers(tune, student, out, StudentGroup(dataset, teacher, split), callbacks)
    end_study_run(tracking, parent, summary, out)
    return summary
