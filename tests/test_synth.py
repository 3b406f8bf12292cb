"""The synthetic WFDB database: files, headers, annotations, determinism, checksums, beat morphology."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import wfdb

from sibeatgan.config import DS1_RECORDS, DS2_RECORDS, SynthConfig
from sibeatgan.data.sources import OUTPUT_MARKER
from sibeatgan.data.synth import run_synth
from sibeatgan.errors import ConfigError

BEAT_SYMBOLS = {"N", "A", "V", "F", "Q"}
SMALL = SynthConfig(n_records=2, duration_s=60.0, seed=3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "db"
    return out, run_synth(SynthConfig(), out)


def _mlii(db: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = wfdb.rdrecord(str(db / name))
    ann = wfdb.rdann(str(db / name), "atr")
    return rec.p_signal[:, rec.sig_name.index("MLII")], np.asarray(ann.sample), np.asarray(ann.symbol)


def test_files_and_headers_like_mitdb(synth):
    db, summary = synth
    names = summary["records"]
    assert names == ["101", "100", "106", "103", "108", "105"]
    assert (db / "RECORDS").read_text().split() == names
    for name in names:
        for ext in ("hea", "dat", "atr"):
            assert (db / f"{name}.{ext}").is_file()
        rec = wfdb.rdrecord(str(db / name), physical=False)
        assert rec.fs == 360 and rec.sig_len == 300 * 360
        assert rec.sig_name == ["MLII", "V1"]
        assert rec.fmt == ["212", "212"]
        assert rec.adc_gain == [200.0, 200.0] and rec.baseline == [1024, 1024]
        assert -2048 <= rec.d_signal.min() and rec.d_signal.max() <= 2047
    assert not [p for p in db.parent.iterdir() if p.name != "db"], "staging folders left behind"


def test_records_alternate_both_splits():
    from sibeatgan.data.synth import record_names

    names = record_names(44)
    assert names[0::2] == list(DS1_RECORDS) and names[1::2] == list(DS2_RECORDS)


def test_annotations_match_summary_and_config(synth):
    db, summary = synth
    totals: dict[str, int] = {}
    for name in summary["records"]:
        _, samples, symbols = _mlii(db, name)
        assert symbols[0] == "+"
        beats = symbols[1:]
        assert set(beats) <= BEAT_SYMBOLS
        assert np.all(np.diff(samples) > 0)
        counts = {s: int((beats == s).sum()) for s in set(beats)}
        assert counts == summary["counts"][name]
        for s, n in counts.items():
            totals[s] = totals.get(s, 0) + n
    assert totals == summary["totals"]
    assert all(totals.get(s, 0) > 0 for s in BEAT_SYMBOLS), totals
    assert totals["V"] > totals["A"] > totals["F"] > totals["Q"] >= 3
    share = 1 - totals["N"] / sum(totals.values())
    assert share == pytest.approx(SynthConfig().anomaly_fraction, abs=0.01)


def test_anomaly_fraction_is_followed(tmp_path):
    summary = run_synth(SynthConfig(n_records=2, duration_s=120.0, anomaly_fraction=0.2), tmp_path / "db")
    assert summary["anomaly_share"] == pytest.approx(0.2, abs=0.02)
    clean = run_synth(SynthConfig(n_records=1, duration_s=60.0, anomaly_fraction=0.0), tmp_path / "clean")
    assert set(clean["totals"]) == {"N"}


def test_sha256sums_are_correct(synth):
    db, summary = synth
    lines = (db / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ")
        listed[name] = digest
    assert set(listed) == {p.name for p in db.iterdir()} - {"SHA256SUMS", OUTPUT_MARKER}
    assert OUTPUT_MARKER not in summary["files"] and (db / OUTPUT_MARKER).is_file()
    for name, digest in listed.items():
        assert hashlib.sha256((db / name).read_bytes()).hexdigest() == digest, name


def test_deterministic_for_a_seed(tmp_path):
    a = run_synth(SMALL, tmp_path / "a")
    b = run_synth(SMALL, tmp_path / "b")
    assert a["counts"] == b["counts"]
    for name in a["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = SynthConfig(n_records=2, duration_s=60.0, seed=4)
    run_synth(other, tmp_path / "c")
    assert (tmp_path / "c" / "101.dat").read_bytes() != (tmp_path / "a" / "101.dat").read_bytes()


def test_rerun_replaces_out_and_bad_config_keeps_it(tmp_path):
    out = tmp_path / "db"
    out.mkdir()
    run_synth(SMALL, out)
    assert json.loads((out / OUTPUT_MARKER).read_text())["step"] == "synth"
    (out / "stale.txt").write_text("old")
    run_synth(SMALL, out)
    assert not (out / "stale.txt").exists()
    before = (out / "SHA256SUMS").read_text()
    for bad, field in ((SynthConfig(n_records=0), "n_records"), (SynthConfig(n_records=45), "n_records"),
                       (SynthConfig(anomaly_fraction=0.6), "anomaly_fraction"),
                       (SynthConfig(duration_s=2), "duration_s")):
        with pytest.raises(ConfigError, match=field):
            run_synth(bad, out)
    assert (out / "SHA256SUMS").read_text() == before


def test_user_folder_is_never_replaced(tmp_path):
    out = tmp_path / "db"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = rf"^{re.escape(str(out))}: folder is not empty and was not written by sibeatgan"
    with pytest.raises(ConfigError, match=refused):
        run_synth(SMALL, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_record_114_has_mlii_second(tmp_path):
    summary = run_synth(SynthConfig(n_records=11, duration_s=12.0), tmp_path / "db")
    assert summary["records"][10] == "114"
    assert wfdb.rdheader(str(tmp_path / "db" / "114")).sig_name == ["V1", "MLII"]
    assert wfdb.rdheader(str(tmp_path / "db" / "101")).sig_name == ["MLII", "V1"]


def test_premature_timing(synth):
    db, summary = synth
    ratios: dict[str, list[float]] = {"N": [], "A": [], "V": [], "F": []}
    pause: list[float] = []
    for name in summary["records"]:
        _, samples, symbols = _mlii(db, name)
        samples, symbols = samples[1:], symbols[1:]
        rr = np.diff(samples).astype(float)
        local = np.median(rr)
        for i in range(1, len(symbols) - 1):
            if symbols[i] in ratios:
                ratios[symbols[i]].append(rr[i - 1] / local)
            if symbols[i] == "V":
                pause.append((rr[i - 1] + rr[i]) / local)
    med = {k: float(np.median(v)) for k, v in ratios.items()}
    assert med["V"] < 0.75 and med["A"] < 0.75 and 0.8 < med["F"] < 1.0 and 0.9 < med["N"] < 1.1
    assert np.median(pause) == pytest.approx(2.0, abs=0.15)  # compensatory pause after V


def test_anomalies_differ_from_normal_template(synth):
    db, summary = synth
    dist: dict[str, list[float]] = {s: [] for s in BEAT_SYMBOLS}
    for name in summary["records"]:
        x, samples, symbols = _mlii(db, name)
        keep = (samples >= 140) & (samples + 180 <= x.size) & (symbols != "+")
        samples, symbols = samples[keep], symbols[keep]
        windows = x[samples[:, None] + np.arange(-140, 180)[None, :]]
        windows = windows - np.median(windows, axis=1, keepdims=True)
        template = np.median(windows[symbols == "N"], axis=0)
        d = np.sqrt(((windows - template) ** 2).mean(axis=1))
        for s in BEAT_SYMBOLS:
            dist[s].extend(d[symbols == s])
    normal = np.mean(dist["N"])
    for s in ("V", "F", "Q"):
        assert np.mean(dist[s]) > 2.5 * normal, (s, np.mean(dist[s]), normal)
    # A beats share the narrow QRS; they differ by their early, inverted P and shifted T.
    assert np.mean(dist["A"]) > 1.3 * normal, (np.mean(dist["A"]), normal)


def test_biosppy_finds_normal_r_peaks(synth):
    from biosppy.signals import ecg

    db, summary = synth
    hits = total = 0
    for name in summary["records"][:3]:
        x, samples, symbols = _mlii(db, name)
        rpeaks = ecg.ecg(x, sampling_rate=360, show=False, interactive=False)["rpeaks"]
        n = samples[symbols == "N"]
        near = np.abs(n[:, None] - rpeaks[None, :]).min(axis=1) <= 10
        hits += int(near.sum())
        total += n.size
    assert hits / total > 0.97, (hits, total)


def test_preprocess_keeps_normals_and_every_class(synth, tmp_path):
    from sibeatgan.config import PreprocessConfig
    from sibeatgan.data import artifact
    from sibeatgan.data import preprocess as pre

    db, summary = synth
    out = tmp_path / "dataset"
    pre.run_preprocess(PreprocessConfig(records=tuple(summary["records"])), db, out)
    ds = artifact.load(out)
    counts = ds.counts()
    assert counts["N"] >= 0.95 * summary["totals"]["N"], (counts, summary["totals"])
    for cls, sym in (("S", "A"), ("V", "V"), ("F", "F"), ("Q", "Q")):
        assert counts[cls] >= 0.9 * summary["totals"][sym], (cls, counts, summary["totals"])
