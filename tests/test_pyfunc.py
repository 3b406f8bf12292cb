"""The pyfunc model and `sibeatgan score`: the same scores as evaluate on the same beats, from windows or raw ECG."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["tests.services"]


@pytest.fixture(scope="module")
def logged_model(small_teacher: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The small teacher logged as a pyfunc to a local SQLite store; its runs:/ URI."""
    from sibeatgan.pyfunc import log_model
    from sibeatgan.tracking import Tracker

    root = tmp_path_factory.mktemp("pyfunc")
    tracker = Tracker(root / "tracking", f"sqlite:///{root / 'mlruns.db'}", "pyfunc").start()
    uri = log_model(tracker, small_teacher["generator"], small_teacher["dataset"], root / "model", threshold=0.05)
    assert tracker.finish()
    return f"sqlite:///{root / 'mlruns.db'}", uri


def _dataset_scores(small_teacher: dict) -> tuple:
    from sibeatgan.data.artifact import load
    from sibeatgan.metrics import score
    from sibeatgan.modelio import load_generator

    ds = load(small_teacher["dataset"])
    gen, _ = load_generator(small_teacher["generator"])
    return ds, score(gen, ds.float_beats(), 1024, "cpu")


def test_model_has_signature_and_scores_windows_like_evaluate(logged_model: tuple, small_teacher: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    model = mlflow.pyfunc.load_model(logged_model[1])
    sig = model.metadata.signature
    assert [c.name for c in sig.outputs.inputs] == ["beat", "position", "score", "anomalous"]
    assert {p.name for p in sig.params.params} == {"input", "threshold"}
    assert model.metadata.saved_input_example_info is not None
    ds, expected = _dataset_scores(small_teacher)
    pick = np.arange(0, len(ds), max(1, len(ds) // 300))
    windows = ds.float_beats(pick).reshape(len(pick), -1).astype(np.float64)  # the signature takes float64
    got = model.predict(windows)
    np.testing.assert_allclose(got["score"].to_numpy(), expected[pick], rtol=1e-6, atol=1e-9)  # the same beats: float32 equal
    assert (got["position"] == -1).all()
    assert (got["anomalous"] == (got["score"] >= 0.05)).all()
    stricter = model.predict(windows, params={"threshold": 1e9})
    assert not stricter["anomalous"].any()


def test_raw_ecg_gives_the_dataset_beats_scores(logged_model: tuple, small_teacher: dict, synth_db: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw record through the model (R peaks detected inside) scores its beats exactly as evaluate does the
    preprocessed beats at the same positions (the same filter, windows, scaling and int16 quantization)."""
    import mlflow.pyfunc

    from sibeatgan.data.records import read_record

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    ds, expected = _dataset_scores(small_teacher)
    name = str(ds.records[0])
    rec = read_record(synth_db, name)
    out = mlflow.pyfunc.load_model(logged_model[1]).predict(rec.signal)
    mine = ds.records == name
    at = {int(p): s for p, s in zip(ds.samples[mine], expected[mine])}
    matched = [(at[p], s) for p, s in zip(out["position"], out["score"]) if p in at]
    assert len(matched) > 0.8 * mine.sum()  # detected peaks land on annotated beats (the others lie elsewhere)
    a, b = np.array(matched).T
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_score_cli_writes_table_and_plot(logged_model: tuple, small_teacher: dict, synth_db: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sibeatgan.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    ds, expected = _dataset_scores(small_teacher)
    name = str(ds.records[0])
    result = CliRunner().invoke(app, ["score", str(synth_db / name), "--model", logged_model[1], "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "a" / "scores.csv").open()))
    by_pos = {int(r["position"]): float(r["score"]) for r in rows}
    mine = ds.records == name
    np.testing.assert_allclose([by_pos[int(p)] for p in ds.samples[mine]], expected[mine], rtol=1e-4)  # 6 significant digits
    assert {r["symbol"] for r in rows} >= {"N"}
    assert (tmp_path / "a" / "scores.png").stat().st_size > 20_000

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in synth_db.glob(f"{name}.*"):
        if f.suffix != ".atr":
            shutil.copy(f, bare / f.name)
    result = CliRunner().invoke(app, ["score", str(bare / f"{name}.hea"), "--model", logged_model[1], "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    rows_b = list(csv.DictReader((tmp_path / "b" / "scores.csv").open()))
    assert len(rows_b) > 0.8 * len(rows) and all(r["symbol"] == "" for r in rows_b)


def test_bad_input_is_a_clear_error(logged_model: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    from sibeatgan.errors import ConfigError
    from sibeatgan.pyfunc import load_scorer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    scorer = load_scorer(logged_model[1])
    with pytest.raises(ConfigError, match="input kind"):
        scorer.predict(np.zeros((3, 320)), kind="spectrogram")
    with pytest.raises(ConfigError, match="2-D"):
        scorer.predict(np.zeros(320))
