"""Nothing secret reaches MLflow: a search whose Optuna storage URL carries a sentinel password runs with tracking
against a real `mlflow server` (basic-auth, PostgreSQL), and every param, tag, artifact and log line is searched for it.

Also the redaction itself (tracking.redact), and the one-line refusal of infra's MLflow user script without its secrets.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sibeatgan.tracking import flatten, redact

pytest_plugins = ["tests.services"]
ROOT = Path(__file__).resolve().parents[1]
SENTINEL = "Sentinel-Pa55-7f3c9e"  # a password no code path has any reason to print


def test_redact_hides_url_passwords_and_secret_keys():
    assert redact("tune.storage", f"postgresql+psycopg2://optuna:{SENTINEL}@db:5432/optuna") == \
        "postgresql+psycopg2://optuna:***@db:5432/optuna"
    assert redact("x", f"s3://k:{SENTINEL}@bucket/p and https://u:{SENTINEL}@h/") == "s3://k:***@bucket/p and https://u:***@h/"
    assert redact("mlflow.password", SENTINEL) == "***" and redact("aws.secret_access_key", SENTINEL) == "***"
    assert redact("storage", "studies.journal") == "studies.journal" and redact("uri", "http://mlflow:5000") == "http://mlflow:5000"
    assert redact("token", "") == ""  # an empty setting says it is unset, which is no secret
    assert redact("remote", f"https://{SENTINEL}@git.example/x.git") == "https://***@git.example/x.git"  # a bare token too


def test_one_redactor_serves_messages_too():
    """Errors that name a storage or server URL go through the same redactor as params and tags."""
    from sibeatgan.config import TuneConfig
    from sibeatgan.errors import ConfigError
    from sibeatgan.search import storage_for

    with pytest.raises(ConfigError) as err:
        storage_for(TuneConfig(storage=f"nosuch://optuna:{SENTINEL}@db/x"), Path("unused"))
    assert SENTINEL not in str(err.value) and "nosuch://optuna:***@db/x" in str(err.value)
    assert flatten({"tune": {"storage": f"postgresql://o:{SENTINEL}@h/d", "lr": [1, 2]}}) == \
        {"tune.storage": "postgresql://o:***@h/d", "tune.lr": "1,2"}


def _grep_mlflow(client, experiment_ids: list[str], tmp: Path) -> tuple[list[str], int]:
    """Every place the sentinel shows in the runs' params, tags and artifacts; and how many values were searched."""
    found, searched = [], 0
    for run in client.search_runs(experiment_ids, max_results=1000):
        rid = run.info.run_id
        for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
            for key, value in values.items():
                searched += 1
                if SENTINEL in f"{key}={value}":
                    found.append(f"run {rid} {kind} {key}={value}")
        if client.list_artifacts(rid):
            local = Path(client.download_artifacts(rid, "", str(tmp / rid)))
            for f in local.rglob("*"):
                if f.is_file():
                    searched += 1
                    if SENTINEL.encode() in f.read_bytes():
                        found.append(f"run {rid} artifact {f.relative_to(local)}")
    return found, searched


@pytest.mark.slow
def test_a_tracked_search_on_a_password_storage_leaks_it_nowhere(mlflow_services, mlflow_env, tmp_path, caplog, capfd):
    from mlflow.tracking import MlflowClient

    from sibeatgan.config import StudentConfig, TrackingConfig, TuneConfig
    from sibeatgan.steps.tune import run_tune
    from sibeatgan.train.teacher import run_train_teacher
    from tests.test_teacher import small_config, synthetic_dataset

    pg = mlflow_services.pg
    subprocess.run(pg._as_owner(str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "optuna_sentinel"),
                   check=True, capture_output=True)
    # The server trusts local connections, so the URL's password is carried everywhere but checked nowhere: a real
    # PostgreSQL storage with a password in its URL, exactly as the cluster's secret gives it.
    storage = pg.url("optuna_sentinel").replace("postgres@", f"postgres:{SENTINEL}@")
    dataset = synthetic_dataset(tmp_path / "beats", n_normal=400, n_per_class=20, length=64)
    run_train_teacher(small_config(epochs=1, max_train_beats=128, batch_size=32), dataset, tmp_path / "teacher")
    experiment = "secrets-sentinel"
    tune = TuneConfig(n_trials=2, group_size=2, heartbeat_s=1, grace_s=30, storage=storage, study_name="sentinel")
    student = StudentConfig(nz=16, ngf=8, ndf=8, epochs=1, batch_size=32, max_train_beats=128, eval_batch_size=256, device="cpu", seed=3)
    caplog.set_level(logging.DEBUG)
    summary = run_tune(tune, student, dataset, tmp_path / "teacher", tmp_path / "tune",
                       tracking=TrackingConfig(tracking_uri=mlflow_env.url, experiment=experiment))
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 2

    client = MlflowClient(mlflow_env.url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("optuna.study") == "sentinel"]
    # the storage was logged, as it should be (which database the study lives in), with its password masked
    assert parent.data.params["tune.storage"] == storage.replace(SENTINEL, "***")
    assert len(runs) == 3, "the study's run and one child run per trial"
    found, searched = _grep_mlflow(client, [exp.experiment_id], tmp_path / "artifacts")
    assert searched > 20 and not found, found
    out, err = capfd.readouterr()
    lines = [r.getMessage() for r in caplog.records] + out.splitlines() + err.splitlines()
    assert lines and not [line for line in lines if SENTINEL in line]
    local_logs = [p for p in (tmp_path / "tune").rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl", ".txt")]
    assert local_logs, "the tracking journals"
    assert not [str(p) for p in local_logs if SENTINEL.encode() in p.read_bytes()]


def test_the_mlflow_user_script_names_its_missing_secrets_in_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    env.update(MLFLOW_TRACKING_URI="http://127.0.0.1:1", MLFLOW_TRACKING_USERNAME="admin")
    proc = subprocess.run([sys.executable, str(ROOT / "infra" / "base" / "mlflow-users.py")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("mlflow-users: missing environment variable(s) MLFLOW_TRACKING_PASSWORD, "
                                   "PIPELINE_USERNAME, PIPELINE_PASSWORD")


def test_half_a_credential_pair_is_named_before_any_request(tmp_path, monkeypatch):
    from sibeatgan.config import TrackingConfig
    from sibeatgan.errors import ConfigError
    from sibeatgan.tracking import step_tracker

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sibeatgan-pipeline")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match=r"MLFLOW_TRACKING_PASSWORD is not set, MLFLOW_TRACKING_USERNAME is") as err:
        step_tracker(TrackingConfig(tracking_uri="http://127.0.0.1:1"), tmp_path / "step", "check")
    assert len(str(err.value).splitlines()) == 1
    # no HTTP server, no credentials to check
    step_tracker(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"), tmp_path / "local", "check").finish()


def test_a_server_that_refuses_the_credentials_fails_the_step_at_its_start(mlflow_server, tmp_path, monkeypatch):
    """A missing or wrong secret is not a server that is away: the step stops at once and says which, in one line."""
    from sibeatgan.config import TrackingConfig
    from sibeatgan.errors import ConfigError
    from sibeatgan.tracking import step_tracker

    config = TrackingConfig(tracking_uri=mlflow_server.url, experiment="secrets-refusal")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="refused no credentials: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are not set"):
        step_tracker(config, tmp_path / "none", "check")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SENTINEL)
    with pytest.raises(ConfigError, match=r"refused user 'admin' .* with HTTP 401") as err:
        step_tracker(config, tmp_path / "wrong", "check")
    assert SENTINEL not in str(err.value) and len(str(err.value).splitlines()) == 1
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_server.admin_password)
    tracker = step_tracker(config, tmp_path / "right", "check")
    assert tracker.run_id and tracker.finish()
