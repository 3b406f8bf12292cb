"""bench/paper.py, the paper-scale protocol in chunks: a search unit, then units that read its best.json, each
appearing whole in the results; a rerun goes on from what is done; summarize pairs every model on the same beats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest
from tests.test_teacher import synthetic_beats

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--seeds", "0", "--protocols", "beatgan", "--teacher-epochs", "1", "--teacher-max-train-beats", "128",
        "--trials", "2", "--group-size", "2", "--tune-epochs", "1", "--tune-max-train-beats", "128", "--student-epochs", "1",
        "--student-max-train-beats", "128", "--eval-bootstrap", "0"]


def paper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "paper.py"), *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    import numpy as np

    labels = np.concatenate([np.zeros(500, np.uint8)] + [np.full(24, c, np.uint8) for c in range(1, 5)])
    labels = labels[np.random.default_rng(0).permutation(labels.shape[0])]
    records = tuple(f"{100 + i}" for i in range(6))
    ds = conftest.make_dataset(labels, synthetic_beats(labels, 64, 1, 0), records=records, seed=0, meta={"source": "test_bench_paper"})
    return conftest.save_dataset(ds, tmp_path_factory.mktemp("paper") / "beats")


def test_units_run_in_chunks_and_are_summarized(dataset, tmp_path):
    results = tmp_path / "results"
    r = paper("run", str(dataset), "--results", str(results), "--work", str(tmp_path / "work"), "--units", "2", "--budget-s", "100000", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = json.loads(r.stdout[r.stdout.index("{"):])
    assert ran["ran"] == ["beatgan-search", "beatgan-f0-s0"] and ran["pending"][0] == "beatgan-f1-s0" and ran["card"] == "cpu"
    best = json.loads((results / "beatgan-search" / "best.json").read_text())["student"]
    unit = json.loads((results / "beatgan-f0-s0" / "unit.json").read_text())
    assert unit["student_config"] == best and unit["card"] == "cpu" and set(unit["timings"]) >= {"teacher_s", "students_s", "evaluate_s"}
    assert set(unit["figures"]) >= {"teacher", "student", "control"}
    assert unit["student_score"]["chosen_by"] == "validation AUC"  # the BeatGAN protocol picks the student's score on validation
    for who in ("teacher", "student", "control"):
        assert (results / "beatgan-f0-s0" / "eval" / who / "fold_0" / "scores.npz").is_file()
    assert not list(results.glob(".*partial")) and not list(results.rglob("*.pt"))  # no half units, no model files
    # a rerun goes on from there: nothing done twice (a budget of 0 s stops after one unit)
    r = paper("run", str(dataset), "--results", str(results), "--work", str(tmp_path / "work"), "--budget-s", "0", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["ran"] == ["beatgan-f1-s0"]
    status = paper("status", "--results", str(results), "--seeds", "0", "--protocols", "beatgan").stdout
    assert "beatgan-search    done on cpu" in status and "beatgan-f1-s0     done" in status and "beatgan-f2-s0     pending" in status
    r = paper("summarize", str(dataset), "--results", str(results), "--seeds", "0", "--n-bootstrap", "20")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())["beatgan"]
    assert summary["units"] == ["beatgan-f0-s0", "beatgan-f1-s0"] and summary["folds"] == [0, 1]
    pooled = summary["comparisons"]["student_vs_teacher"]["pooled"]
    assert pooled["auc_b"] == pytest.approx((unit["figures"]["student"]["auc"] + json.loads(
        (results / "beatgan-f1-s0" / "unit.json").read_text())["figures"]["student"]["auc"]) / 2, abs=0.05)
    assert "| student vs control |" in (results / "summary.md").read_text()
