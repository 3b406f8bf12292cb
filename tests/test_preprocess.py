"""The preprocess step: hand-made WFDB records with known beats, and the full MIT-BIH acceptance counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from sibeatgan.config import PreprocessConfig
from sibeatgan.data import artifact, beats, rpeaks
from sibeatgan.data.preprocess import run_preprocess
from sibeatgan.errors import ConfigError, RecordError, SourceError

MITDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"
needs_mitdb = pytest.mark.skipif(not MITDB.is_dir(), reason=f"real MIT-BIH data not found at {MITDB}")
FS = 360
REF = dict(bandpass_low_hz=3.0, bandpass_high_hz=45.0, bandpass_order=108)  # the reference's filter


def write_record(folder: Path, name: str, ann: list[tuple[int, str]], fs: int = FS, seconds: float = 30.0,
                 sig_names: tuple[str, str] = ("MLII", "V1")) -> np.ndarray:
    """A clean synthetic ECG (R waves every 0.8 s from 0.6 s) and its .atr; returns the true R-peak samples."""
    n = int(fs * seconds)
    peaks = np.arange(int(0.6 * fs), n - int(0.3 * fs), int(0.8 * fs))
    i = np.arange(n)[None, :]
    x = 0.02 * np.random.default_rng(0).standard_normal(n)
    x += np.exp(-0.5 * ((i - peaks[:, None]) / (0.010 * fs)) ** 2).sum(axis=0)
    x += 0.25 * np.exp(-0.5 * ((i - peaks[:, None] - 0.25 * fs) / (0.04 * fs)) ** 2).sum(axis=0)
    lead = {"MLII": x, "V1": -0.5 * x + 0.1, "V5": -0.7 * x}
    sig = np.column_stack([lead[s] for s in sig_names])
    wfdb.wrsamp(name, fs=fs, units=["mV", "mV"], sig_name=list(sig_names), p_signal=sig, fmt=["212", "212"],
                adc_gain=[200, 200], baseline=[1024, 1024], write_dir=str(folder))
    samples, symbols = zip(*sorted(ann))
    wfdb.wrann(name, "atr", np.array(samples), list(symbols), write_dir=str(folder))
    return peaks


def config(records: tuple[str, ...], **kw) -> PreprocessConfig:
    return PreprocessConfig(records=records, **{**REF, **kw})


@pytest.fixture
def db(tmp_path):
    """Record 900: N on the first 20 true peaks, an N 30 samples off its peak, V/A/e/j/Q/+/~ beats,
    and V beats near the ends whose window just fits or just does not."""
    src = tmp_path / "src"
    src.mkdir()
    n = 30 * FS
    peaks = np.arange(int(0.6 * FS), n - int(0.3 * FS), int(0.8 * FS))
    ann = [(int(p), "N") for p in peaks[:20]]
    ann += [(int(peaks[20]) + 30, "N"), (int(peaks[21]) + 30, "V"), (int(peaks[22]), "A"), (int(peaks[23]), "e"),
            (int(peaks[24]), "j"), (int(peaks[25]), "Q"), (int(peaks[26]) + 5, "+"), (int(peaks[27]) + 5, "~"),
            (n - 181, "V"), (n - 180, "V"), (100, "V")]
    write_record(src, "900", ann)
    return src, peaks


def test_windows_labels_and_rpeak_check(db, tmp_path):
    src, peaks = db
    m = run_preprocess(config(("900",)), src, tmp_path / "out", workers=1)
    ds = artifact.load(tmp_path / "out")
    # 100 - 140 < 0 and (n - 180) + 180 == n leave the signal; n - 181 just fits.
    n = 30 * FS
    assert 100 not in ds.samples and n - 180 not in ds.samples and n - 181 in ds.samples
    assert m["dropped"] == {"window_outside_signal": 2, "normal_without_rpeak": 1}
    assert int(peaks[20]) + 30 not in ds.samples  # normal beat 30 samples from the R peak: dropped
    assert int(peaks[21]) + 30 in ds.samples  # a V beat is never R-peak checked
    assert m["counts"] == {"N": 20, "S": 3, "V": 2, "F": 0, "Q": 1}  # S = A, e, j under BeatGAN's grouping
    assert ds.beats.shape == (26, 1, 320) and ds.beats.dtype == np.int16
    assert "".join(map(chr, ds.symbols[ds.labels == 1])) == "Aej"
    assert list(np.unique(ds.records)) == ["900"]
    assert np.all(np.diff(ds.samples) > 0)


def test_each_beat_spans_minus_one_to_one(db, tmp_path):
    src, _ = db
    run_preprocess(config(("900",)), src, tmp_path / "out", workers=1)
    x = artifact.load(tmp_path / "out").float_beats()
    np.testing.assert_array_equal(x.min(axis=-1), -1.0)
    np.testing.assert_array_equal(x.max(axis=-1), 1.0)


def test_aami_grouping_moves_e_and_j_to_normal(db, tmp_path):
    src, _ = db
    m = run_preprocess(config(("900",), grouping="aami"), src, tmp_path / "out", workers=1)
    assert m["counts"] == {"N": 22, "S": 1, "V": 2, "F": 0, "Q": 1}
    assert m["grouping"]["name"] == "aami" and m["grouping"]["N"] == "NLRej"


def test_label_symbols_groupings():
    sym = np.array(["N", "L", "R", "A", "a", "J", "S", "e", "j", "V", "E", "F", "/", "f", "Q", "+", "~", "|", "x"])
    assert beats.label_symbols(sym, "beatgan").tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 4, 4, -1, -1, -1, -1]
    assert beats.label_symbols(sym, "aami").tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 2, 2, 3, 4, 4, 4, -1, -1, -1, -1]
    with pytest.raises(ConfigError, match="grouping"):
        beats.label_symbols(sym, "mine")


def test_array_helpers():
    assert beats.window_fits(np.array([139, 140, 819, 820]), 1000, 140, 180).tolist() == [False, True, True, False]
    assert beats.nearest_distance(np.array([0, 5, 12, 100]), np.array([4, 10, 20])).tolist() == [4, 1, 2, 80]
    assert (beats.nearest_distance(np.array([3]), np.array([], dtype=int)) > 10**9).all()
    w = np.array([[[1.0, 1.0, 1.0], [0.0, 2.0, 4.0]]])
    np.testing.assert_array_equal(beats.minmax_scale(w), [[[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]]])
    sig = np.arange(20.0).reshape(10, 2)
    np.testing.assert_array_equal(beats.cut_windows(sig, np.array([3]), 2, 1), [[[2.0, 4.0, 6.0], [3.0, 5.0, 7.0]]])
    assert beats.symbol_codes(np.array(["N", "/", "V"])).tolist() == [78, 47, 86]


def test_other_sampling_rate_is_refused_or_resampled(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    n = 30 * 250
    pk = np.arange(int(0.6 * 250), n - int(0.3 * 250), 200)
    write_record(src, "901", [(int(p), "N") for p in pk[1:-1]], fs=250)
    with pytest.raises(RecordError, match=r"record 901: sampling rate is 250 Hz, the configuration expects 360 Hz"):
        run_preprocess(config(("901",)), src, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
    m = run_preprocess(config(("901",), on_other_fs="resample"), src, tmp_path / "out", workers=1)
    assert m["resampled"] == {"901": 250.0} and m["length"] == 320
    assert m["counts"]["N"] == len(pk) - 2


def test_missing_record_is_named(db, tmp_path):
    src, _ = db
    with pytest.raises(RecordError, match=r"record 999: is not in .*src \(missing: 999\)"):
        run_preprocess(config(("900", "999")), src, tmp_path / "out", workers=1)
    with pytest.raises(SourceError, match="is not a folder"):
        run_preprocess(config(("900",)), tmp_path / "nowhere", tmp_path / "out", workers=1)


def test_broken_record_is_named_from_a_worker_process(db, tmp_path):
    src, _ = db
    shutil.copy(src / "900.hea", src / "902.hea")
    (src / "902.hea").write_text((src / "900.hea").read_text().replace("900.dat", "902.dat"))
    (src / "902.dat").write_bytes((src / "900.dat").read_bytes()[:1000])
    with pytest.raises(RecordError, match=r"record 902: signal file 902.dat is truncated"):
        run_preprocess(config(("900", "902")), src, tmp_path / "out", workers=2)


def test_both_leads_mlii_first(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pk = np.arange(int(0.6 * FS), 30 * FS - int(0.3 * FS), int(0.8 * FS))
    write_record(src, "903", [(int(p), "N") for p in pk[1:-1]], sig_names=("V5", "MLII"))
    write_record(src, "904", [(int(p), "V") for p in pk[1:-1]], sig_names=("MLII", "V1"))
    m = run_preprocess(config(("903", "904"), leads=("all",)), src, tmp_path / "out", workers=1)
    ds = artifact.load(tmp_path / "out")
    assert ds.beats.shape == (2 * (len(pk) - 2), 2, 320) and m["leads"] == 2
    # MLII's R wave points up, V5's and V1's down: lead 0 must be MLII in both records, whatever its column.
    x = ds.float_beats()
    assert (x[:, 0, 140] > 0.95).all() and (x[:, 1, 140] < -0.95).all()
    np.testing.assert_allclose(x[:, 1], -x[:, 0], atol=0.03)  # the other lead is MLII inverted, up to 12-bit steps
    with pytest.raises(RecordError, match=r"record 903: has no lead V1; its leads are V5, MLII"):
        run_preprocess(config(("903",), leads=("MLII", "V1")), src, tmp_path / "out2", workers=1)


def test_same_input_same_content_hash(db, tmp_path):
    src, _ = db
    write_record(src, "905", [(int(p), s) for p, s in zip(np.arange(216, 10000, 288), "NNVNNANNNNNNNNNNNNNNNNNNNNNNNNNNN")])
    a = run_preprocess(config(("900", "905")), src, tmp_path / "a", workers=1)
    b = run_preprocess(config(("900", "905")), src, tmp_path / "b", workers=2)
    assert a["content_hash"] == b["content_hash"]
    assert a["sources"] == b["sources"] and set(a["sources"]) == {f"{r}.{e}" for r in ("900", "905") for e in ("hea", "dat", "atr")}
    c = run_preprocess(config(("900", "905"), seed=1), src, tmp_path / "c", workers=1)
    assert c["content_hash"] != a["content_hash"]  # folds depend on the seed


def test_manifest_and_folds(db, tmp_path):
    src, _ = db
    m = run_preprocess(config(("900",), n_folds=4), src, tmp_path / "out", workers=1)
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["content_hash"] == m["content_hash"]
    for key in ("config", "sources", "grouping", "records", "preprocess_seconds"):
        assert key in on_disk
    assert on_disk["config"]["records"] == ["900"] and on_disk["config"]["bandpass_type"] == "fir"
    ds = artifact.load(tmp_path / "out")
    assert sorted(np.bincount(ds.folds[ds.labels == 0])) == [5, 5, 5, 5]
    assert (ds.folds[ds.labels != 0] == -1).all()


def test_bad_filter_config(db, tmp_path):
    src, _ = db
    with pytest.raises(ConfigError, match="bandpass_low_hz/bandpass_high_hz"):
        run_preprocess(config(("900",), bandpass_high_hz=200.0), src, tmp_path / "out", workers=1)
    m = run_preprocess(config(("900",), bandpass_type="butter", bandpass_low_hz=0.5, bandpass_high_hz=40.0,
                              bandpass_order=2), src,
                       tmp_path / "out", workers=1)
    assert m["config"]["bandpass_type"] == "butter" and m["counts"]["N"] == 20


@needs_mitdb
@pytest.mark.mitdb
@pytest.mark.parametrize("name", ["100", "203"])
def test_fast_rpeaks_equal_biosppy(name):
    from sibeatgan.data.records import read_record

    x = rpeaks.reference_filter(read_record(MITDB, name, annotations=False).lead("MLII"), FS)
    np.testing.assert_array_equal(rpeaks.detect_rpeaks(x, FS, "fast"), rpeaks.detect_rpeaks(x, FS, "biosppy"))


def test_reference_fir_is_biosppys():
    from biosppy.signals import tools

    b, _ = tools.get_filter(ftype="FIR", band="bandpass", order=108, frequency=[3, 45], sampling_rate=360.0)
    np.testing.assert_array_equal(rpeaks.fir_taps(360, 3.0, 45.0, 108), b)


@needs_mitdb
@pytest.mark.mitdb
def test_mitdb_beatgan_counts(mitdb_dataset):
    out, m = mitdb_dataset
    c = m["counts"]
    assert (c["S"], c["V"], c["F"], c["Q"]) == (3026, 7008, 802, 15)
    assert abs(c["N"] - 86717) / 86717 < 0.01
    assert c["N"] == 86897  # biosppy 0.6's filter + Hamilton + correct_rpeaks, |d| < 10 as the reference
    assert len(m["records"]) == 44 and len(m["sources"]) == 132
    assert (out / "beats.npz").stat().st_size < 64 * 2**20
    ds = artifact.load(out)
    # Record 114's MLII is its second column: its beats are cut from that column.
    from sibeatgan.data.records import read_record

    rec = read_record(MITDB, "114")
    k = int(np.flatnonzero(ds.records == "114")[0])
    s = int(ds.samples[k])
    ref = rpeaks.reference_filter(rec.signal[:, 1], FS)[s - 140:s + 180]
    np.testing.assert_allclose(ds.float_beats(k)[0], beats.minmax_scale(ref), atol=1 / 32767)


def test_rpeak_check_uses_mlii_whatever_leads_are_kept(tmp_path):
    """Keeping only a lead with no visible R waves must not drop the normal beats: R peaks come from MLII."""
    src = tmp_path / "src"
    src.mkdir()
    peaks = write_record(src, "905", [(1000, "N")], sig_names=("MLII", "V1"))  # a clean MLII to copy
    mlii = wfdb.rdrecord(str(src / "905")).p_signal[:, 0]
    noise = 0.05 * np.random.default_rng(1).standard_normal(mlii.size)
    wfdb.wrsamp("906", fs=FS, units=["mV", "mV"], sig_name=["MLII", "V2"], p_signal=np.column_stack([mlii, noise]),
                fmt=["212", "212"], adc_gain=[200, 200], baseline=[1024, 1024], write_dir=str(src))
    wfdb.wrann("906", "atr", peaks[1:-1], ["N"] * (len(peaks) - 2), write_dir=str(src))
    kept_mlii = run_preprocess(config(("906",)), src, tmp_path / "a", workers=1)
    kept_v2 = run_preprocess(config(("906",), leads=("V2",)), src, tmp_path / "b", workers=1)
    assert kept_mlii["counts"]["N"] == len(peaks) - 2
    assert kept_v2["counts"]["N"] == kept_mlii["counts"]["N"]
    np.testing.assert_array_equal(artifact.load(tmp_path / "a").samples, artifact.load(tmp_path / "b").samples)


def test_an_unexpected_failure_still_names_its_record(db, tmp_path, monkeypatch):
    src, _ = db

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(beats, "cut_windows", broken)
    with pytest.raises(RecordError, match=r"record 900: preprocessing failed \(ValueError: boom\)"):
        run_preprocess(config(("900",)), src, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
