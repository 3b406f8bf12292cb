"""Bad input and failing infrastructure, as a user meets them on the command line: names that would lead outside the
output folder are refused; a server that is away, refused credentials, an unknown alias or version, an output folder
that is a file, read-only or full: each is one line naming the cause, exit 2 (input) or 3 (infrastructure), no
traceback (unless --debug), and no empty output folder left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from sibeatgan.config import IngestConfig, PreprocessConfig, TrackingConfig, TuneConfig, ValidateConfig, load_config
from sibeatgan.errors import ConfigError

pytest_plugins = ["tests.services"]

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ("nz=16", "ngf=8", "ndf=8", "device=cpu", "cuda_graph=false", "max_train_beats=128", "epochs=1")


def sib(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sibeatgan.cli", *args], env=full, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def one_line_error(r: subprocess.CompletedProcess, code: int) -> str:
    """The command failed with `code` and said why in one `error:` line, with no traceback; returns that line."""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


# -- names that become paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../../../../outside", "a/b", "/abs", "..", ".hidden", "", "x" * 129, "a\nb", "a b"])
def test_names_that_become_paths_are_refused_in_one_line(bad):
    for cls, field in ((TuneConfig, "study_name"), (TrackingConfig, "model_name")):
        with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{field}: .*not a plain name") as err:
            load_config(cls, None, {field: bad})
        assert "\n" not in str(err.value).replace(repr(bad), "")
    for cls in (IngestConfig, PreprocessConfig, ValidateConfig):
        with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.records\[1\]: .*not a plain name"):
            cls(records=("100", bad))


def test_plain_names_still_pass():
    assert TuneConfig(study_name="si-beatgan-student-run_1.2").study_name == "si-beatgan-student-run_1.2"
    assert TrackingConfig(model_name="si-beatgan-test").model_name == "si-beatgan-test"
    assert ValidateConfig(records=("all",)).records == ("all",)


def test_a_study_name_cannot_put_trials_outside_the_output_folder(small_teacher, tmp_path):
    out = tmp_path / "a" / "b" / "tune"
    r = sib("tune", "--dataset", str(small_teacher["dataset"]), "--teacher", str(small_teacher["train"]), "--out", str(out),
            "--trials", "1", "--group-size", "1", "--no-track", "--set", "tune.study_name=../../../outside",
            *[f"--set=student.{s}" for s in STUDENT])
    line = one_line_error(r, 2)
    assert "TuneConfig.study_name" in line and "../../../outside" in line
    assert not (tmp_path / "a" / "outside").exists() and not (tmp_path / "a").exists()  # nothing written, no folder left


# -- infrastructure failures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(mlflow_server) -> str:
    """A registered model with no version at all (so any alias or version of it is unknown)."""
    from mlflow import MlflowClient

    env = mlflow_server.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        MlflowClient(mlflow_server.url).create_registered_model("si-beatgan-inputs")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return "si-beatgan-inputs"


def test_score_with_an_unknown_alias_or_version_says_so_and_leaves_no_folder(mlflow_server, registered, synth_db, tmp_path):
    for uri in (f"models:/{registered}@nope", f"models:/{registered}/7"):
        r = sib("score", str(synth_db / "100"), "--model", uri, "--out", str(tmp_path / "scores"), env=mlflow_server.env())
        line = one_line_error(r, 2)
        assert mlflow_server.url in line and ("nope" in line or "7" in line), line
        assert not (tmp_path / "scores").exists()


def test_wrong_credentials_are_one_line(mlflow_server, registered, synth_db, tmp_path):
    env = {**mlflow_server.env(), "MLFLOW_TRACKING_PASSWORD": "wrong-password"}
    r = sib("score", str(synth_db / "100"), "--model", f"models:/{registered}@production", "--out", str(tmp_path / "s"), env=env)
    line = one_line_error(r, 3)
    assert "refused the credentials" in line and "MLFLOW_TRACKING_PASSWORD" in line and "wrong-password" not in r.stderr
    assert not (tmp_path / "s").exists()


def test_a_server_that_is_away_is_one_line_within_seconds(synth_db, tmp_path):
    from tests.services import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = sib("score", str(synth_db / "100"), "--model", "models:/si-beatgan@production", "--out", str(tmp_path / "s"),
            env={"MLFLOW_TRACKING_URI": dead})
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries (imports alone take seconds on a busy machine)
    line = one_line_error(r, 3)
    assert line == f"error: MLflow at {dead} cannot be reached (connection refused)"
    assert not (tmp_path / "s").exists()
    r = sib("--debug", "score", str(synth_db / "100"), "--model", "models:/si-beatgan@production", "--out", str(tmp_path / "s"),
            env={"MLFLOW_TRACKING_URI": dead})
    assert r.returncode == 3 and "Traceback" in r.stderr and "cannot be reached" in r.stderr  # --debug: the traceback too


def test_an_out_that_is_a_file_is_one_line(synth_db, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = sib("preprocess", "--source", str(synth_db), "--out", str(tmp_path / "file"), "--records", "100", "--no-track", "--no-progress")
    assert one_line_error(r, 3) == f"error: {tmp_path / 'file'} exists and is not a folder"
    r = sib("preprocess", "--source", str(synth_db), "--out", str(tmp_path / "file" / "beats"), "--records", "100", "--no-track",
            "--no-progress")
    assert "a part of the path is a file, not a folder" in one_line_error(r, 3)
    assert (tmp_path / "file").read_text() == "not a folder"


@contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A real small or read-only file system at `path` (needs root; skips otherwise)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_out_is_one_line(synth_db, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = sib("preprocess", "--source", str(synth_db), "--out", str(ro / "beats"), "--records", "100", "--no-track", "--no-progress")
        assert one_line_error(r, 3) == f"error: {ro / 'beats'}: the file system is read-only"


def test_a_full_disk_is_one_line_and_leaves_nothing(synth_db, tmp_path):
    with mounted_tmpfs(tmp_path / "small", "size=64k") as small:
        r = sib("preprocess", "--source", str(synth_db), "--out", str(small / "beats"), "--records", "100,101", "--no-track",
                "--no-progress")
        line = one_line_error(r, 3)
        assert line == f"error: {small / 'beats' / 'beats.npz'}: no space left on the device"
        assert list(small.iterdir()) == []  # no temp file, no empty folder
