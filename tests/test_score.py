"""`sibeatgan score` under input that used to give a plausible wrong answer or a traceback (issue 15): another
sampling rate, a record with no beat, a training folder as the model, a file that is not a model."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_cli import sib

pytest_plugins = ["tests.services"]


def _synth(tmp: Path, fs: int) -> Path:
    from sibeatgan.config import SynthConfig
    from sibeatgan.data.synth import run_synth

    run_synth(SynthConfig(n_records=1, duration_s=60, fs=fs, seed=3), tmp / f"at{fs}")
    (header,) = (tmp / f"at{fs}").glob("*.hea")
    return header.with_suffix("")


@pytest.fixture(scope="module")
def model_folder(small_teacher: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The small teacher saved as a pyfunc model folder (what `register` logs), threshold 0.05."""
    from sibeatgan.pyfunc import preprocess_settings, save_model

    path = tmp_path_factory.mktemp("score_model") / "model"
    save_model(path, small_teacher["generator"], preprocess_settings(small_teacher["dataset"]), threshold=0.05)
    return str(path)


def _rows(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "scores.csv").open()))


def _score(*args: str) -> object:
    from sibeatgan.cli import app

    return CliRunner().invoke(app, ["score", *args])


def test_a_250hz_record_is_resampled_and_says_so(model_folder: str, tmp_path: Path) -> None:
    """The same synthetic beats written at 250 Hz and at 360 Hz: the 250 Hz record is resampled to the model's
    360 Hz (summary.json and the log say so), its beats keep their own sample numbers, and they score as at 360 Hz
    (before, they were scored as if 360 Hz: the same beats squeezed into 320 / 360 * 250 samples)."""
    import wfdb

    model = ["--model", model_folder]
    r360 = _score(str(_synth(tmp_path, 360)), *model, "--out", str(tmp_path / "o360"))
    assert r360.exit_code == 0, r360.output
    rec250 = _synth(tmp_path, 250)
    r250 = _score(str(rec250), *model, "--out", str(tmp_path / "o250"))
    assert r250.exit_code == 0, r250.output
    summary = json.loads((tmp_path / "o250" / "summary.json").read_text())
    assert summary["fs"] == 250 and summary["model_fs"] == 360 and summary["resampled"].startswith("250 Hz -> 360 Hz")
    a, b = _rows(tmp_path / "o360"), _rows(tmp_path / "o250")
    assert len(a) == len(b) > 50
    ann = wfdb.rdann(str(rec250), "atr")
    assert {int(r["position"]) for r in b} <= set(ann.sample.tolist())
    assert [r["symbol"] for r in a] == [r["symbol"] for r in b]
    sa, sb = (np.array([float(r["score"]) for r in rows]) for rows in (a, b))
    assert np.median(np.abs(np.log(sb / sa))) < np.log(1.25), (np.median(sa), np.median(sb))


def test_a_record_with_no_beat_to_score_is_an_error(model_folder: str, tmp_path: Path) -> None:
    """A flat minute (no .atr: beats are detected) and a NaN threshold: one line and exit 2, no empty --out left
    (before: exit 0, 0 beats; every beat normal)."""
    import wfdb

    flat = tmp_path / "flat"
    flat.mkdir()
    wfdb.wrsamp("200", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=np.full((360 * 60, 2), 0.25),
                fmt=["212", "212"], write_dir=str(flat))
    model = ["--model", model_folder]
    r = sib("score", str(flat / "200"), *model, "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "no beat detected" in r.stderr and "flat" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    rec = _synth(tmp_path, 360)
    r = _score(str(rec), *model, "--out", str(tmp_path / "nan"), "--threshold", "nan")
    assert r.exit_code != 0 and "--threshold nan is not a finite number" in str(r.exception)


def test_score_takes_a_training_folder(small_teacher: dict, synth_db: Path, tmp_path: Path) -> None:
    """`--model runs/teacher-f0` (a training folder) with the dataset it was trained on gives the logged model's
    scores; without --dataset it says what is missing in one line (before: a 52-line MLflow traceback)."""
    from sibeatgan.data.artifact import load
    from sibeatgan.metrics import score
    from sibeatgan.modelio import load_generator

    ds = load(small_teacher["dataset"])
    name = str(ds.records[0])
    r = sib("score", str(synth_db / name), "--model", str(small_teacher["train"]), "--out", str(tmp_path / "none"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "give --dataset" in r.stderr, r.stderr
    assert [line for line in r.stderr.splitlines() if " INFO " not in line] == [line for line in r.stderr.splitlines()
                                                                                if line.startswith("error:")], r.stderr
    result = _score(str(synth_db / name), "--model", str(small_teacher["train"]), "--dataset", str(small_teacher["dataset"]),
                    "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    gen, _ = load_generator(small_teacher["generator"])
    mine = ds.records == name
    expected = score(gen, ds.float_beats(np.flatnonzero(mine)), 1024, "cpu")
    by_pos = {int(r["position"]): float(r["score"]) for r in _rows(tmp_path / "a")}
    np.testing.assert_allclose([by_pos[int(p)] for p in ds.samples[mine]], expected, rtol=1e-4)


def test_a_file_that_is_not_a_model_is_refused_as_such(small_teacher: dict, synth_db: Path, tmp_path: Path) -> None:
    """manifest.json or a foreign pickle as --model, to evaluate or score: "is not a sibeatgan model file" in one
    line, exit 2; never PyTorch's advice to load it with weights_only=False."""
    manifest = Path(small_teacher["dataset"]) / "manifest.json"
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"x": Path("/")}))
    import torch

    torch.save({"x": Path("/")}, tmp_path / "objects.pt")  # a real torch archive that holds Python objects
    for model in (manifest, foreign, tmp_path / "objects.pt"):
        for args in (["evaluate", "--dataset", str(small_teacher["dataset"]), "--model", str(model), "--out", str(tmp_path / "e"),
                      "--no-track"],
                     ["score", str(synth_db / "100"), "--model", str(model), "--dataset", str(small_teacher["dataset"]),
                      "--out", str(tmp_path / "s")]):
            r = sib(*args)
            assert r.returncode == 2, (args, r.stderr)
            assert f"{model} is not a sibeatgan model file" in r.stderr, r.stderr
            assert "weights_only" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "empty").mkdir()
    r = sib("score", str(synth_db / "100"), "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "neither a logged model folder" in r.stderr, r.stderr
