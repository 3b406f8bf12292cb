"""The data chain on the real database, as the pipeline runs it: ingest -> validate -> preprocess -> validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from sibeatgan import config as cfg
from sibeatgan.data.preprocess import run_preprocess
from sibeatgan.data.sources import run_ingest
from sibeatgan.data.validation import run_validate
from sibeatgan.errors import ValidationFailed

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mitdb.yaml"

pytestmark = pytest.mark.mitdb


def test_mitdb_chain_passes_the_gate(mitdb_dir, tmp_path):
    raw = tmp_path / "raw"
    ingested = run_ingest(cfg.load_config(cfg.IngestConfig, CONFIG, {"source": str(mitdb_dir)}), raw)
    assert ingested["n_records"] == 48 and ingested["checksums_verified"] >= 144

    pre = cfg.load_config(cfg.PreprocessConfig, CONFIG)
    val = cfg.load_config(cfg.ValidateConfig, CONFIG)
    assert val.records == pre.records  # the gate checks the records preprocess will use
    records = run_validate(val, raw, None, tmp_path / "v-records")
    assert records["success"]

    manifest = run_preprocess(pre, raw, tmp_path / "beats")
    assert manifest["counts"]["V"] == 7008
    beats = run_validate(val, None, tmp_path / "beats", tmp_path / "v-beats")
    assert beats["success"]
    assert (tmp_path / "v-beats" / "validation.html").is_file()

    # The same gate with the paced records in it fails, and says which records lack MLII.
    with pytest.raises(ValidationFailed, match="102") as err:
        run_validate(val, raw, None, tmp_path / "v-all", records=("all",))
    assert "104" in err.value.summary and (tmp_path / "v-all" / "validation.json").is_file()
