"""The compare step: two evaluations on identical test beats, b - a per fold and pooled over folds and seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sibeatgan.compare import format_compare_table, run_compare
from sibeatgan.config import EvaluateConfig
from sibeatgan.data import artifact
from sibeatgan.data.splits import build_splits, load_split, save_split
from sibeatgan.errors import ConfigError, DatasetError
from sibeatgan.evaluate import run_evaluate
from tests.test_evaluate import fake_generator
from tests.test_metrics import PAIRED_KEYS
from tests.test_teacher import synthetic_dataset

QUICK = EvaluateConfig(folds=(0, 1), n_bootstrap=0, plots=False)


@pytest.fixture(scope="module")
def evaluations(synth_dataset, tmp_path_factory) -> dict[str, Path]:
    """Evaluations of untrained generators on folds 0 and 1: models a and b with two seeds each, and one on a shifted split."""
    root = tmp_path_factory.mktemp("compare")
    out: dict[str, Path] = {}
    for name, seed in (("a0", 0), ("b0", 10), ("a1", 1), ("b1", 11)):
        models = {k: fake_generator(root / f"{name}_f{k}.pt", synth_dataset, k, seed=seed + 100 * k) for k in (0, 1)}
        run_evaluate(QUICK, synth_dataset, models, root / name)
        out[name] = root / name
    other_split = root / "split_seed_1"  # another split of the same dataset: other test beats
    save_split(build_splits(artifact.load(synth_dataset), split_seed=1), other_split)
    meta = {"split_hash": load_split(other_split).hash}
    shifted = {k: fake_generator(root / f"s_f{k}.pt", synth_dataset, k, meta=meta) for k in (0, 1)}
    run_evaluate(QUICK, synth_dataset, shifted, root / "shifted", split=other_split)
    out["shifted"] = root / "shifted"
    return out


def _fold(evaluation: Path, fold: str) -> dict:
    return json.loads((evaluation / "evaluation.json").read_text())["folds"][fold]


def test_compare_reports_b_minus_a_per_fold_and_pooled(synth_dataset, evaluations, tmp_path):
    a, b = evaluations["a0"], evaluations["b0"]
    result = run_compare(EvaluateConfig(n_bootstrap=200), synth_dataset, a, b, tmp_path / "cmp")
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["folds"]) == {"0", "1"} and result["n_seeds"] == 1
    for fold in ("0", "1"):
        r = result["folds"][fold]
        assert PAIRED_KEYS <= set(r) and r["bootstrap"] == "record" and r["n_units"] == 1
        assert r["auc_a"] == pytest.approx(_fold(a, fold)["auc"]) and r["auc_b"] == pytest.approx(_fold(b, fold)["auc"])
        assert r["delta_ap"] == pytest.approx(_fold(b, fold)["ap"] - _fold(a, fold)["ap"])
        assert r["n"] == _fold(a, fold)["n"] and r["n_groups"] == _fold(a, fold)["n_records"]
        assert r["delta_auc_ci"][0] <= r["delta_auc"] <= r["delta_auc_ci"][1] and 0 < r["p_auc"] <= 1
    pooled = result["pooled"]
    assert pooled["n_units"] == 2 and pooled["n"] == sum(result["folds"][k]["n"] for k in ("0", "1"))
    assert pooled["delta_auc"] == pytest.approx(np.mean([result["folds"][k]["delta_auc"] for k in ("0", "1")]))
    table = (tmp_path / "cmp" / "table.txt").read_text()
    assert table.strip() == format_compare_table(result)
    assert "pooled" in table and "unit+record-level" in table and "p=" in table  # two folds: two units
    one = run_compare(EvaluateConfig(n_bootstrap=50), synth_dataset, a, b, tmp_path / "one", level="record")
    assert one["pooled"]["bootstrap"] == "record"
    with pytest.raises(ConfigError, match="at least 2 trained pairs"):
        single = tmp_path / "single"
        g = fake_generator(tmp_path / "g1.pt", synth_dataset, 0)
        run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), synth_dataset, g, single)
        run_compare(QUICK, synth_dataset, single, single, tmp_path / "lone", level="unit+record")
    same = run_compare(EvaluateConfig(n_bootstrap=100), None, a, a, tmp_path / "same")["pooled"]
    assert same["delta_auc"] == 0 and same["delta_auc_ci"] == [0.0, 0.0] and same["p_ap"] == 1.0


def test_compare_pools_seeds_paired_in_order(synth_dataset, evaluations, tmp_path):
    e = evaluations
    result = run_compare(EvaluateConfig(n_bootstrap=100), synth_dataset, [e["a0"], e["a1"]], [e["b0"], e["b1"]], tmp_path / "cmp")
    assert result["n_seeds"] == 2 and result["folds"]["0"]["n_units"] == 2 and result["pooled"]["n_units"] == 4
    deltas = [_fold(e[f"b{s}"], k)["auc"] - _fold(e[f"a{s}"], k)["auc"] for s in (0, 1) for k in ("0", "1")]
    assert result["pooled"]["delta_auc"] == pytest.approx(np.mean(deltas))
    table = format_compare_table(result)
    assert "2 seed(s)" in table
    # several trained pairs: the default resamples them too (training variance), with the record-only figures beside
    pooled = result["pooled"]
    assert result["level"] == "auto" and pooled["bootstrap"] == "unit+record" and pooled["units_drawn"] == 3
    assert result["folds"]["0"]["bootstrap"] == "unit+record" and result["folds"]["0"]["units_drawn"] == 1
    assert pooled["unit_delta_auc"] == pytest.approx([deltas[0], deltas[2], deltas[1], deltas[3]])  # units fold by fold
    assert "unit+record-level" in table and "pooled: record-only" in table and "fewer than 5 units" in table
    record = run_compare(EvaluateConfig(n_bootstrap=100), synth_dataset, [e["a0"], e["a1"]], [e["b0"], e["b1"]], tmp_path / "rec",
                         level="record")
    assert record["pooled"]["bootstrap"] == "record"
    assert record["pooled"]["delta_auc_ci"] == pytest.approx(pooled["record_only"]["delta_auc_ci"])
    assert "record-only" not in format_compare_table(record)
    with pytest.raises(ConfigError, match="unknown level 'seed'"):
        run_compare(QUICK, synth_dataset, e["a0"], e["b0"], tmp_path / "bad", level="seed")
    with pytest.raises(ConfigError, match="2 evaluation"):
        run_compare(QUICK, synth_dataset, [e["a0"], e["a1"]], [e["b0"]], tmp_path / "bad")


def test_compare_refuses_evaluations_on_other_beats(synth_dataset, evaluations, tmp_path):
    e = evaluations
    with pytest.raises(DatasetError, match="fold 0: .* used split"):  # their evaluations record the split hash
        run_compare(QUICK, synth_dataset, e["a0"], e["shifted"], tmp_path / "c1")
    unhashed = tmp_path / "unhashed"  # an evaluation that does not say its split: the test beats themselves differ
    shutil.copytree(e["shifted"], unhashed)
    saved = json.loads((unhashed / "evaluation.json").read_text())
    for fold in saved["folds"].values():
        fold.pop("split_hash")
    (unhashed / "evaluation.json").write_text(json.dumps(saved))
    with pytest.raises(DatasetError, match="fold 0: .* different test beats"):
        run_compare(QUICK, synth_dataset, e["a0"], unhashed, tmp_path / "c1")
    other = synthetic_dataset(tmp_path / "other", n_normal=300, n_per_class=10, length=64, seed=4)
    with pytest.raises(DatasetError, match="evaluated on dataset"):
        run_compare(QUICK, other, e["a0"], e["b0"], tmp_path / "c2")
    one_fold = tmp_path / "one_fold"
    g = fake_generator(tmp_path / "g.pt", synth_dataset, 0)
    run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), synth_dataset, g, one_fold)
    with pytest.raises(DatasetError, match="fold 1 is evaluated in only one"):
        run_compare(QUICK, synth_dataset, e["a0"], one_fold, tmp_path / "c3")
    with pytest.raises(DatasetError, match="evaluation.json is missing"):
        run_compare(QUICK, synth_dataset, e["a0"], tmp_path, tmp_path / "c4")
    assert not (tmp_path / "c1").exists()  # nothing written on a refusal


def test_compare_takes_records_from_the_dataset_for_older_evaluations(synth_dataset, evaluations, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(evaluations["b0"], old)
    for fold in ("0", "1"):
        path = old / f"fold_{fold}" / "scores.npz"
        kept = dict(np.load(path))
        del kept["records"]
        np.savez_compressed(path, **kept)
    with pytest.raises(DatasetError, match="no records array"):
        run_compare(QUICK, None, evaluations["a0"], old, tmp_path / "c1")
    r = run_compare(EvaluateConfig(n_bootstrap=50), synth_dataset, evaluations["a0"], old, tmp_path / "c2")
    assert r["pooled"]["n_groups"] == run_compare(EvaluateConfig(n_bootstrap=50), None, evaluations["a0"], evaluations["b0"], tmp_path / "c3")["pooled"]["n_groups"]


def test_cli_compare(synth_dataset, evaluations, tmp_path):
    from sibeatgan.cli import app

    e = evaluations
    run = CliRunner().invoke(app, ["compare", "--a", str(e["a0"]), "--a", str(e["a1"]), "--b", str(e["b0"]), "--b", str(e["b1"]),
                                   "--out", str(tmp_path / "cmp"), "--set", "n_bootstrap=50", "--level", "record"])
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["pooled"]["bootstrap"] == "record"
    assert "delta AUC" in run.output and "pooled" in run.output and (tmp_path / "cmp" / "compare.json").is_file()
    refused = CliRunner().invoke(app, ["compare", "--a", str(e["a0"]), "--b", str(e["shifted"]), "--out", str(tmp_path / "no")])
    assert isinstance(refused.exception, DatasetError) and "fold 0" in str(refused.exception)  # main() makes it exit 2
