"""The validation gate: good inputs pass, each kind of damage is caught and named, reports always written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sibeatgan.config import BEATGAN_RECORDS, MITDB_RECORDS, ValidateConfig
from sibeatgan.data import artifact
from sibeatgan.data.validation import _exception, count_bounds, run_validate, summarize
from sibeatgan.errors import ConfigError, ValidationFailed
from tests import conftest

RECORDS = ("100", "101", "103")


def make_dataset(n: int = 600, length: int = 320, leads: int = 1, seed: int = 0) -> artifact.BeatDataset:
    """Random beats min-max scaled to [-1, 1] per lead, from RECORDS, with every class present."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, leads, length))
    x = 2 * (x - x.min(-1, keepdims=True)) / (x.max(-1, keepdims=True) - x.min(-1, keepdims=True)) - 1
    labels = np.zeros(n, dtype=np.int8)
    labels[:40] = np.repeat(np.arange(1, 5), 10)
    return conftest.make_dataset(labels, x, records=RECORDS, samples=np.arange(n) * 360 + 1000,
                                 folds=np.where(labels == 0, np.arange(n) % 5, -1))


def save(ds: artifact.BeatDataset, path: Path, records: tuple[str, ...] = RECORDS) -> Path:
    return conftest.save_dataset(ds, path, records=list(records))


def failed(err: pytest.ExceptionInfo[ValidationFailed], out: Path) -> dict[str, dict]:
    """Failed expectations by name, read back from the written validation.json."""
    report = json.loads((out / "validation.json").read_text())
    assert report["success"] is False
    assert report["summary"] == err.value.summary
    return {e["name"]: e for s in report["suites"] for e in s["expectations"] if not e["success"]}


# ---------------------------------------------------------------- beat level


def test_good_dataset_passes_and_reports(tmp_path: Path) -> None:
    ds = make_dataset()
    path = save(ds, tmp_path / "ds")
    counts = ds.counts()
    for config in (ValidateConfig(), ValidateConfig(expected_counts=counts, count_tolerance=0.0)):
        result = run_validate(config, None, path, tmp_path / "out")
        assert result["success"] is True
        assert [s["suite"] for s in result["suites"]] == ["beats", "dataset", "dataset_records"]
        assert all(e["success"] for s in result["suites"] for e in s["expectations"])
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["success"] is True and "expectations passed (all)" in report["summary"]
    by_name = {e["name"]: e for s in report["suites"] for e in s["expectations"]}
    assert by_name["count of V within [10, 10]"]["observed"] == 10
    assert by_name["window length == 320"]["observed"] == 320
    assert by_name["beat minimum is -1 (within quantisation)"]["observed"] == {"min": -1.0, "max": -1.0}
    assert "<h1>Validation: PASSED</h1>" in (tmp_path / "out" / "validation.html").read_text()
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_two_lead_dataset_checks_every_lead(tmp_path: Path) -> None:
    ds = make_dataset(leads=2)
    assert run_validate(ValidateConfig(), None, save(ds, tmp_path / "ok"), tmp_path / "o1")["success"]
    ds.beats[7, 1] = ds.beats[7, 1] // 2  # second lead spans only [-0.5, 0.5]
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, save(ds, tmp_path / "bad"), tmp_path / "o2")
    names = failed(err, tmp_path / "o2")
    assert set(names) == {"every lead reaches -1", "every lead reaches 1"}
    assert names["every lead reaches 1"]["offending"] == [{"record": "101", "sample": 7 * 360 + 1000, "lead_max": pytest.approx(0.5, abs=1e-4)}]


def test_nan_beat_is_named(tmp_path: Path) -> None:
    ds = make_dataset()
    beats = ds.float_beats()
    beats[5, 0, 100] = np.nan
    beats[9, 0, 3] = np.inf
    ds.beats = beats  # a float artifact: the only way NaN can reach the file
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, save(ds, tmp_path / "ds"), tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert names["no NaN/inf"]["unexpected_count"] == 2
    assert [(r["record"], r["sample"]) for r in names["no NaN/inf"]["offending"]] == [("103", 2800), ("100", 4240)]
    assert "beats stored as int16" in names
    assert "beats: no NaN/inf: 2 of 600 beats fail: record 103 sample 2800" in err.value.summary


def test_wrong_window_length_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, save(make_dataset(length=300), tmp_path / "ds"), tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert list(names) == ["window length == 320"]
    assert names["window length == 320"]["observed"] == 300
    assert "window length == 320: failed, observed 300" in err.value.summary


def test_unknown_label_is_named(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.labels[[100, 200]] = 7
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, save(ds, tmp_path / "ds"), tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert list(names) == ["label in N, S, V, F, Q"]
    assert names["label in N, S, V, F, Q"]["offending"] == [
        {"record": "101", "sample": 37000, "label": "7"}, {"record": "103", "sample": 73000, "label": "7"}]
    assert "record 101 sample 37000 (label=7)" in err.value.summary


def test_beat_not_spanning_range_is_named(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.beats[3] = ds.beats[3] // 4
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, save(ds, tmp_path / "ds"), tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert set(names) == {"beat minimum is -1 (within quantisation)", "beat maximum is 1 (within quantisation)"}
    assert names["beat maximum is 1 (within quantisation)"]["offending"][0]["record"] == "100"


def test_counts_out_of_bounds_are_named(tmp_path: Path) -> None:
    ds = make_dataset()
    expected = ds.counts() | {"V": 20, "N": 500}
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(expected_counts=expected, count_tolerance=0.1), None,
                     save(ds, tmp_path / "ds"), tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert set(names) == {"count of V within [18, 22]", "count of N within [450, 550]"}
    assert names["count of N within [450, 550]"]["observed"] == 560
    assert "count of V within [18, 22]: failed, observed 10" in err.value.summary


def test_without_expected_counts_an_anomaly_class_is_required(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.labels[:] = 0
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, save(ds, tmp_path / "ds"), tmp_path / "out")
    assert list(failed(err, tmp_path / "out")) == ["at least one anomalous beat (S, V, F or Q)"]


def test_manifest_records_without_beats_are_named(tmp_path: Path) -> None:
    path = save(make_dataset(), tmp_path / "ds", records=("100", "101", "102", "103", "105"))
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, path, tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert list(names) == ["every manifest record has beats"]
    assert names["every manifest record has beats"]["offending"] == [
        {"record": "102", "n_beats": 0}, {"record": "105", "n_beats": 0}]
    path = save(make_dataset(), tmp_path / "ds2", records=("100", "101"))
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), None, path, tmp_path / "out2")
    assert "record 103 (n_beats=200)" in err.value.summary


def test_unreadable_dataset_still_writes_reports(tmp_path: Path) -> None:
    path = save(make_dataset(), tmp_path / "ds")
    (path / "manifest.json").unlink()
    with pytest.raises(ValidationFailed, match="dataset cannot be loaded: .*manifest.json is missing"):
        run_validate(ValidateConfig(), None, path, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["success"] is False and report["suites"][0]["error"].startswith("dataset cannot be loaded")
    assert "manifest.json is missing" in (tmp_path / "out" / "validation.html").read_text()


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="raw WFDB folder, a dataset folder or both"):
        run_validate(ValidateConfig(), None, None, tmp_path)
    with pytest.raises(ConfigError, match="unknown class.*X"):
        count_bounds(ValidateConfig(expected_counts={"N": 10, "X": 1}))


# ---------------------------------------------------------------- record level


def copy_records(src: Path, dst: Path, names: tuple[str, ...]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        for ext in ("hea", "dat", "atr"):
            shutil.copyfile(src / f"{name}.{ext}", dst / f"{name}.{ext}")
    return dst


def edit_header(folder: Path, name: str, old: str, new: str, count: int = -1) -> None:
    hea = folder / f"{name}.hea"
    text = hea.read_text()
    assert old in text
    hea.write_text(text.replace(old, new, count))


def _fs_250(d: Path) -> None:
    edit_header(d, "100", "100 2 360 650000", "100 2 250 650000")


def _one_lead(d: Path) -> None:
    hea = d / "100.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join(["100 1 360 650000", lines[1]] + lines[3:]) + "\n")


def _no_mlii(d: Path) -> None:
    edit_header(d, "100", " MLII", " ML2")


def _truncated_dat(d: Path) -> None:
    with open(d / "100.dat", "r+b") as fh:
        fh.truncate(1_000_000)


def _garbage_dat(d: Path) -> None:
    with open(d / "100.dat", "r+b") as fh:  # one format-212 pair decoding to WFDB's no-data value, -2048
        fh.seek(300_000)
        fh.write(bytes([0x00, 0x88, 0x00]))


def _missing_dat(d: Path) -> None:
    (d / "100.dat").unlink()


def _missing_atr(d: Path) -> None:
    (d / "100.atr").unlink()


def _empty_atr(d: Path) -> None:
    (d / "100.atr").write_bytes(b"\x00\x00")  # just the end-of-file marker: readable, no annotations


def _garbage_header(d: Path) -> None:
    (d / "100.hea").write_text("this is not a header\n")


DAMAGE = {
    "fs == 360 Hz": (_fs_250, "fs=250.0"),
    "n_leads == 2": (_one_lead, "n_leads=1"),
    "lead MLII present": (_no_mlii, "leads=ML2,V5"),
    "signal files present": (_missing_dat, "signal file 100.dat is missing"),
    ".dat size matches the header": (_truncated_dat, "dat_bytes=1000000, dat_expected_bytes=1950000"),
    "signal decodes (no invalid samples)": (_garbage_dat, "2 invalid sample(s)"),
    "annotations readable": (_missing_atr, "annotation file 100.atr is missing"),
    "annotations non-empty": (_empty_atr, "n_annotations=0"),
    "header readable": (_garbage_header, "header file 100.hea cannot be parsed"),
}


@pytest.mark.mitdb
@pytest.mark.parametrize("expectation", list(DAMAGE))
def test_damaged_record_is_caught_and_named(mitdb_dir: Path, tmp_path: Path, expectation: str) -> None:
    damage, shown = DAMAGE[expectation]
    db = copy_records(mitdb_dir, tmp_path / "db", ("100", "101"))
    damage(db)
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(records=("all",)), db, None, tmp_path / "out")
    names = failed(err, tmp_path / "out")
    assert expectation in names
    if expectation == "n_leads == 2":  # one lead of format 212 also promises half the .dat bytes
        assert set(names) == {expectation, ".dat size matches the header"}
    else:
        assert list(names) == [expectation]
    assert [r["record"] for r in names[expectation]["offending"]] == ["100"]
    line = next(x for x in err.value.summary.splitlines() if expectation in x)
    assert "1 of 2 records fail: record 100" in line and shown in line
    assert "record 100" in (tmp_path / "out" / "validation.html").read_text()


@pytest.mark.mitdb
def test_every_problem_is_reported_not_just_the_first(mitdb_dir: Path, tmp_path: Path) -> None:
    db = copy_records(mitdb_dir, tmp_path / "db", ("100", "101", "103"))
    edit_header(db, "101", "101 2 360 650000", "101 2 250 650000")
    (db / "103.atr").unlink()
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), db, None, tmp_path / "out", records=("100", "101", "103", "999"))
    names = failed(err, tmp_path / "out")
    assert set(names) == {"header readable", "fs == 360 Hz", "annotations readable"}
    assert [r["record"] for r in names["header readable"]["offending"]] == ["999"]
    assert [r["record"] for r in names["fs == 360 Hz"]["offending"]] == ["101"]
    assert [r["record"] for r in names["annotations readable"]["offending"]] == ["103", "999"]
    assert len(err.value.summary.splitlines()) == 4


@pytest.mark.mitdb
def test_real_mitdb_fails_only_on_records_without_mlii(mitdb_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as err:
        run_validate(ValidateConfig(), mitdb_dir, None, tmp_path / "all", records=("all",))
    names = failed(err, tmp_path / "all")
    assert list(names) == ["lead MLII present"]
    assert [r["record"] for r in names["lead MLII present"]["offending"]] == ["102", "104"]
    report = json.loads((tmp_path / "all" / "validation.json").read_text())
    assert report["suites"][0]["rows"] == len(MITDB_RECORDS)
    result = run_validate(ValidateConfig(), mitdb_dir, None, tmp_path / "protocol")  # the 44 protocol records by default
    assert result["inputs"]["records"] == list(BEATGAN_RECORDS)
    assert result["success"] and result["suites"][0]["rows"] == 44


def test_expectation_that_raises_is_reported_as_failed() -> None:
    nested = {"metric-a": {"raised_exception": False, "exception_message": None},
              "metric-b": {"raised_exception": True, "exception_message": "boolean value of NA is ambiguous"}}
    assert _exception(nested) == "boolean value of NA is ambiguous"
    assert _exception({"raised_exception": False, "exception_message": None}) is None
    suites = [{"suite": "records", "error": None, "rows": 2, "row_kind": "record", "expectations": [
        {"name": "fs == 360 Hz", "success": False, "error": "boom", "offending": [], "unexpected_count": 0}]}]
    assert "records: fs == 360 Hz: could not be evaluated: boom" in summarize(suites, {"records": ("record",)})


def test_missing_raw_folder_is_a_failed_suite(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="records: .*nowhere is not a folder"):
        run_validate(ValidateConfig(records=("all",)), tmp_path / "nowhere", None, tmp_path / "out")
    assert (tmp_path / "out" / "validation.html").is_file()


def test_synthetic_database_passes(synth_db: Path, tmp_path: Path) -> None:
    result = run_validate(ValidateConfig(records=("all",)), synth_db, None, tmp_path / "out")
    assert result["success"] and result["suites"][0]["rows"] >= 1


def test_preprocessed_synthetic_dataset_passes(synth_dataset: Path, tmp_path: Path) -> None:
    result = run_validate(ValidateConfig(), None, synth_dataset, tmp_path / "out")
    assert result["success"], result["summary"]
