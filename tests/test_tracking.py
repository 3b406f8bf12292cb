"""Tracking: params, per-epoch metrics, artifacts, lineage and tags; local first; Optuna parent and nested trials.

The server tests run against a real `mlflow server` (PostgreSQL, S3 on moto, basic-auth) from tests/services.py.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from sibeatgan.config import TeacherConfig, TrackingConfig
from sibeatgan.tracking import Tracker, end_trial, flatten, run_tags, step_tracker, study_run, sync, trial_run

pytest_plugins = ["tests.services"]


def _client(uri: str | None = None):  # noqa: ANN202
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _steps(client, run_id: str, key: str) -> list[int]:  # noqa: ANN001
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_flatten_config_and_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    flat = flatten(TeacherConfig(epochs=3), "teacher.")
    assert flat["teacher.epochs"] == "3" and flat["teacher.max_train_beats"] == "None"
    assert flatten({"a": {"b": (1, 2)}}) == {"a.b": "1,2"}
    monkeypatch.setenv("SIBEATGAN_IMAGE", "registry.example/si-beatgan:1")
    tags = run_tags(device="cpu", protocol="beatgan")
    assert tags["image"] == "registry.example/si-beatgan:1" and tags["device"] == "cpu" and tags["protocol"] == "beatgan"
    assert len(tags["git_commit"]) == 40 and tags["sibeatgan_version"] != "unknown"


def test_training_loop_drives_the_tracker(small_teacher: dict) -> None:
    """run_train_teacher(callbacks=[tracker]): config params, lineage and protocol at fit start, each epoch's row at its step."""
    import json as _json

    from sibeatgan.data.artifact import read_manifest

    client = _client(small_teacher["tracking_uri"])
    run = client.get_run(small_teacher["run_id"])
    summary = _json.loads((small_teacher["train"] / "metrics.json").read_text())
    epochs = list(range(1, summary["epochs"] + 1))
    for key in ("loss_g", "loss_d", "val_auc", "val_normal_mse"):
        assert _steps(client, run.info.run_id, key) == epochs, key
    assert run.data.params["model.epochs"] == "4" and run.data.params["model.lr"] == "0.001"
    assert run.data.tags["protocol"] == "beatgan" and run.data.tags["split_hash"] == summary["split_hash"]
    assert run.data.metrics["best_epoch"] == summary["best_epoch"] and run.data.metrics["threshold"] == pytest.approx(summary["threshold"])
    (dataset_input,) = run.inputs.dataset_inputs
    content_hash = read_manifest(small_teacher["dataset"])["content_hash"]
    assert dataset_input.dataset.digest == content_hash[:32] and content_hash in dataset_input.dataset.profile
    assert {t.key: t.value for t in dataset_input.tags}["split_hash"] == summary["split_hash"]


def test_local_sqlite_store_by_default(small_teacher: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No URI: the one SQLite store every command uses, runs/mlflow.db under the working directory (not beside each
    output); the real teacher's epoch rows, files and lineage are logged."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "teacher"
    tracker = step_tracker(TrackingConfig(), out, "train-teacher", tags={"protocol": "beatgan", "device": "cpu"})
    assert tracker.uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    summary = json.loads((small_teacher["train"] / "metrics.json").read_text())
    for row in summary["history"]:  # what the training loop's callback receives, epoch by epoch
        tracker.on_epoch_end(row["epoch"], row)
    tracker.log_artifact(small_teacher["train"] / "metrics.json")
    tracker.log_dataset("f" * 64, "e" * 64, source=str(small_teacher["dataset"]))
    tracker.log_artifact(small_teacher["eval"] / "fold_0" / "roc.png", "plots")
    assert tracker.finish()
    client = _client(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train-teacher.experiment"] == "si-beatgan"
    assert run.data.tags["protocol"] == "beatgan" and run.data.tags["dataset_hash"] == "f" * 64
    n = len(summary["history"])
    assert _steps(client, tracker.run_id, "loss_g") == list(range(1, n + 1))  # one point per epoch
    assert _steps(client, tracker.run_id, "val_normal_mse")[-1] == n
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "f" * 32
    assert {t.key: t.value for t in dataset_input.tags}["split_hash"] == "e" * 64
    assert {a.path for a in client.list_artifacts(tracker.run_id, "plots")} == {"plots/roc.png"}
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # artifacts beside the store


def test_unreachable_server_at_start_logs_locally_then_syncs(mlflow_env, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from tests.services import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sibeatgan.tracking"):
        tracker = Tracker(tmp_path / "j", dead, "offline", run_name="offline", retries=1, backoff_s=0.1).start()
        tracker.log_params({"lr": 1e-4})
        for epoch in range(1, 4):
            tracker.on_epoch_end(epoch, {"loss": 1.0 / epoch})
        assert not tracker.finish()
    assert time.monotonic() - started < 20
    assert "did not take" in caplog.text and "track-sync" in caplog.text
    assert tracker.run_id is None and tracker.pending > 0
    from typer.testing import CliRunner

    from sibeatgan.cli import app

    result = CliRunner().invoke(app, ["track-sync", str(tmp_path / "j"), "--uri", mlflow_env.url])
    assert result.exit_code == 0 and "all sent" in result.output, result.output
    synced = Tracker.resume(tmp_path / "j")  # state.json now names the server and run it went to
    assert synced.pending == 0
    client = _client(mlflow_env.url)
    assert _steps(client, synced.run_id, "loss") == [1, 2, 3]
    assert client.get_run(synced.run_id).data.params == {"lr": "0.0001"}


def test_server_restart_while_training_logs_loses_nothing(mlflow_env, tmp_path: Path) -> None:
    tracker = Tracker(tmp_path / "j", mlflow_env.url, "restart", run_name="restart", retries=5, backoff_s=0.5).start()
    for epoch in (1, 2):
        tracker.on_epoch_end(epoch, {"loss": float(epoch)})
    assert tracker.pending == 0
    mlflow_env.stop()
    try:
        for epoch in (3, 4):
            tracker.on_epoch_end(epoch, {"loss": float(epoch)})  # the training goes on
        assert tracker.pending == 2
    finally:
        mlflow_env.start()
    tracker.on_epoch_end(5, {"loss": 5.0})
    assert tracker.finish()
    client = _client(mlflow_env.url)
    history = client.get_metric_history(tracker.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(e, float(e)) for e in range(1, 6)]


def test_s3_refusing_an_upload_keeps_the_local_copy(mlflow_services, mlflow_env, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from tests.services import BUCKET

    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    report.write_text('{"ok": true}')
    s3 = mlflow_services.moto.s3()
    saved = {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
             for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    for key in saved:
        s3.delete_object(Bucket=BUCKET, Key=key)
    s3.delete_bucket(Bucket=BUCKET)
    try:
        tracker = Tracker(tmp_path / "j", mlflow_env.url, "s3-fault", retries=2, backoff_s=0.2).start()
        tracker.log_artifact(report)
        with caplog.at_level(logging.WARNING, logger="sibeatgan.tracking"):
            assert not tracker.finish()
        assert "did not take 2 pending record(s)" in caplog.text  # the artifact and the end of the run
        assert report.read_text() == '{"ok": true}'
    finally:
        s3.create_bucket(Bucket=BUCKET)
        for key, body in saved.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    synced = sync(tmp_path / "j")
    assert synced.pending == 0
    assert [a.path for a in _client(mlflow_env.url).list_artifacts(synced.run_id)] == ["report.json"]


def _worker(env: dict, storage: str, study: str, parent: str, root: str) -> None:
    """One Optuna worker process: its trials log into the shared parent run from the objective."""
    import os

    os.environ.update(env)
    import optuna

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        tracker = trial_run(parent, env["MLFLOW_TRACKING_URI"], Path(root) / f"trial-{trial.number}", trial.number, {"x": x},
                            experiment="optuna")
        state = ("complete", "pruned", "failed")[trial.number % 3]
        try:
            for epoch in range(1, 4):
                value = x / epoch
                tracker.on_epoch_end(epoch, {"val_auc": value})
                trial.report(value, epoch)
                if state == "pruned" and epoch == 2:
                    raise optuna.TrialPruned()
                if state == "failed" and epoch == 2:
                    raise ValueError("diverged")
        except optuna.TrialPruned:
            end_trial(tracker, "pruned")
            raise
        except ValueError:
            end_trial(tracker, "failed")
            raise
        end_trial(tracker, "complete", value)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.load_study(study_name=study, storage=storage).optimize(objective, n_trials=3, catch=(ValueError,))


def test_optuna_study_parent_with_trials_from_two_workers(mlflow_env, tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    parent = study_run(mlflow_env.url, tmp_path / "study", "s", {"n_trials": 6}, experiment="optuna")
    assert parent is not None
    study.set_user_attr("mlflow_run_id", parent)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(mlflow_env.env(), storage, "s", parent, str(tmp_path / f"w{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    client = _client(mlflow_env.url)
    exp = client.get_experiment_by_name("optuna")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    trials = {t.number: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert len(children) == len(trials) == 6
    expected = {"COMPLETE": ("complete", "FINISHED", 3), "PRUNED": ("pruned", "KILLED", 2), "FAIL": ("failed", "FAILED", 2)}
    for run in children:
        trial = trials[int(run.data.tags["optuna.trial"])]
        state, status, last = expected[trial.state.name]
        assert (run.data.tags["optuna.state"], run.info.status) == (state, status)
        assert float(run.data.params["x"]) == pytest.approx(trial.params["x"])
        assert _steps(client, run.info.run_id, "val_auc") == list(range(1, last + 1))


def test_batched_members_are_nested_trials(tmp_path: Path) -> None:
    """Driven as the training loop drives it: member 1 stopped (pruned) after epoch 1, member 0 runs to the end."""
    from types import SimpleNamespace

    from sibeatgan.tracking import MemberTrials

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    parent = study_run(uri, tmp_path / "study", "batched", experiment="batched")
    trials = MemberTrials([trial_run(parent, uri, tmp_path / f"t{k}", k, {"lambda_fm": k + 1}, experiment="batched") for k in range(2)])
    trials.on_fit_start({"member_configs": [{"lambda_fm": 1.0}, {"lambda_fm": 2.0}], "dataset_hash": "a" * 64, "split_hash": "b" * 64})
    control = SimpleNamespace(stopped=[None, None])
    trials.on_epoch_end(1, [{"val_auc": 0.8}, {"val_auc": 0.6}], control)
    control.stopped[1] = "pruned"
    trials.on_epoch_end(2, [{"val_auc": 0.85}, None], control)
    trials.on_fit_end({"members": [{"best_metric": 0.85}, {"best_metric": 0.6}]})
    client = _client(uri)
    runs = {r.data.tags["optuna.trial"]: r for r in client.search_runs(
        [client.get_experiment_by_name("batched").experiment_id], f"tags.mlflow.parentRunId = '{parent}'")}
    assert (runs["0"].info.status, runs["0"].data.tags["optuna.state"], runs["0"].data.metrics["objective"]) == ("FINISHED", "complete", 0.85)
    assert (runs["1"].info.status, runs["1"].data.tags["optuna.state"]) == ("KILLED", "pruned")
    assert _steps(client, runs["0"].info.run_id, "val_auc") == [1, 2] and _steps(client, runs["1"].info.run_id, "val_auc") == [1]
    assert runs["1"].data.params["model.lambda_fm"] == "2.0"


def test_a_training_killed_and_resumed_while_the_server_is_away_delivers_every_epoch(mlflow_env, synth_dataset,
                                                                                     tmp_path: Path) -> None:
    """`train-teacher` with the server away, SIGKILLed after epoch 3, resumed to its end; `track-sync` then delivers the
    epochs of both runs and the selected epoch, to one run."""
    import os
    import signal
    import subprocess
    import sys

    from tests.services import free_port

    root = Path(__file__).resolve().parents[1]
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, **mlflow_env.env(), "MLFLOW_TRACKING_URI": dead, "PYTHONPATH": str(root)}
    out = tmp_path / "teacher"
    cmd = [sys.executable, "-m", "sibeatgan.cli", "train-teacher", "--dataset", str(synth_dataset), "--out", str(out), "--device", "cpu",
           "--no-progress", *[f"--set={s}" for s in ("ngf=8", "ndf=8", "nz=8", "max_train_beats=128", "cuda_graph=false")]]

    def epochs_done() -> int:
        try:
            return len(json.loads((out / "metrics.json").read_text())["history"])
        except (OSError, ValueError, KeyError):
            return 0

    proc = subprocess.Popen([*cmd, "--epochs", "200"], env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while epochs_done() < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    first = {op["step"] for op in map(json.loads, (out / "tracking" / "journal.jsonl").read_text().splitlines()) if op["op"] == "metrics"}
    assert {1, 2, 3} <= first
    epochs = epochs_done() + 2
    r = subprocess.run([*cmd, "--epochs", str(epochs)], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "track-sync" in r.stderr  # it resumed, and said the journal waits for a sync

    r = subprocess.run([sys.executable, "-m", "sibeatgan.cli", "track-sync", str(out / "tracking"), "--uri", mlflow_env.url],
                       env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "all sent" in r.stdout, r.stderr
    run_id = json.loads((out / "tracking" / "state.json").read_text())["run_id"]
    client = _client(mlflow_env.url)
    assert set(_steps(client, run_id, "val_normal_mse")) == set(range(1, epochs + 1))  # epochs 1-3 too, not only the resumed ones
    summary = json.loads((out / "metrics.json").read_text())
    run = client.get_run(run_id)
    assert run.data.metrics["best_epoch"] == summary["best_epoch"] and run.info.status == "FINISHED"


def test_a_journal_line_cut_by_a_kill_is_dropped_and_the_journal_goes_on(tmp_path: Path) -> None:
    from tests.services import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(tmp_path / "j", dead, "cut", retries=0).start()
    tracker.on_epoch_end(1, {"loss": 1.0})
    with open(tracker.journal, "a") as fh:
        fh.write('{"op": "metrics", "data": {"loss": 2')  # the process died inside this write
    again = Tracker(tmp_path / "j", dead, "cut", retries=0).start()
    again.on_epoch_end(2, {"loss": 2.0})
    ops = [json.loads(line) for line in again.journal.read_text().splitlines()]
    assert [op["step"] for op in ops if op["op"] == "metrics"] == [1, 2]
    assert again.pending == len(ops)
