"""Reading WFDB records (signal + beat annotations) with precise errors for every broken file.

`read_record` checks that the header parses and the .dat files hold as many bytes as the header
promises before wfdb reads them, so a truncated download fails with "expected N bytes, found M"
instead of a reshape error deep inside wfdb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from sibeatgan.errors import RecordError, SourceError

# Bytes per sample of the WFDB storage formats (format 212 packs two 12-bit samples in 3 bytes).
BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}


@dataclass
class Record:
    """One record: signal in physical units (n_samples, n_leads) and its annotations."""

    name: str
    fs: float
    sig_names: list[str]
    signal: np.ndarray
    ann_samples: np.ndarray
    ann_symbols: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    def lead(self, name: str) -> np.ndarray:
        """The column of lead `name` (e.g. MLII, which record 114 holds in its second column)."""
        if name not in self.sig_names:
            raise RecordError(self.name, f"has no lead {name!r}; its leads are {', '.join(self.sig_names)}")
        return self.signal[:, self.sig_names.index(name)]


@dataclass(frozen=True)
class Header:
    """What a .hea promises: enough to validate a record without reading its signal."""

    name: str
    fs: float
    sig_names: list[str]
    n_samples: int
    formats: list[str]
    file_names: list[str]
    byte_offsets: list[int]

    @property
    def n_sig(self) -> int:
        return len(self.sig_names)


def list_records(folder: Path) -> list[str]:
    """Sorted names of the records in `folder` (every file with a .hea)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    names = sorted(p.stem for p in folder.glob("*.hea") if p.is_file())
    if not names:
        raise SourceError(f"{folder} holds no WFDB records (no .hea files)")
    return names


def read_header(folder: Path, name: str) -> Header:
    """Parse `name`.hea; RecordError if it is missing or unparseable."""
    folder = Path(folder)
    hea = folder / f"{name}.hea"
    if not hea.is_file():
        raise RecordError(name, f"header file {name}.hea is missing from {folder}")
    try:
        h = wfdb.rdheader(str(folder / name))
    except Exception as err:  # wfdb raises ValueError, IndexError, TypeError... on bad headers
        raise RecordError(name, f"header file {name}.hea cannot be parsed ({type(err).__name__}: {err})") from None
    if getattr(h, "n_seg", None):
        raise RecordError(name, f"is a multi-segment record ({h.n_seg} segments), which is not supported")
    problems = []
    if not h.fs or h.fs <= 0:
        problems.append(f"sampling frequency {h.fs!r}")
    if h.sig_len is None or h.sig_len <= 0:
        problems.append(f"signal length {h.sig_len!r}")
    if not h.n_sig:
        problems.append("no signals")
    elif any(len(getattr(h, f) or []) != h.n_sig for f in ("sig_name", "fmt", "file_name")):
        problems.append(f"{h.n_sig} signals declared but {len(h.sig_name or [])} signal lines")
    if problems:
        raise RecordError(name, f"header file {name}.hea is invalid: {', '.join(problems)}")
    return Header(
        name=name,
        fs=float(h.fs),
        sig_names=list(h.sig_name),
        n_samples=int(h.sig_len),
        formats=[str(f) for f in h.fmt],
        file_names=list(h.file_name),
        byte_offsets=[int(b or 0) for b in (h.byte_offset or [None] * h.n_sig)],
    )


def signal_file_bytes(header: Header) -> dict[str, tuple[int, str]]:
    """Per signal file: (bytes the header promises, a description of why); RecordError on an unknown format."""
    by_file: dict[str, list[int]] = {}
    for i, fname in enumerate(header.file_names):
        by_file.setdefault(fname, []).append(i)
    out = {}
    for fname, idx in by_file.items():
        fmt = header.formats[idx[0]]
        if fmt not in BYTES_PER_SAMPLE:
            raise RecordError(header.name, f"signal file {fname} has unsupported format {fmt}")
        needed = header.byte_offsets[idx[0]] + math.ceil(header.n_samples * len(idx) * BYTES_PER_SAMPLE[fmt])
        out[fname] = (needed, f"{header.n_samples} samples x {len(idx)} signals, format {fmt}")
    return out


def check_signal_files(folder: Path, header: Header) -> None:
    """RecordError if a signal file is missing or holds fewer bytes than the header needs."""
    folder = Path(folder)
    for fname, (needed, why) in signal_file_bytes(header).items():
        path = folder / fname
        if not path.is_file():
            raise RecordError(header.name, f"signal file {fname} is missing from {folder}")
        actual = path.stat().st_size
        if actual < needed:
            raise RecordError(header.name, f"signal file {fname} is truncated: expected {needed} bytes ({why}), found {actual}")


def read_annotations(folder: Path, name: str, extension: str = "atr") -> tuple[np.ndarray, np.ndarray]:
    """Annotation samples (int64) and symbols (str array) of `name`.`extension`."""
    path = Path(folder) / f"{name}.{extension}"
    if not path.is_file():
        raise RecordError(name, f"annotation file {name}.{extension} is missing from {folder}")
    try:
        ann = wfdb.rdann(str(Path(folder) / name), extension)
    except Exception as err:
        raise RecordError(name, f"annotation file {name}.{extension} cannot be read ({type(err).__name__}: {err})") from None
    samples = np.asarray(ann.sample, dtype=np.int64)
    symbols = np.asarray(ann.symbol, dtype=str)
    if samples.shape != symbols.shape:
        raise RecordError(name, f"annotation file {name}.{extension} is inconsistent: {samples.size} samples, {symbols.size} symbols")
    return samples, symbols


def read_record(folder: Path, name: str, annotations: bool = True) -> Record:
    """Read one record (signal in mV and, unless `annotations` is False, its .atr beats)."""
    folder = Path(folder)
    header = read_header(folder, name)
    check_signal_files(folder, header)
    if annotations:
        ann_samples, ann_symbols = read_annotations(folder, name)
    else:
        ann_samples, ann_symbols = np.empty(0, dtype=np.int64), np.empty(0, dtype=str)
    try:
        rec = wfdb.rdrecord(str(folder / name), physical=True)
    except Exception as err:
        raise RecordError(name, f"signal cannot be read ({type(err).__name__}: {err})") from None
    signal = np.asarray(rec.p_signal, dtype=np.float64)
    if signal.shape != (header.n_samples, header.n_sig):
        raise RecordError(name, f"signal has shape {signal.shape}, header promises ({header.n_samples}, {header.n_sig})")
    invalid = ~np.isfinite(signal)
    if invalid.any():
        row, col = np.argwhere(invalid)[0]
        raise RecordError(
            name,
            f"signal holds {int(invalid.sum())} invalid sample(s) (WFDB's no-data value), the first at sample {int(row)} "
            f"of lead {header.sig_names[col]}: {header.file_names[col]} is corrupted or has gaps",
        )
    if ann_samples.size and ann_samples.min() < 0:
        raise RecordError(name, f"annotations include sample {int(ann_samples.min())}, before the signal's start")
    if ann_samples.size and ann_samples.max() >= header.n_samples:
        raise RecordError(name, f"annotations reach sample {int(ann_samples.max())}, beyond the signal's {header.n_samples} samples")
    return Record(
        name=name,
        fs=header.fs,
        sig_names=header.sig_names,
        signal=signal,
        ann_samples=ann_samples,
        ann_symbols=ann_symbols,
    )
