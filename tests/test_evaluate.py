"""Scores, metrics against known cases and sklearn, bootstrap intervals, plots and the per-fold evaluation step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from sibeatgan.config import EvaluateConfig, TeacherConfig, to_dict
from sibeatgan.data import artifact
from sibeatgan.errors import ConfigError, DatasetError
from sibeatgan.evaluate import bootstrap, metrics, ranked_metrics, run_evaluate, score
from sibeatgan.models import Generator
from sibeatgan.train.checkpoint import save_generator
from tests.test_teacher import synthetic_dataset


def test_score_is_the_per_beat_mean_squared_error_in_any_batch_size():
    torch.manual_seed(0)
    g = Generator(2, 64, nz=8, ngf=8).train()
    x = torch.rand(37, 2, 64) * 2 - 1
    with torch.no_grad():
        g.eval()
        expected = ((g(x).reconstruction - x) ** 2).mean(dim=(1, 2)).numpy()
        g.train()
    for batch in (1, 8, 37, 100):
        got = score(g, x, batch, "cpu")
        assert got.shape == (37,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert g.training  # mode restored
    np.testing.assert_allclose(score(g, x.numpy(), 16), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="float"):
        score(g, torch.zeros(3, 2, 64, dtype=torch.int16))


def test_metrics_of_perfect_reversed_and_random_scores():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 10)
    perfect = np.r_[np.linspace(0, 1, 50), np.linspace(2, 3, 20)]
    m = metrics(perfect, labels, n_bootstrap=200, seed=0)
    assert m["auc"] == 1.0 and m["ap"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
    assert 1.0 < m["threshold"] <= 2.0
    assert m["auc_ci"] == [1.0, 1.0] and m["per_class"]["S"]["auc"] == 1.0 and m["per_class"]["V"]["n"] == 10
    assert set(m["per_class"]) == {"S", "V"}  # F and Q are absent, so skipped
    reversed_ = metrics(-perfect, labels, n_bootstrap=0)
    assert reversed_["auc"] == 0.0 and "auc_ci" not in reversed_
    rng = np.random.default_rng(1)
    noisy = rng.normal(size=2000) + (np.arange(2000) % 4 == 0) * 0.8
    noisy_labels = (np.arange(2000) % 4 == 0).astype(int) * rng.integers(1, 5, 2000)
    m = metrics(noisy, noisy_labels, n_bootstrap=300, seed=2)
    for key in ("auc", "ap", "f1"):
        lo, hi = m[f"{key}_ci"]
        assert lo < m[key] < hi and hi - lo < 0.2, key
    assert 0.65 < m["auc"] < 0.8 and set(m["per_class"]) == {"S", "V", "F", "Q"}


def test_metrics_refuse_one_class_or_bad_input():
    with pytest.raises(ValueError, match="normal and anomalous"):
        metrics(np.arange(5.0), np.zeros(5, int))
    with pytest.raises(ValueError, match="not finite"):
        metrics(np.array([0.0, np.nan]), np.array([0, 1]))


def test_ranked_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=500), 1)  # many ties
    positive = rng.random(500) < 0.2 + 0.3 * (scores > 0.5)
    r = ranked_metrics(scores, positive)
    assert r["auc"] == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert r["ap"] == pytest.approx(average_precision_score(positive, scores), abs=1e-12)
    precision, recall, thresholds = precision_recall_curve(positive, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert r["f1"] == pytest.approx(f1.max(), abs=1e-12) and r["threshold"] == thresholds[np.argmax(f1)]


def test_metrics_match_sklearn_per_class_with_ties_and_report_the_threshold_rule():
    rng = np.random.default_rng(8)
    labels = rng.choice(5, size=800, p=[0.6, 0.1, 0.1, 0.1, 0.1])
    scores = np.round(rng.normal(size=800) + 0.3 * labels, 1)  # many ties, within and across classes
    m = metrics(scores, labels, n_bootstrap=0)
    assert m["auc"] == pytest.approx(roc_auc_score(labels != 0, scores), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(labels != 0, scores), abs=1e-12)
    for index, name in enumerate(("S", "V", "F", "Q"), start=1):
        keep = (labels == 0) | (labels == index)
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(labels[keep] == index, scores[keep]), abs=1e-12), name
    flagged = scores >= m["threshold"]
    assert m["precision_at_f1"] == pytest.approx((labels[flagged] != 0).mean(), abs=1e-12)
    assert m["recall_at_f1"] == pytest.approx(flagged[labels != 0].mean(), abs=1e-12)
    p, r = m["precision_at_f1"], m["recall_at_f1"]
    assert m["f1"] == pytest.approx(2 * p * r / (p + r), abs=1e-12)


def test_metrics_need_numpy_only(monkeypatch):
    """A GPU node with torch and numpy only (bench/gpu_teacher.sh) computes the full metrics; sklearn is for plots."""
    for name in ("sklearn", "sklearn.metrics"):
        monkeypatch.setitem(sys.modules, name, None)
    labels = np.r_[np.zeros(40, int), np.full(10, 2)]
    m = metrics(np.r_[np.linspace(0, 1, 40), np.linspace(0.5, 2, 10)], labels, n_bootstrap=20)
    assert 0.5 < m["auc"] < 1 and m["per_class"]["V"]["auc"] == m["auc"] and len(m["auc_ci"]) == 2


def test_bootstrap_is_seeded_and_centred():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=400) + np.r_[np.zeros(300), np.ones(100)]
    positive = np.r_[np.zeros(300, bool), np.ones(100, bool)]
    a, b = bootstrap(scores, positive, 500, seed=7), bootstrap(scores, positive, 500, seed=7)
    np.testing.assert_array_equal(a["auc"], b["auc"])
    assert a["auc"].shape == (500,)
    assert abs(a["auc"].mean() - roc_auc_score(positive, scores)) < 0.01
    assert 0.01 < a["auc"].std() < 0.05


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(200, int), np.full(30, 2)]
    paths = __import__("sibeatgan.evaluate", fromlist=["plot"]).plot(rng.random(230) + labels, labels, tmp_path, "test")
    assert sorted(p.name for p in paths) == ["hist.png", "pr.png", "roc.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("beats"), n_normal=600, n_per_class=30, length=64)


def fake_generator(path: Path, dataset: Path, fold: int, split_hash: str | None = None, **config) -> Path:
    """An untrained generator saved as a training run would save it (dataset and split hashes in its metadata)."""
    from sibeatgan.data.splits import load_split

    torch.manual_seed(fold)
    cfg = to_dict(TeacherConfig(fold=fold, **config))
    save_generator(path, Generator(1, 64, nz=8, ngf=8), selection="clean", epoch=3, config=cfg,
                   dataset_hash=artifact.load(dataset).content_hash(), split_hash=split_hash or load_split(dataset / "split").hash)
    return path


def test_run_evaluate_writes_per_fold_results(dataset, tmp_path):
    models = {k: fake_generator(tmp_path / f"g{k}.pt", dataset, k) for k in (0, 1)}
    result = run_evaluate(EvaluateConfig(folds=(0, 1), n_bootstrap=50), dataset, models, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(saved["folds"]) == {"0", "1"} and saved["overall"]["auc"]["std"] is not None
    for k in ("0", "1"):
        f = saved["folds"][k]
        assert {"auc", "ap", "f1", "threshold", "auc_ci", "per_class", "selection"} <= set(f)
        assert f["selection"] == "clean" and f["n_anomalous"] == 4 * 27
        assert (tmp_path / "eval" / f"fold_{k}" / "roc.png").is_file()
        kept = np.load(tmp_path / "eval" / f"fold_{k}" / "scores.npz")
        assert metrics(kept["scores"], kept["labels"], 0)["auc"] == pytest.approx(f["auc"])
    assert result["overall"]["auc"]["mean"] == pytest.approx(np.mean([saved["folds"][k]["auc"] for k in ("0", "1")]))
    # bf16 scoring ranks the beats almost as float32 does.
    bf16 = run_evaluate(EvaluateConfig(folds=(0, 1), n_bootstrap=0, plots=False, amp=True), dataset, models, tmp_path / "eval16")
    assert bf16["config"]["amp"] is True
    for k in ("0", "1"):
        assert bf16["folds"][k]["auc"] == pytest.approx(saved["folds"][k]["auc"], abs=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (on the CPU every tensor is already on the device)")
def test_run_evaluate_scores_beats_already_on_the_gpu(dataset, tmp_path, monkeypatch):
    """The fold's test beats go to the GPU once; score() must not copy host batches to it one by one."""
    import sibeatgan.evaluate as evaluate

    seen = []

    def spy(generator, beats, *args, **kw):
        seen.append(beats.device if isinstance(beats, torch.Tensor) else "numpy")
        return score(generator, beats, *args, **kw)

    monkeypatch.setattr(evaluate, "score", spy)
    g0 = fake_generator(tmp_path / "g0.pt", dataset, 0)
    run_evaluate(EvaluateConfig(device="cuda", n_bootstrap=0, plots=False), dataset, g0, tmp_path / "eval")
    assert len(seen) == 1 and seen[0].type == "cuda"


def test_run_evaluate_refuses_leaky_or_foreign_models(dataset, tmp_path):
    g1 = fake_generator(tmp_path / "g1.pt", dataset, 1)
    with pytest.raises(DatasetError, match="fold 1"):
        run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), dataset, {0: g1}, tmp_path / "eval")
    single = run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), dataset, g1, tmp_path / "eval")
    assert list(single["folds"]) == ["1"] and single["overall"]["auc"]["std"] is None
    other = synthetic_dataset(tmp_path / "other", n_normal=300, n_per_class=10, length=64, seed=4)
    with pytest.raises(DatasetError, match="trained on dataset"):
        run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), other, g1, tmp_path / "eval2")


def test_teacher_on_the_pipeline_synthetic_data_then_evaluation(synth_dataset, tmp_path):
    """synth -> preprocess -> train teacher -> evaluate: the teacher learns the injected anomalies."""
    from sibeatgan.train.teacher import run_train_teacher

    config = TeacherConfig(epochs=6, lr=1e-3, ngf=8, ndf=8, nz=16, device="cpu", selection="paper", max_train_beats=2048, eval_batch_size=1024)
    trained = run_train_teacher(config, synth_dataset, tmp_path / "teacher")
    result = run_evaluate(EvaluateConfig(n_bootstrap=200), synth_dataset, tmp_path / "teacher", tmp_path / "eval")
    fold = result["folds"]["0"]
    assert fold["auc"] > 0.85 and fold["auc_ci"][0] > 0.75
    assert fold["selection"] == "paper" and fold["epoch"] == trained["best_epoch"]
    assert set(fold["per_class"]) <= {"S", "V", "F", "Q"} and fold["per_class"]


@pytest.mark.mitdb
@pytest.mark.slow
def test_teacher_and_evaluation_on_mitdb(mitdb_dataset, tmp_path):
    """The real database through preprocess, a short teacher run and the evaluation: split sizes and per-class results."""
    from sibeatgan.train.teacher import run_train_teacher

    beats, manifest = mitdb_dataset
    config = TeacherConfig(epochs=1, ngf=8, ndf=8, nz=16, device="cpu", max_train_beats=512, eval_batch_size=2048)
    trained = run_train_teacher(config, beats, tmp_path / "teacher")
    assert trained["n_train"] == 512 and trained["n_val"] > 7000
    result = run_evaluate(EvaluateConfig(n_bootstrap=50, plots=False), beats, tmp_path / "teacher", tmp_path / "eval")
    fold = result["folds"]["0"]
    counts = manifest["counts"]
    assert fold["n_anomalous"] == sum(counts[c] - int(np.ceil(0.1 * counts[c])) for c in "SVFQ")
    assert set(fold["per_class"]) == {"S", "V", "F", "Q"}
    assert 0.0 <= fold["auc_ci"][0] <= fold["auc"] <= fold["auc_ci"][1] <= 1.0


def test_run_evaluate_refuses_folds_without_their_models(dataset, tmp_path):
    g0 = fake_generator(tmp_path / "g0.pt", dataset, 0)
    quick = dict(n_bootstrap=0, plots=False)
    with pytest.raises(ConfigError, match="5 folds asked for but one model given"):
        run_evaluate(EvaluateConfig(folds=(0, 1, 2, 3, 4), **quick), dataset, g0, tmp_path / "e1")
    with pytest.raises(ConfigError, match=r"folds \[0, 1\] asked for, models given for folds \[0\]"):
        run_evaluate(EvaluateConfig(folds=(0, 1), **quick), dataset, {0: g0}, tmp_path / "e2")
    assert list(run_evaluate(EvaluateConfig(folds=(0,), **quick), dataset, g0, tmp_path / "e3")["folds"]) == ["0"]
