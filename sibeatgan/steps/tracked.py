"""Tracking as callbacks of the steps: each step is one MLflow run (nested under the pipeline run's parent run when
the tracking section names one), journaled in the step's output folder first, so a server that is away never fails
the step.

`StepRun` is a training-loop callback: the run starts when training starts (a step that fails before that leaves
no run and no folder), logs the model's config, the dataset lineage and every epoch, and ends FINISHED, or FAILED
when training raised (`tracked`). `log_step` records a step that does not train (validate, preprocess, evaluate,
compare) once its outputs exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from sibeatgan import config as cfg


def tracking_config(path: Path | None = None, **overrides: Any) -> cfg.TrackingConfig:
    """The `tracking:` section of a config file of sections (a file of one step's top-level fields says nothing of
    tracking), with `overrides` (e.g. the pipeline's MLflow URI and parent run) applied."""
    import yaml

    given = {k: v for k, v in overrides.items() if v is not None}
    if path is not None and Path(path).is_file():
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(loaded, dict) and "tracking" in loaded:
            return cfg.load_config(cfg.TrackingConfig, path, given)
    return cfg.load_config(cfg.TrackingConfig, None, given)


class StepRun:
    """A step's MLflow run as a training-loop callback, started when training starts."""

    def __init__(self, tracking: cfg.TrackingConfig, step: str, out: Path, run_name: str | None = None, **tags: Any) -> None:
        self.tracking, self.step, self.out, self.run_name = tracking, step, Path(out), run_name
        self.tags = {k: v for k, v in tags.items() if v is not None}
        self.tracker: Any = None

    def start(self) -> Any:
        from sibeatgan.tracking import step_tracker

        if self.tracker is None:
            self.tracker = step_tracker(self.tracking, self.out, self.step, run_name=self.run_name, tags=self.tags)
        return self.tracker

    def on_fit_start(self, info: dict[str, Any]) -> None:
        self.start().on_fit_start(info)

    def on_epoch_end(self, epoch: int, rows: Any, control: Any) -> None:
        self.tracker.on_epoch_end(epoch, rows, control)

    def on_fit_end(self, result: dict[str, Any]) -> None:
        self.tracker.on_fit_end(result)

    @property
    def run_id(self) -> str | None:
        return None if self.tracker is None else self.tracker.run_id

    def finish(self, files: Sequence[str | Path] = (), status: str = "FINISHED", metrics: dict[str, Any] | None = None,
               tags: dict[str, Any] | None = None) -> None:
        """End the run with `files` (relative to the step's folder, or absolute) as artifacts, if it started."""
        if self.tracker is None:
            return
        if metrics:
            self.tracker.log_metrics(metrics)
        if tags:
            self.tracker.set_tags({k: v for k, v in tags.items() if v is not None})
        for name in files:
            path = Path(name) if Path(name).is_absolute() else self.out / name
            if path.exists():
                self.tracker.log_artifact(path)
        self.tracker.finish(status)


def step_runs(tracking: cfg.TrackingConfig | None, step: str, out: Path, run_name: str | None = None, **tags: Any) -> list[StepRun]:
    """The step's tracking callbacks: one StepRun, or none when tracking is off (`tracking` None)."""
    return [] if tracking is None else [StepRun(tracking, step, out, run_name, **tags)]


def tracked(runs: list[StepRun], train: Callable[[list[Any]], dict[str, Any]], files: Sequence[str] = ("metrics.json",)) -> dict[str, Any]:
    """train(callbacks), then each run ended with `files` logged: FINISHED, or FAILED if training raised."""
    try:
        result = train(list(runs))
    except BaseException:
        for run in runs:
            run.finish(files, "FAILED")
        raise
    for run in runs:
        run.finish(files)
    return result


def log_step(tracking: cfg.TrackingConfig | None, step: str, conf: Any, out: Path, metrics: dict[str, Any] | None = None,
             files: Sequence[Path] = (), dataset_hash: str | None = None, split_hash: str | None = None, run_name: str | None = None,
             **tags: Any) -> str | None:
    """A finished step's MLflow run: its typed config as `<step>.*` params, its figures, the files a person opens, and
    the dataset (and split) it read or wrote. Returns the run id (None when tracking is off or the server is away)."""
    if tracking is None:
        return None
    from sibeatgan.tracking import step_tracker

    tracker = step_tracker(tracking, out, step, run_name=run_name, tags={k: v for k, v in tags.items() if v is not None},
                           params=cfg.to_dict(conf))
    if dataset_hash:
        tracker.log_dataset(dataset_hash, split_hash, context=step)
    if metrics:
        tracker.log_metrics(metrics)
    for path in files:
        if Path(path).exists():
            tracker.log_artifact(path)
    tracker.finish()
    return tracker.run_id


LOCAL_RUN_ENV = "SIBEATGAN_LOCAL_RUN"  # set by pipelines.local for its tasks: the id of that local pipeline run
LOCAL_RUN_TAG = "sibeatgan.local_run"


def start_pipeline_run(tracking: cfg.TrackingConfig, local_dir: Path, kfp_run_id: str = "", kfp_run_name: str = "",
                       parameters: dict[str, Any] | None = None) -> str | None:
    """The pipeline run's own MLflow run, tagged with the KFP run id; every step's run nests under it."""
    from sibeatgan.tracking import Tracker, run_tags, tracking_uri

    local = {LOCAL_RUN_TAG: os.environ[LOCAL_RUN_ENV]} if os.environ.get(LOCAL_RUN_ENV) else {}  # how `pipelines.local` finds it
    t = Tracker(local_dir, tracking_uri(tracking), tracking.experiment, run_name=kfp_run_name or f"pipeline-{kfp_run_id}",
                tags={"step": "pipeline", "kfp.run_id": kfp_run_id, **run_tags(), **local})
    t.start()
    if parameters:
        t.log_params({f"pipeline.{k}": v for k, v in parameters.items()})
    t.flush(final=True)
    return t.run_id


def _pipeline_run_where(tracking: cfg.TrackingConfig, filter_string: str) -> str | None:
    """The id of the first pipeline run in the experiment matching `filter_string`, or None (raises if the server fails)."""
    from mlflow import MlflowClient

    from sibeatgan.tracking import client_env, tracking_uri

    client_env(tracking.http_timeout_s)
    client = MlflowClient(tracking_uri=tracking_uri(tracking))
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], filter_string=f"{filter_string} and tags.step = 'pipeline'", max_results=1)
    return found[0].info.run_id if found else None


def find_pipeline_run(tracking: cfg.TrackingConfig, kfp_run_id: str) -> str | None:
    """The MLflow run of the pipeline run `kfp_run_id` (made by `start_pipeline_run`), or None (not made, or the server
    is away: the step's run is then a top-level one)."""
    import logging

    try:
        return _pipeline_run_where(tracking, f"tags.`kfp.run_id` = '{kfp_run_id}'")
    except Exception as err:  # noqa: BLE001 - tracking never fails a step
        logging.getLogger(__name__).warning("tracking: the pipeline's MLflow run cannot be looked up (%s); this step's run is a top-level one",
                                            str(err).splitlines()[0][:200])
        return None


def end_pipeline_run(tracking: cfg.TrackingConfig | None, local_dir: Path, run_id: str, status: str = "FINISHED",
                     registered: dict[str, Any] | None = None) -> None:
    """End the pipeline's run: FINISHED with the registered version, its winner and headline figures, or FAILED."""
    if tracking is None or not run_id:
        return
    from sibeatgan.tracking import Tracker, tracking_uri

    t = Tracker.attach(Path(local_dir) / "tracking-pipeline", tracking_uri(tracking), run_id, tracking.experiment)
    if registered:
        t.set_tags({"registered_model": registered["name"], "registered_version": registered["version"],
                    "winner": registered.get("kind"), "verdict": registered.get("verdict", "")})
        t.log_metrics({f"registered_{k}": registered[k] for k in ("auc", "ap", "f1") if registered.get(k) is not None})
    t.finish(status)


def close_pipeline_run(tracking: cfg.TrackingConfig | None, local_dir: Path, run_id: str, state: str, task: str = "",
                       error: str = "") -> str:
    """End a pipeline's MLflow run that the pipeline left RUNNING (only `register` ends it, so a pipeline that failed or
    was cancelled before leaves it so): FAILED (KILLED when cancelled), with the failing task and its error as tags, and
    so are its step runs still RUNNING (the study's); a run already ended is left as it is. Never raises: returns what
    was done, for the log."""
    if tracking is None or not run_id:
        return "not tracked"
    from mlflow import MlflowClient

    from sibeatgan.tracking import client_env, tracking_uri

    from sibeatgan.tracking import Tracker

    client_env(tracking.http_timeout_s)
    ended = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED"}.get(state, "FAILED")
    try:
        client = MlflowClient(tracking_uri=tracking_uri(tracking))
        info = client.get_run(run_id).info
        if info.status != "RUNNING":
            return f"MLflow run {run_id} already {info.status}"
        # step runs left RUNNING under it (the study's, ended only by best-config) end with it
        left = client.search_runs([info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'")
        for child in left:
            client.set_terminated(child.info.run_id, ended)
        t = Tracker.attach(Path(local_dir) / "tracking-pipeline", tracking_uri(tracking), run_id, tracking.experiment)
        t.set_tags({"pipeline_state": state, **({"failed_task": task} if task and ended != "FINISHED" else {}),
                    **({"error": error[:4000]} if error else {})})
        t.finish(ended)
    except Exception as err:  # noqa: BLE001 - the exit handler never turns a pipeline's outcome into a tracking failure
        return f"MLflow run {run_id} could not be ended {ended} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it stays RUNNING"
    return (f"MLflow run {run_id} ended {ended} (pipeline {state}{f' at {task}' if task and ended != 'FINISHED' else ''})"
            + (f", with {len(left)} step run(s) left RUNNING under it" if left else ""))


def find_local_pipeline_run(tracking: cfg.TrackingConfig, local_run: str) -> str | None:
    """The MLflow run that the start-run task of the local pipeline run `local_run` made, or None."""
    return _pipeline_run_where(tracking, f"tags.`{LOCAL_RUN_TAG}` = '{local_run}'")
