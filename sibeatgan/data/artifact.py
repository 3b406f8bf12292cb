"""The beat dataset artifact: one compressed `beats.npz` plus `manifest.json`.

Beats are stored as int16 (value * 32767 of the [-1, 1] scaled window), which
keeps the full MIT-BIH set well under 64 MiB so it can travel to a GPU node.
The manifest carries the class counts, the preprocessing config, the source
checksums and a content hash over the arrays.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.errors import DatasetError
from sibeatgan.files import atomic_open, write_json

FORMAT = "sibeatgan-beats"
VERSION = 1
CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
SCALE = 32767.0
ARRAYS = ("beats", "labels", "symbols", "records", "samples", "folds")


@dataclass
class BeatDataset:
    """Beats of shape (n, leads, length) in [-1, 1] as int16, with one row of metadata per beat.

    labels: class index into CLASSES; symbols: the annotation symbol (uint8 code);
    records: record name (str, e.g. '114'); samples: annotation sample in the record;
    folds: BeatGAN fold of each normal beat (0..n_folds-1), -1 for anomalous beats.
    """

    beats: np.ndarray
    labels: np.ndarray
    symbols: np.ndarray
    records: np.ndarray
    samples: np.ndarray
    folds: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def leads(self) -> int:
        return int(self.beats.shape[1])

    @property
    def length(self) -> int:
        return int(self.beats.shape[2])

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.labels.astype(np.int64), minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, found)}

    def float_beats(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """Beats (or a subset) as float32 in [-1, 1]."""
        b = self.beats if index is None else self.beats[index]
        return b.astype(np.float32) / SCALE

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for name in ARRAYS:
            a = np.ascontiguousarray(getattr(self, name))
            h.update(name.encode())
            h.update(str(a.dtype).encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()


def quantize(x: np.ndarray) -> np.ndarray:
    """float beats in [-1, 1] -> int16."""
    return np.clip(np.rint(x * SCALE), -SCALE, SCALE).astype(np.int16)


def save(dataset: BeatDataset, out_dir: str | Path, manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write beats.npz then manifest.json into out_dir (atomically, each via a temp file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(dataset, name) for name in ARRAYS}
    with atomic_open(out / "beats.npz") as fh:
        np.savez_compressed(fh, **arrays)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "n_beats": len(dataset),
        "leads": dataset.leads,
        "length": dataset.length,
        "classes": list(CLASSES),
        "counts": dataset.counts(),
        "content_hash": dataset.content_hash(),
        **dataset.meta,
        **(manifest_extra or {}),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def load(path: str | Path, verify: bool = True) -> BeatDataset:
    """Read a dataset folder written by `save`; `verify` checks the content hash."""
    root = Path(path)
    mpath, bpath = root / "manifest.json", root / "beats.npz"
    for p in (mpath, bpath):
        if not p.is_file():
            raise DatasetError(f"{p} is missing: is {root} a dataset written by `sibeatgan preprocess`?")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{mpath} is not valid JSON: {err}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DatasetError(
            f"{mpath}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    try:
        with np.load(bpath, allow_pickle=False) as npz:
            missing = [n for n in ARRAYS if n not in npz.files]
            if missing:
                raise DatasetError(f"{bpath}: missing array(s) {', '.join(missing)}")
            arrays = {n: npz[n] for n in ARRAYS}
    except DatasetError:
        raise
    except Exception as err:  # zipfile/zlib/ValueError: a truncated or corrupted file
        raise DatasetError(f"{bpath} cannot be read ({type(err).__name__}: {err})") from None
    meta = {k: v for k, v in manifest.items() if k not in ("format", "version", "n_beats", "leads", "length", "classes", "counts", "content_hash")}
    ds = BeatDataset(**arrays, meta=meta)
    if verify and ds.content_hash() != manifest.get("content_hash"):
        raise DatasetError(f"{bpath}: content hash does not match {mpath}; the artifact is corrupted or was edited")
    return ds


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "manifest.json"
    if not p.is_file():
        raise DatasetError(f"{p} is missing")
    return json.loads(p.read_text())
