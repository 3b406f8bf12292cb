"""Shared fixtures: the real database (read-only), a synthetic database made once per session, and
`make_dataset`, the one builder of hand-made beat datasets (with the dtypes preprocess writes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")



def _find_mitdb() -> Path:
    """$SIBEATGAN_MITDB, else the nearest ../shared/data/mitdb above this checkout (a worktree sits one level deeper)."""
    if os.environ.get("SIBEATGAN_MITDB"):
        return Path(os.environ["SIBEATGAN_MITDB"])
    candidates = [p / "shared" / "data" / "mitdb" for p in Path(__file__).resolve().parents[1:]]
    return next((c for c in candidates if (c / "100.hea").is_file()), candidates[1])


MITDB = _find_mitdb()


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    """../shared/data/mitdb: all 48 MIT-BIH records. Read-only: copy before damaging a file."""
    if not (MITDB / "100.hea").is_file():
        pytest.skip(f"the MIT-BIH database is not at {MITDB}")
    return MITDB


@pytest.fixture(scope="session")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic WFDB database, written once per session (treat as read-only)."""
    from sibeatgan.config import SynthConfig
    from sibeatgan.data.synth import run_synth

    out = tmp_path_factory.mktemp("synth") / "db"
    run_synth(SynthConfig(), out)
    return out


@pytest.fixture(scope="session")
def synth_dataset(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The beat dataset preprocessed from `synth_db` (treat as read-only)."""
    from sibeatgan.config import PreprocessConfig
    from sibeatgan.data.preprocess import run_preprocess
    from sibeatgan.data.records import list_records

    out = tmp_path_factory.mktemp("synth") / "dataset"
    run_preprocess(PreprocessConfig(records=tuple(list_records(synth_db))), synth_db, out)
    return out


@pytest.fixture(scope="session")
def mitdb_dataset(mitdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The full MIT-BIH beat dataset by the BeatGAN protocol and its manifest, built once (treat as read-only)."""
    from sibeatgan.config import PreprocessConfig
    from sibeatgan.data.preprocess import run_preprocess

    out = tmp_path_factory.mktemp("mitdb") / "beats"
    return out, run_preprocess(PreprocessConfig(), mitdb_dir, out)


# The arrays of a beat dataset as `sibeatgan.data.preprocess` writes them (tests/test_fixtures.py checks it).
DTYPES = {"beats": "int16", "labels": "int8", "symbols": "uint8", "records": "<U3", "samples": "int64", "folds": "int8"}


def make_dataset(
    labels: Sequence[int] | np.ndarray,
    beats: np.ndarray | None = None,
    *,
    records: Sequence[str] | np.ndarray = ("100",),
    samples: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    symbols: np.ndarray | None = None,
    length: int = 320,
    leads: int = 1,
    n_folds: int = 5,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> Any:
    """A BeatDataset with production dtypes: beats int16 (float beats in [-1, 1] are quantised), labels int8,
    symbols uint8, records as strings (a short tuple is cycled over the beats), samples int64, folds int8.

    Unset arrays get defaults: uniform random beats, the symbol of each class, samples 300 apart and
    BeatGAN folds (`assign_folds`, as preprocess does).
    """
    from sibeatgan.data import artifact
    from sibeatgan.data.splits import assign_folds

    labels = np.asarray(labels).astype(np.int8)
    n = labels.shape[0]
    if beats is None:
        beats = np.random.default_rng(seed).uniform(-1, 1, size=(n, leads, length))
    beats = np.asarray(beats)
    if np.issubdtype(beats.dtype, np.floating):
        beats = artifact.quantize(beats)
    names = np.asarray([str(r) for r in records])
    if names.shape[0] != n:
        names = names[np.arange(n) % names.shape[0]]
    if symbols is None:
        symbols = np.frombuffer(b"NSVFQ", np.uint8)[np.clip(labels, 0, 4)]
    return artifact.BeatDataset(
        beats=beats,
        labels=labels,
        symbols=np.asarray(symbols).astype(np.uint8),
        records=names.astype(str),
        samples=(np.arange(n) * 300 if samples is None else np.asarray(samples)).astype(np.int64),
        folds=(assign_folds(labels, n_folds, seed) if folds is None else np.asarray(folds)).astype(np.int8),
        meta=dict(meta or {}),
    )


def save_dataset(ds: Any, path: Path, split: bool = True, **manifest_extra: Any) -> Path:
    """Write `ds` with artifact.save (manifest extras as keywords) and, as preprocess does, its default split; return its folder."""
    from sibeatgan.data import artifact
    from sibeatgan.data.splits import build_splits, default_split_dir, save_split

    artifact.save(ds, path, manifest_extra or None)
    if split and ds.folds.size and ds.folds.max() >= 0:
        save_split(build_splits(ds), default_split_dir(path))
    return Path(path)
