"""bench/paper.py, the paper-scale protocol in chunks: a search unit, then units that read its best.json, each
appearing whole in the results; a rerun goes on from what is done; summarize pairs every model on the same beats."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest
from tests.test_teacher import synthetic_beats

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--seeds", "0", "--protocols", "beatgan", "--teacher-epochs", "1", "--teacher-max-train-beats", "128",
        "--trials", "2", "--group-size", "2", "--tune-epochs", "1", "--tune-max-train-beats", "128", "--student-epochs", "1",
        "--student-max-train-beats", "128", "--eval-bootstrap", "0", "--search"]


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
    results, out = tmp_path / "results", tmp_path / "out"  # as on the GPU: done units travel in, new ones go to OUT
    work = ["--work", str(tmp_path / "work")]
    r = paper("run", str(dataset), "--results", str(results), "--out", str(out), *work, "--units", "2", "--budget-s", "100000", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = json.loads(r.stdout[r.stdout.index("{"):])
    assert ran["ran"] == ["beatgan-f0-search", "beatgan-f0-s0"] and ran["pending"][0] == "beatgan-f1-s0" and ran["card"] == "cpu"
    best = json.loads((out / "beatgan-f0-search" / "best.json").read_text())["student"]
    unit = json.loads((out / "beatgan-f0-s0" / "unit.json").read_text())
    assert unit["status"] == "done" and unit["student_config"] == best and unit["card"] == "cpu"
    assert set(unit["timings"]) >= {"teacher_s", "protocol_s"} and set(unit["figures"]) >= {"teacher", "student", "control"}
    assert unit["winner"]["winner"] in ("student", "control") and unit["winner"]["candidates"] == ["student", "control"]
    # bench/paper.md: both models scored by their reconstruction error
    score = json.loads((out / "beatgan-f0-s0" / "train" / "students" / "student" / "score.json").read_text())
    assert score["kind"] == "reconstruction" and unit["scores"] == {"student": "reconstruction", "control": "reconstruction"}
    for who in ("teacher", "student", "control"):
        assert (out / "beatgan-f0-s0" / "eval" / who / "fold_0" / "scores.npz").is_file()
    assert not list(out.rglob("*.pt"))  # no model files travel back
    shutil.copytree(out, results)  # what the session does after a call
    # a killed call leaves a half unit behind: it is not taken as done, and the next call writes it whole
    (out / ".beatgan-f1-s0.partial" / "eval").mkdir(parents=True)
    (out / "beatgan-f1-s0" / "eval").mkdir(parents=True)
    r = paper("run", str(dataset), "--results", str(results), "--out", str(out), *work, "--budget-s", "0", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["ran"] == ["beatgan-f1-search"]  # budget 0: one step a call
    r = paper("run", str(dataset), "--results", str(results), "--out", str(out), *work, "--budget-s", "0", *TINY)
    assert json.loads(r.stdout[r.stdout.index("{"):])["ran"] == ["beatgan-f1-s0"]  # nothing done twice
    assert (out / "beatgan-f1-s0" / "unit.json").is_file() and not list(out.glob(".*partial"))
    shutil.copytree(out, results, dirs_exist_ok=True)
    status = paper("status", "--results", str(results), "--seeds", "0", "--protocols", "beatgan", "--search").stdout
    assert "beatgan-f0-search   done on cpu" in status and "beatgan-f1-s0       done on cpu" in status
    assert "beatgan-f2-search   pending" in status and "beatgan-f2-s0       pending" in status
    r = paper("summarize", str(dataset), "--results", str(results), "--seeds", "0", "--n-bootstrap", "20")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())["beatgan"]
    assert summary["units"] == ["beatgan-f0-s0", "beatgan-f1-s0"] and summary["folds"] == [0, 1] and summary["failed_units"] == []
    aucs = [json.loads((results / u / "unit.json").read_text())["figures"]["student"]["auc"] for u in summary["units"]]
    assert summary["mean"]["student"]["auc"] == pytest.approx(sum(aucs) / 2)
    assert set(summary["comparisons"]["student_vs_teacher"]["folds"]) == {"0", "1"}  # paired per fold, then pooled
    assert "| student vs control |" in (results / "summary.md").read_text()
    # the pre-registered primary endpoint is not reported on 2 of 5 planned units: no interim look
    primary = json.loads((results / "summary.json").read_text())["primary"]
    assert primary["status"] == "not reported" and primary["units_done"] == 2 and primary["units_planned"] == 5
    assert "**Primary endpoint** (bench/paper.md): not reported, 2 of 5 units done" in (results / "summary.md").read_text()


def test_without_search_the_units_use_the_preregistered_defaults(dataset, tmp_path):
    """bench/paper.md: no search unit; the student has StudentConfig's defaults, both models score by reconstruction error."""
    tiny = [a for a in TINY if a != "--search"]
    r = paper("run", str(dataset), "--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
              "--units", "1", "--budget-s", "100000", *tiny)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["ran"] == ["beatgan-f0-s0"]
    unit = json.loads((tmp_path / "out" / "beatgan-f0-s0" / "unit.json").read_text())
    assert unit["student_config"] == {} and unit["best"].startswith("none") and unit["scores"]["student"] == "reconstruction"


def test_a_failed_student_is_scored_as_a_loss(tmp_path):
    """The failed-unit rule: a failed student's stand-in has one constant score (AUC 0.5); a failed control's is the student's."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from paper import _substitute

    src = tmp_path / "teacher" / "fold_0"
    src.mkdir(parents=True)
    (tmp_path / "teacher" / "evaluation.json").write_text("{}")
    np.savez_compressed(src / "scores.npz", index=np.arange(4), scores=np.array([0.1, 0.9, 0.2, 0.8], np.float32), labels=np.array([0, 1, 0, 1]))
    lost = _substitute(tmp_path / "teacher", tmp_path / "student", constant=True)
    with np.load(lost / "fold_0" / "scores.npz") as npz:
        assert (npz["scores"] == 0).all() and list(npz["labels"]) == [0, 1, 0, 1]
    same = _substitute(lost, tmp_path / "control", constant=False)
    assert (same / "evaluation.json").is_file()


def test_teacher_group_trains_the_units_teachers_together(dataset, tmp_path):
    """--teacher-group 2: the teachers of two units (fold 0 and fold 1, seed 0) train as one batched group; each unit then
    runs as before on its own teacher (its card names its own fold), and records its share of the group's time."""
    results, out = tmp_path / "results", tmp_path / "out"
    no_search = [a for a in TINY if a != "--search"]
    r = paper("run", str(dataset), "--results", str(results), "--out", str(out), "--work", str(tmp_path / "work"), "--units", "2",
              "--budget-s", "100000", "--teacher-group", "2", *no_search)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["ran"] == ["beatgan-f0-s0", "beatgan-f1-s0"]
    assert "2 teachers as one batched group" in r.stderr
    for fold in (0, 1):
        unit = json.loads((out / f"beatgan-f{fold}-s0" / "unit.json").read_text())
        assert unit["status"] == "done" and unit["teacher_group"] == 2 and unit["timings"]["teacher_s"] > 0
        card = json.loads((out / f"beatgan-f{fold}-s0" / "train" / "teacher" / "model_card.json").read_text())
        assert (card["fold"], card["seed"]) == (fold, 0)
        assert (out / f"beatgan-f{fold}-s0" / "eval" / "student" / f"fold_{fold}" / "scores.npz").is_file()
    assert not list(out.rglob("*.pt"))
    r = paper("run", str(dataset), "--results", str(results), "--out", str(out), "--teacher-group", "2", "--search", *no_search)
    assert r.returncode != 0 and "does not run with --search" in r.stderr


def test_teacher_groups_follow_the_plan_and_never_mix_protocols():
    """Groups are the leading units of one protocol: every planned unit lands in exactly one group, in plan order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_bench", ROOT / "bench" / "paper.py")
    paper_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper_mod)
    for seeds in ([0], [0, 1, 2]):
        for k in (2, 3, 5, 7):
            pending = paper_mod.plan(["beatgan", "clean"], seeds)
            groups = []
            while pending:
                group = paper_mod.next_group(pending, k)
                assert 1 <= len(group) <= k and len({u[0] for u in group}) == 1
                groups.append(group)
                pending = pending[len(group):]
            assert [u for g in groups for u in g] == paper_mod.plan(["beatgan", "clean"], seeds)
    first = paper_mod.next_group(paper_mod.plan(["beatgan", "clean"], [0]), 3)
    assert first == [("beatgan", 0, 0)], "clean-f0-s0 comes next in the plan: it is not skipped for beatgan-f1"
