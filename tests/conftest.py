"""Shared fixtures: the real database (read-only) and a synthetic database made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MITDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"


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
