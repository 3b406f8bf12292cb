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
    assert {p.name for p in sig.params.params} == {"input", "threshold", "fs", "positions"}
    assert sig.inputs is None  # the model checks its input itself: MLflow's schemas refuse float32 or drop columns
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


# --- issue 15: what a user passes is scored as documented, or refused in one line; never a silent wrong answer ---


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_documented_inputs_pass_the_model_signature(logged_model: tuple, small_teacher: dict, synth_db: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 arrays and DataFrames of numeric columns (windows, or one column per lead) go through MLflow's input
    checks and score as float64 does (MLflow's tensor schema refused them before)."""
    import mlflow.pyfunc
    import pandas as pd

    from sibeatgan.data.records import read_record

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    model = mlflow.pyfunc.load_model(logged_model[1])
    ds, _ = _dataset_scores(small_teacher)
    windows = ds.float_beats(np.arange(40)).reshape(40, -1).astype(np.float64)
    want = model.predict(windows)["score"].to_numpy()
    np.testing.assert_allclose(model.predict(windows.astype(np.float32))["score"], want, rtol=1e-6)
    np.testing.assert_allclose(model.predict(pd.DataFrame(windows))["score"], want, rtol=1e-6)
    ecg = read_record(synth_db, str(ds.records[0])).signal
    base = model.predict(ecg)
    for variant in (ecg.astype(np.float32), pd.DataFrame(ecg, columns=["MLII", "V5"]), pd.DataFrame(ecg.astype(np.float32))):
        got = model.predict(variant)
        assert (got["position"].to_numpy() == base["position"].to_numpy()).all()
        np.testing.assert_allclose(got["score"], base["score"], rtol=1e-3)  # float32 samples: the same beats, scores within 0.1%


def test_bad_input_is_refused_in_one_line_naming_it(logged_model: tuple, small_teacher: dict, synth_db: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty, non-numeric, NaN/inf, too short or flat input, and a NaN threshold: an error naming the problem, never
    0 rows or `anomalous=False` in silence (the cases of issue 15)."""
    import mlflow.pyfunc
    import pandas as pd

    from sibeatgan.data.records import read_record

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    model = mlflow.pyfunc.load_model(logged_model[1])
    ds, _ = _dataset_scores(small_teacher)
    ecg = read_record(synth_db, str(ds.records[0])).signal[: 60 * 360]
    assert len(model.predict(ecg)) > 30
    with pytest.raises(Exception, match="too short to hold a beat") as err:
        model.predict(np.zeros((0, 2)))  # was: ValueError ... padlen, which is 327
    _one_line(err)
    with pytest.raises(Exception, match=r"no beat detected in 360 samples|too short") as err:
        model.predict(ecg[:360])  # one second: was 0 rows
    _one_line(err)
    with pytest.raises(Exception, match="flat") as err:
        model.predict(np.full((60 * 360, 2), 0.3))  # was 0 rows
    _one_line(err)
    bad = ecg.copy()
    bad[1000, 0] = np.nan
    with pytest.raises(Exception, match=r"1 NaN or inf value\(s\), the first at row 1000, column 0") as err:
        model.predict(bad)  # was 0 rows
    _one_line(err)
    bad[1000, 0] = np.inf
    with pytest.raises(Exception, match="NaN or inf"):
        model.predict(bad)
    windows = ds.float_beats(np.arange(3)).reshape(3, -1).astype(np.float64)
    windows[1, 5] = np.nan
    with pytest.raises(Exception, match=r"beat windows holds 1 NaN or inf value\(s\), the first at row 1"):
        model.predict(windows)  # was: a NaN score, anomalous=False
    with pytest.raises(Exception, match="threshold nan is not a finite number") as err:
        model.predict(ecg, params={"threshold": float("nan")})  # was: every beat normal
    _one_line(err)
    frame = pd.DataFrame(ecg, columns=["MLII", "V5"]).assign(V5="x")
    with pytest.raises(Exception, match="input column 'V5' holds .*, not numbers") as err:
        model.predict(frame)
    _one_line(err)
    with pytest.raises(Exception, match=r"2-D .* got shape \(320,\)"):
        model.predict(np.zeros(320))
    with pytest.raises(Exception, match="positions apply to raw ECG"):
        model.predict(windows[:1] * 0, params={"positions": [1, 2]})
    assert len(model.predict(np.zeros((0, 320)))) == 0  # no windows in, no rows out: an answer, not a failure


def test_positions_give_exactly_the_evaluated_beats_and_scores(logged_model: tuple, small_teacher: dict, synth_db: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With the annotation positions as input the served model scores the evaluated beats, every one of them, exactly
    (without them it centres windows on detected R peaks, which the test above only matches where they coincide)."""
    import mlflow.pyfunc

    from sibeatgan.data.records import read_record

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    model = mlflow.pyfunc.load_model(logged_model[1])
    ds, expected = _dataset_scores(small_teacher)
    name = str(ds.records[0])
    mine = ds.records == name
    out = model.predict(read_record(synth_db, name).signal, params={"positions": ds.samples[mine].tolist()})
    assert out["position"].tolist() == ds.samples[mine].tolist()
    np.testing.assert_allclose(out["score"].to_numpy(), expected[mine], rtol=1e-6)


def test_another_sampling_rate_is_resampled_not_scored_as_360(logged_model: tuple, small_teacher: dict, synth_db: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ECG recorded at 250 Hz with params fs=250 is resampled to the model's 360 Hz: the beats are found where the
    annotations are (positions in the input's 250 Hz samples), as many as at 360 Hz."""
    import mlflow.pyfunc
    from scipy.signal import resample_poly

    from sibeatgan.data.records import read_record

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model[0])
    model = mlflow.pyfunc.load_model(logged_model[1])
    ds, _ = _dataset_scores(small_teacher)
    rec = read_record(synth_db, str(ds.records[0]))
    at250 = resample_poly(rec.signal, 25, 36, axis=0)
    base = model.predict(rec.signal)
    got = model.predict(at250, params={"fs": 250.0})
    assert abs(len(got) - len(base)) <= 2
    ann = np.rint(rec.ann_samples * 250 / 360)
    near = np.abs(got["position"].to_numpy()[:, None] - ann[None]).min(axis=1) <= 3
    assert near.mean() > 0.9
    with pytest.raises(Exception, match="sampling rate fs"):
        model.predict(at250, params={"fs": float("nan")})


def test_a_broken_model_is_an_error_not_a_verdict(small_teacher: dict, tmp_path: Path) -> None:
    """A generator whose weights hold NaN scores NaN: that is an error, never `anomalous=False`."""
    import torch

    from sibeatgan.errors import CheckpointError
    from sibeatgan.modelio import load_generator
    from sibeatgan.pyfunc import BeatScorer, preprocess_settings

    gen, _ = load_generator(small_teacher["generator"])
    with torch.no_grad():
        next(gen.parameters()).fill_(float("nan"))
    scorer = BeatScorer(gen, 0.05, preprocess_settings(small_teacher["dataset"]))
    ds, _ = _dataset_scores(small_teacher)
    with pytest.raises(CheckpointError, match=r"non-finite score"):
        scorer.predict(ds.float_beats(np.arange(4)).reshape(4, -1))
    with pytest.raises(Exception, match="not a finite number"):
        BeatScorer(gen, float("nan"), preprocess_settings(small_teacher["dataset"]))
