"""Reading WFDB records: real MIT-BIH records and damaged copies of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sibeatgan.data.records import list_records, read_header, read_record
from sibeatgan.errors import RecordError, SourceError

MITDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"
pytestmark = pytest.mark.skipif(not MITDB.is_dir(), reason=f"real MIT-BIH data not found at {MITDB}")


def copy_record(tmp_path: Path, name: str = "100") -> Path:
    for ext in ("hea", "dat", "atr"):
        shutil.copy(MITDB / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
        (tmp_path / f"{name}.{ext}").chmod(0o644)
    return tmp_path


def test_reads_record_100():
    rec = read_record(MITDB, "100")
    assert rec.name == "100" and rec.fs == 360.0
    assert rec.sig_names == ["MLII", "V5"]
    assert rec.signal.shape == (650000, 2) and rec.signal.dtype == np.float64 and rec.n_samples == 650000
    # First MLII samples of record 100 (PhysioNet), in mV: raw 995 - baseline 1024, gain 200.
    assert rec.lead("MLII")[0] == pytest.approx(-0.145)
    assert rec.ann_samples.dtype == np.int64 and rec.ann_samples.shape == rec.ann_symbols.shape
    assert rec.ann_samples.size == 2274 and (rec.ann_symbols == "N").sum() == 2239 and (rec.ann_symbols == "A").sum() == 33


def test_lead_by_name_in_record_114():
    rec = read_record(MITDB, "114")
    assert rec.sig_names == ["V5", "MLII"]
    np.testing.assert_array_equal(rec.lead("MLII"), rec.signal[:, 1])
    with pytest.raises(RecordError, match=r"record 114: has no lead 'V1'; its leads are V5, MLII"):
        rec.lead("V1")


def test_without_annotations():
    rec = read_record(MITDB, "100", annotations=False)
    assert rec.ann_samples.size == 0 and rec.signal.shape == (650000, 2)


def test_read_header_is_cheap_and_right():
    h = read_header(MITDB, "114")
    assert (h.fs, h.sig_names, h.n_samples, h.n_sig) == (360.0, ["V5", "MLII"], 650000, 2)


def test_list_records(tmp_path):
    assert len(list_records(MITDB)) == 48 and list_records(MITDB)[:2] == ["100", "101"]
    with pytest.raises(SourceError, match="no WFDB records"):
        list_records(tmp_path)
    with pytest.raises(SourceError, match="is not a folder"):
        list_records(tmp_path / "nope")


def test_missing_header(tmp_path):
    copy_record(tmp_path)
    (tmp_path / "100.hea").unlink()
    with pytest.raises(RecordError, match=r"record 100: header file 100.hea is missing"):
        read_record(tmp_path, "100")


def test_missing_dat(tmp_path):
    copy_record(tmp_path)
    (tmp_path / "100.dat").unlink()
    with pytest.raises(RecordError, match=r"record 100: signal file 100.dat is missing"):
        read_record(tmp_path, "100")


def test_missing_atr(tmp_path):
    copy_record(tmp_path)
    (tmp_path / "100.atr").unlink()
    with pytest.raises(RecordError, match=r"record 100: annotation file 100.atr is missing"):
        read_record(tmp_path, "100")
    assert read_record(tmp_path, "100", annotations=False).n_samples == 650000


def test_truncated_dat_says_expected_and_actual_bytes(tmp_path):
    copy_record(tmp_path)
    dat = tmp_path / "100.dat"
    dat.write_bytes(dat.read_bytes()[:1_000_000])
    with pytest.raises(RecordError, match=r"record 100: signal file 100.dat is truncated: expected 1950000 bytes .* found 1000000"):
        read_record(tmp_path, "100")


@pytest.mark.parametrize(
    "text",
    [
        "100 2 abc 650000\n100.dat 212 200 11 1024 995 -22131 0 MLII\n100.dat 212 200 11 1024 1011 20052 0 V5\n",
        "100 2 360 650000\n100.dat 212 200 11 1024 995 -22131 0 MLII\n",
        "garbage\x00\x01 header\n",
    ],
    ids=["bad-fs", "missing-signal-line", "garbage"],
)
def test_corrupted_header(tmp_path, text):
    copy_record(tmp_path)
    (tmp_path / "100.hea").write_text(text)
    with pytest.raises(RecordError, match=r"record 100: header file 100.hea (cannot be parsed|is invalid)"):
        read_record(tmp_path, "100")


def test_unreadable_annotations(tmp_path):
    copy_record(tmp_path)
    atr = tmp_path / "100.atr"
    atr.write_bytes(b"\xff\xff\xff")
    with pytest.raises(RecordError, match=r"record 100: annotation file 100.atr cannot be read"):
        read_record(tmp_path, "100")


def test_corrupted_dat_with_no_data_samples_is_refused(tmp_path):
    """Garbage bytes inside a .dat decode partly to WFDB's no-data value; the record is refused, not filtered into NaN beats."""
    src = copy_record(tmp_path)
    data = bytearray((src / "100.dat").read_bytes())
    data[300_000:300_003] = bytes([0x00, 0x88, 0x00])  # one format-212 pair (MLII and V5 at sample 100000): both -2048, no data
    (src / "100.dat").write_bytes(bytes(data))
    with pytest.raises(RecordError, match=r"record 100: signal holds 2 invalid sample\(s\) .* the first at sample 100000 of lead MLII: 100.dat is corrupted"):
        read_record(src, "100")


def test_annotations_beyond_the_signal_are_refused(tmp_path):
    import wfdb

    src = copy_record(tmp_path)
    wfdb.wrann("100", "atr", np.array([100, 649_999, 650_500]), ["N", "N", "N"], write_dir=str(src))
    with pytest.raises(RecordError, match=r"record 100: annotations reach sample 650500, beyond the signal's 650000 samples"):
        read_record(src, "100")
