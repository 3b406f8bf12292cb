"""bench/recompute.py: every marked bench table is rebuilt from the per-beat scores committed beside it, with no
model, no GPU and no dataset, and matches what the .md file says."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recompute():
    spec = importlib.util.spec_from_file_location("bench_recompute", ROOT / "bench" / "recompute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_recompute_from_their_scores_to_the_digit():
    rc = _recompute()
    tables = rc.marked()
    assert len(tables) >= 2, "no bench table is marked as recomputable"
    for path, results, _, _ in tables:  # every marked table has its scores committed, float32, about 0.1 MB a model and fold
        npz = sorted((ROOT / "bench" / "results" / results).rglob("scores.npz"))
        assert npz and all(f.stat().st_size < 400_000 for f in npz), (path, results)
        with np.load(npz[0]) as z:
            assert z["scores"].dtype == np.float32 and {"index", "records", "labels", "scores"} <= set(z.files)
    assert rc.check() == []
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "recompute.py")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and f"{len(tables)} table(s) rebuilt from their scores; 0 differ" in run.stdout, run.stdout + run.stderr


def test_a_table_that_differs_from_its_scores_is_caught_and_can_be_rewritten(tmp_path):
    rc = _recompute()
    path, results, table, body = rc.marked()[0]
    changed = body.replace("0.", "9.", 1)
    assert changed != body
    md = tmp_path / "x.md"
    md.write_text(f"# x\n\n<!-- recompute: {results}#{table} -->\n{changed}\n<!-- /recompute -->\n\nafter\n")
    diffs = rc.check([md])
    assert len(diffs) == 1 and "from the scores" in diffs[0] and "+" + body.splitlines()[0] not in diffs[0]
    assert rc.check([md], write=True) and rc.check([md]) == []
    assert md.read_text().endswith("<!-- /recompute -->\n\nafter\n") and body in md.read_text()
    md.write_text(f"<!-- recompute: {results}#nosuchtable -->\n|a|\n<!-- /recompute -->\n")
    with pytest.raises(SystemExit, match="table 'nosuchtable' is not in"):
        rc.check([md])


def test_keep_writes_compact_scores_that_compare_reads_as_the_evaluation(synth_dataset, tmp_path):
    from sibeatgan.compare import run_compare
    from sibeatgan.config import EvaluateConfig
    from sibeatgan.evaluate import run_evaluate
    from tests.test_evaluate import fake_generator

    rc = _recompute()
    config = EvaluateConfig(n_bootstrap=0, plots=False)
    evals = []
    for seed in (0, 1):
        g = fake_generator(tmp_path / f"g{seed}.pt", synth_dataset, 0, seed=seed)
        run_evaluate(config, synth_dataset, g, tmp_path / f"e{seed}")
        evals.append(tmp_path / f"e{seed}")
    kept = [tmp_path / "kept" / f"e{seed}" for seed in (0, 1)]
    for e, k in zip(evals, kept):
        rc.keep(e, k)
    with np.load(kept[0] / "fold_0" / "scores.npz") as z, np.load(evals[0] / "fold_0" / "scores.npz") as full:
        assert z["scores"].dtype == np.float32 and z["index"].dtype == np.int32 and z["labels"].dtype == np.int8
        assert np.array_equal(z["scores"], full["scores"]) and np.array_equal(z["index"], full["index"])
        assert np.array_equal(z["records"], full["records"]) and "val_scores" not in z.files
    boot = EvaluateConfig(n_bootstrap=200)
    original = run_compare(boot, None, evals[0], evals[1], tmp_path / "c1")["pooled"]
    again = run_compare(boot, None, kept[0], kept[1], tmp_path / "c2")["pooled"]
    assert json.dumps(original) == json.dumps(again)
