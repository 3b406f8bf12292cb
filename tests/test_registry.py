"""Registry on a real server (PostgreSQL, S3 on moto, basic-auth): register, the promotion gate, rollback,
the audit trail, a promotion race and permissions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from sibeatgan.config import TrackingConfig
from sibeatgan.registry import PromotionBusy, PromotionRefused, RegistryError, history, promote, rollback, run_register

pytest_plugins = ["tests.services"]

NAME = "si-beatgan-test"


def _register(teacher: dict, out: Path, name: str = NAME) -> dict:
    return run_register(TrackingConfig(model_name=name, n_bootstrap=200), teacher["generator"], teacher["eval"], teacher["dataset"], out)


def _alias(name: str, alias: str) -> int | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return int(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def test_register_gate_promote_rollback_and_audit(mlflow_env, small_teacher: dict, untrained_teacher: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from sibeatgan.cli import app

    v1 = _register(small_teacher, tmp_path / "r1")
    client = MlflowClient()
    mv = client.get_model_version(NAME, str(v1["version"]))
    assert mv.aliases == ["staging"]
    for tag in ("auc", "auc_ci", "ap_ci", "protocol", "dataset_hash", "split_hash", "validation"):
        assert mv.tags[tag], tag
    arts = {a.path for a in client.list_artifacts(v1["run_id"], "evaluation")}
    assert {"evaluation/scores.npz", "evaluation/lineage.json", "evaluation/evaluation.json"} <= arts
    plots = {a.path for a in client.list_artifacts(v1["run_id"], "plots")}
    assert {"plots/roc.png", "plots/pr.png", "plots/hist.png", "plots/reconstructions.png"} <= plots
    assert {a.path for a in client.list_artifacts(v1["run_id"], "dataset")} == {"dataset/manifest.json"}

    assert promote(NAME)["moved"]  # no production model yet
    assert _alias(NAME, "production") == v1["version"]

    v2 = _register(untrained_teacher, tmp_path / "r2")  # the same architecture, untrained: worse on the same beats
    with pytest.raises(PromotionRefused, match="worse") as refused:
        promote(NAME, n_bootstrap=200)
    assert f"version {v1['version']}" in str(refused.value) and f"version {v2['version']}" in str(refused.value)
    assert _alias(NAME, "production") == v1["version"]
    result = CliRunner().invoke(app, ["promote", "--name", NAME, "--from", "staging", "--to", "production"])
    assert result.exit_code == 1 and "AUC" in result.output

    result = CliRunner().invoke(app, [  # as good as production (the same scores): allowed
        "register", "-g", str(small_teacher["generator"]), "-e", str(small_teacher["eval"]), "-d", str(small_teacher["dataset"]),
        "-o", str(tmp_path / "r3"), "--set", f"model_name={NAME}"])
    assert result.exit_code == 0, result.output
    v3 = json.loads(result.stdout.strip().splitlines()[-1])
    assert v3["version"] == v2["version"] + 1 and _alias(NAME, "staging") == v3["version"]
    assert promote(NAME, n_bootstrap=100)["replaced"] == v1["version"]
    assert (_alias(NAME, "production"), _alias(NAME, "previous")) == (v3["version"], v1["version"])

    result = CliRunner().invoke(app, ["promote", "--name", NAME, "--rollback"])
    assert result.exit_code == 0, result.output
    assert (_alias(NAME, "production"), _alias(NAME, "previous")) == (v1["version"], v3["version"])

    trail = history(NAME)
    assert [(r["action"], r["version"], r["replaced"]) for r in trail] == [
        ("promote", v1["version"], None), ("promote", v3["version"], v1["version"]), ("rollback", v1["version"], v3["version"])]
    assert [r["generation"] for r in trail] == [1, 2, 3] and all(r["who"] == "admin" and r["when"] for r in trail)
    assert trail[1]["comparison"]["delta_auc"] == 0

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@production")
    from sibeatgan.data.artifact import load

    beats = load(small_teacher["dataset"]).float_beats(np.arange(5)).reshape(5, -1).astype(np.float64)
    assert len(model.predict(beats)) == 5


def test_promotion_race_one_wins(mlflow_env, small_teacher: dict, tmp_path: Path) -> None:
    name = NAME + "-race"
    v1 = _register(small_teacher, tmp_path / "r1", name)
    barrier = threading.Barrier(2, timeout=60)
    outcomes: list = []

    def attempt() -> None:
        try:
            outcomes.append(promote(name, n_bootstrap=50, lock_settle_s=4.0, on_decided=lambda record: barrier.wait()))
        except Exception as err:  # noqa: BLE001 - any other error shows in the assertion below
            outcomes.append(err)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wins = [o for o in outcomes if isinstance(o, dict)]
    refusals = [o for o in outcomes if isinstance(o, PromotionRefused)]
    assert len(wins) == 1 and len(refusals) == 1, outcomes
    assert isinstance(refusals[0], PromotionBusy) and ("won" in str(refusals[0]) or "in progress" in str(refusals[0]))
    assert _alias(name, "production") == v1["version"]
    trail = history(name)
    assert len(trail) == 1 and trail[0]["generation"] == 1 and trail[0]["version"] == v1["version"]


def test_a_lost_insert_race_on_the_lock_tag_is_busy_not_a_server_error() -> None:
    """Two promotions that both see the lock free insert its tag at once; PostgreSQL keeps one and refuses the other's
    insert with a unique violation (seen in CI). The loser must hear PromotionBusy, nothing moved, not a server error."""
    from mlflow.exceptions import MlflowException

    from sibeatgan.registry import _acquire

    class Store:
        def __init__(self, message: str) -> None:
            self.message = message

        def get_registered_model(self, name: str):
            return type("Model", (), {"tags": {}})()

        def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
            raise MlflowException(self.message)

    lost = ('(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "registered_model_tag_pk"')
    with pytest.raises(PromotionBusy, match="at the same moment"):
        _acquire(Store(lost), "m", "production", ttl_s=60, settle_s=0.1)
    with pytest.raises(MlflowException, match="permission"):  # any other failure is not a lost race
        _acquire(Store("PERMISSION_DENIED: permission denied"), "m", "production", ttl_s=60, settle_s=0.1)


def test_user_without_permission_cannot_move_production(mlflow_env, small_teacher: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    name = NAME + "-perm"
    v1 = _register(small_teacher, tmp_path / "r1", name)
    mlflow_env.create_user("bob", "bob-password-1234")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-password-1234")
    with pytest.raises(RegistryError, match="'bob' may not move"):
        promote(name, n_bootstrap=50)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_env.admin_password)
    assert _alias(name, "production") is None
    assert not [m for m in MlflowClient().search_registered_models(f"name LIKE '{name}.promotions.%'")]  # the lock was released
    assert promote(name, n_bootstrap=50)["version"] == v1["version"]  # the admin may


def test_upload_refused_by_s3_is_a_clear_error_with_local_copy(mlflow_services, mlflow_env, small_teacher: dict,
                                                               tmp_path: Path) -> None:
    from tests.services import BUCKET

    s3 = mlflow_services.moto.s3()
    saved = {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
             for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    for key in saved:
        s3.delete_object(Bucket=BUCKET, Key=key)
    s3.delete_bucket(Bucket=BUCKET)
    try:
        with pytest.raises(RegistryError, match="could not be uploaded.*local copy"):
            run_register(TrackingConfig(model_name=NAME + "-s3", retries=1), small_teacher["generator"], small_teacher["eval"],
                         small_teacher["dataset"], tmp_path / "r")
    finally:
        s3.create_bucket(Bucket=BUCKET)
        for key, body in saved.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    assert (tmp_path / "r" / "model" / "MLmodel").is_file() and (tmp_path / "r" / "scores.npz").is_file()
