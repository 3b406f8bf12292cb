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


def test_two_teacher_seeds_are_compared_on_identical_mitdb_test_beats(mitdb_dataset, tmp_path):
    """Issue 6's acceptance: seeds 0 and 1 on fold 0 of the real database, the same test beats, a record-level interval."""
    import json

    import numpy as np

    from sibeatgan.compare import run_compare
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.train.teacher import run_train_teacher

    dataset, _ = mitdb_dataset
    evals = []
    for seed in (0, 1):
        conf = cfg.TeacherConfig(seed=seed, epochs=1, max_train_beats=2048, ngf=8, ndf=8, nz=16, device="cpu")
        run_train_teacher(conf, dataset, tmp_path / f"t{seed}")
        evals.append(tmp_path / f"e{seed}")
        run_evaluate(cfg.EvaluateConfig(n_bootstrap=50, plots=False, device="cpu"), dataset, tmp_path / f"t{seed}", evals[-1])
    index = [np.load(e / "fold_0" / "scores.npz")["index"] for e in evals]
    np.testing.assert_array_equal(index[0], index[1])
    assert index[0].shape[0] == 27144
    result = run_compare(cfg.EvaluateConfig(n_bootstrap=200), dataset, evals[0], evals[1], tmp_path / "cmp")
    fold = result["folds"]["0"]
    assert fold["n_groups"] == 44 and fold["delta_auc_ci"][0] <= fold["delta_auc"] <= fold["delta_auc_ci"][1]
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["folds"]["0"]["bootstrap"] == "record"
