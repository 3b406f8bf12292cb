"""The per-fold evaluation step: thresholds chosen without test labels, record-level intervals, tables, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sibeatgan.config import EvaluateConfig, TeacherConfig, to_dict
from sibeatgan.data import artifact
from sibeatgan.errors import ConfigError, DatasetError
from sibeatgan.evaluate import format_table, run_evaluate
from sibeatgan.metrics import choose_threshold, metrics, score
from sibeatgan.models import Generator
from sibeatgan.plots import plot
from sibeatgan.train.checkpoint import save_generator
from tests.test_teacher import synthetic_dataset

PNG = b"\x89PNG\r\n\x1a\n"


def fake_generator(path: Path, dataset: Path, fold: int, seed: int | None = None, meta: dict | None = None, **config) -> Path:
    """An untrained generator saved as training saves one: its config, selection, dataset and split hashes."""
    from sibeatgan.data.splits import default_split_dir, load_split

    ds = artifact.load(dataset)
    torch.manual_seed(fold if seed is None else seed)
    cfg = to_dict(TeacherConfig(fold=fold, **config))
    meta = {"split_hash": load_split(default_split_dir(dataset)).hash, **(meta or {})}
    save_generator(path, Generator(ds.leads, ds.length, nz=8, ngf=8), selection=cfg["selection"], epoch=3, config=cfg,
                   dataset_hash=ds.content_hash(), **meta)
    return path


def test_run_evaluate_writes_per_fold_results(synth_dataset, tmp_path):
    ds = artifact.load(synth_dataset)
    models = {k: fake_generator(tmp_path / f"g{k}.pt", synth_dataset, k) for k in (0, 1)}
    result = run_evaluate(EvaluateConfig(folds=(0, 1), n_bootstrap=50), synth_dataset, models, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved["folds"]) == {"0", "1"} and saved["overall"]["auc"]["std"] is not None
    for k in ("0", "1"):
        f = saved["folds"][k]
        assert {"auc", "ap", "f1_oracle", "threshold_oracle", "auc_ci", "ap_ci", "per_class", "selection", "operating"} <= set(f)
        assert "f1" not in f and "f1" in f["operating"], "an F1 is either the oracle's or the validation threshold's, and says which"
        assert f["selection"] == "clean" and f["bootstrap"] == "record"
        assert f["n_records"] == len(np.unique(ds.records))
        kept = np.load(tmp_path / "eval" / f"fold_{k}" / "scores.npz")
        np.testing.assert_array_equal(kept["records"], ds.records[kept["index"]].astype(str))
        np.testing.assert_array_equal(kept["labels"], ds.labels[kept["index"]])
        assert metrics(kept["scores"], kept["labels"], 0)["auc"] == pytest.approx(f["auc"])
        # no threshold in the model file: 1% false alarms on the model's normal validation beats
        op = f["operating"]
        assert op["source"] == "validation" and op["rule"] == "far" and op["far"] == 0.01
        assert op["threshold"] == pytest.approx(choose_threshold(kept["val_scores"], kept["val_labels"], "far", 0.01))
        assert not set(kept["val_index"]) & set(kept["index"])
        assert {"recall", "recall_ci"} <= set(f["per_class"]["S"]) and len(op["f1_ci"]) == 2
        assert sorted(Path(p).name for p in f["plots"]) == ["hist.png", "pr.png", "roc.png", "roc_per_class.png"]
    assert result["overall"]["auc"]["mean"] == pytest.approx(np.mean([saved["folds"][k]["auc"] for k in ("0", "1")]))
    table = (tmp_path / "eval" / "table.txt").read_text()
    assert table.strip() == format_table(result)
    for text in ("fold 0:", "fold 1:", "record-level", "best F1 (oracle", "mean +- sd over 2 folds", "1% false alarms"):
        assert text in table, text
    # bf16 scoring ranks the beats almost as float32 does.
    bf16 = run_evaluate(EvaluateConfig(folds=(0, 1), n_bootstrap=0, plots=False, amp=True), synth_dataset, models, tmp_path / "eval16")
    assert bf16["config"]["amp"] is True and "no intervals" in format_table(bf16)
    for k in ("0", "1"):
        assert bf16["folds"][k]["auc"] == pytest.approx(saved["folds"][k]["auc"], abs=0.02)


def test_threshold_saved_with_the_model_wins_and_rules_are_recorded(synth_dataset, tmp_path):
    quick = dict(n_bootstrap=0, plots=False)
    saved = fake_generator(tmp_path / "g.pt", synth_dataset, 0, meta={"threshold": 0.05, "threshold_rule": "far", "threshold_far": 0.02})
    r = run_evaluate(EvaluateConfig(**quick), synth_dataset, saved, tmp_path / "e1")["folds"]["0"]
    assert r["operating"]["threshold"] == 0.05 and r["operating"]["source"] == "model" and r["operating"]["far"] == 0.02
    kept = np.load(tmp_path / "e1" / "fold_0" / "scores.npz")
    assert "val_scores" not in kept.files  # validation is not scored when the model carries its threshold
    flagged = kept["scores"] >= 0.05
    assert r["operating"]["recall"] == pytest.approx(flagged[kept["labels"] != 0].mean())
    plain = fake_generator(tmp_path / "p.pt", synth_dataset, 0)
    f1 = run_evaluate(EvaluateConfig(threshold_rule="f1", **quick), synth_dataset, plain, tmp_path / "e2")["folds"]["0"]
    kept = np.load(tmp_path / "e2" / "fold_0" / "scores.npz")
    assert f1["operating"]["rule"] == "f1" and f1["operating"]["far"] is None
    assert f1["operating"]["threshold"] == choose_threshold(kept["val_scores"], kept["val_labels"], "f1")
    assert "best validation F1" in format_table({"folds": {"0": f1}, "overall": {}})
    paper = fake_generator(tmp_path / "paper.pt", synth_dataset, 0, selection="paper")
    auto = run_evaluate(EvaluateConfig(**quick), synth_dataset, paper, tmp_path / "e4")["folds"]["0"]
    assert auto["operating"]["rule"] == "f1" and auto["operating"]["threshold"] == f1["operating"]["threshold"]
    with pytest.raises(ConfigError, match="EvaluateConfig.far"):
        run_evaluate(EvaluateConfig(far=0.0, **quick), synth_dataset, plain, tmp_path / "e3")


def test_beat_level_bootstrap_is_an_option(synth_dataset, tmp_path):
    g = fake_generator(tmp_path / "g.pt", synth_dataset, 0)
    beat = run_evaluate(EvaluateConfig(bootstrap="beat", n_bootstrap=100, plots=False), synth_dataset, g, tmp_path / "b")["folds"]["0"]
    record = run_evaluate(EvaluateConfig(n_bootstrap=100, plots=False), synth_dataset, g, tmp_path / "r")["folds"]["0"]
    assert beat["bootstrap"] == "beat" and beat["n_records"] is None and record["bootstrap"] == "record"
    assert beat["auc"] == record["auc"] and beat["auc_ci"] != record["auc_ci"]
    assert "beat-level bootstrap" in format_table({"folds": {"0": beat}, "overall": {}})


def test_plots_are_written_and_labelled(tmp_path):
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(400, int), np.full(60, 1), np.full(40, 2), np.full(13, 4)]
    scores = rng.gamma(2.0, 0.01, size=labels.shape[0]) * (1 + labels)
    groups = np.arange(labels.shape[0]) % 9
    m = metrics(scores, labels, 100, groups=groups, threshold=choose_threshold(scores[labels == 0]))
    m["operating"].update(source="validation", rule="far", far=0.01)
    paths = plot(scores, labels, tmp_path, "test", result=m)
    assert sorted(p.name for p in paths) == ["hist.png", "pr.png", "roc.png", "roc_per_class.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    bare = plot(scores, labels, tmp_path / "bare")  # without a metrics dict: computed, no intervals or threshold
    assert len(bare) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (on the CPU every tensor is already on the device)")
def test_run_evaluate_scores_beats_already_on_the_gpu(synth_dataset, tmp_path, monkeypatch):
    """The fold's beats go to the GPU once per split; score() must not copy host batches to it one by one."""
    import sibeatgan.evaluate as evaluate

    seen = []

    def spy(generator, beats, *args, **kw):
        seen.append(beats.device if isinstance(beats, torch.Tensor) else "numpy")
        return score(generator, beats, *args, **kw)

    monkeypatch.setattr(evaluate, "score", spy)
    g0 = fake_generator(tmp_path / "g0.pt", synth_dataset, 0)
    run_evaluate(EvaluateConfig(device="cuda", n_bootstrap=0, plots=False), synth_dataset, g0, tmp_path / "eval")
    assert len(seen) == 2 and all(d.type == "cuda" for d in seen)  # test and validation


def test_run_evaluate_refuses_leaky_or_foreign_models(synth_dataset, tmp_path):
    quick = dict(n_bootstrap=0, plots=False)
    g1 = fake_generator(tmp_path / "g1.pt", synth_dataset, 1)
    with pytest.raises(DatasetError, match="fold 1"):
        run_evaluate(EvaluateConfig(**quick), synth_dataset, {0: g1}, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # refused before anything is written
    g0 = fake_generator(tmp_path / "g0.pt", synth_dataset, 0)
    with pytest.raises(DatasetError, match="fold 1"):
        run_evaluate(EvaluateConfig(folds=(0, 2), **quick), synth_dataset, {0: g0, 2: g1}, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # not even the good fold 0
    single = run_evaluate(EvaluateConfig(**quick), synth_dataset, g1, tmp_path / "eval")
    assert list(single["folds"]) == ["1"] and single["overall"]["auc"]["std"] is None
    foreign = fake_generator(tmp_path / "foreign.pt", synth_dataset, 1, meta={"split_hash": "f" * 64})
    with pytest.raises(DatasetError, match="trained on split ffff"):
        run_evaluate(EvaluateConfig(**quick), synth_dataset, foreign, tmp_path / "eval3")
    other = synthetic_dataset(tmp_path / "other", n_normal=300, n_per_class=10, length=64, seed=4)
    with pytest.raises(DatasetError, match="trained on dataset"):
        run_evaluate(EvaluateConfig(**quick), other, g1, tmp_path / "eval2")


def test_run_evaluate_refuses_folds_without_their_models(synth_dataset, tmp_path):
    g0 = fake_generator(tmp_path / "g0.pt", synth_dataset, 0)
    quick = dict(n_bootstrap=0, plots=False)
    with pytest.raises(ConfigError, match="5 folds asked for but one model given"):
        run_evaluate(EvaluateConfig(folds=(0, 1, 2, 3, 4), **quick), synth_dataset, g0, tmp_path / "e1")
    with pytest.raises(ConfigError, match=r"folds \[0, 1\] asked for, models given for folds \[0\]"):
        run_evaluate(EvaluateConfig(folds=(0, 1), **quick), synth_dataset, {0: g0}, tmp_path / "e2")
    assert list(run_evaluate(EvaluateConfig(folds=(0,), **quick), synth_dataset, g0, tmp_path / "e3")["folds"]) == ["0"]


def test_cli_evaluate_prints_the_table(synth_dataset, tmp_path):
    from sibeatgan.cli import app

    g0 = fake_generator(tmp_path / "g0.pt", synth_dataset, 0)
    run = CliRunner().invoke(app, ["evaluate", "-d", str(synth_dataset), "-m", str(g0), "-o", str(tmp_path / "e"),
                                   "--set", "n_bootstrap=20", "--set", "plots=false", "--set", "bootstrap=beat"])
    assert run.exit_code == 0, run.output
    assert "fold 0:" in run.output and "AUC" in run.output and "beat-level" in run.output


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
    # a threshold chosen without test labels flags most anomalies and few normal beats
    assert fold["operating"]["recall"] > 0.5 and fold["operating"]["false_alarm_rate"] < 0.1


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
    assert set(fold["per_class"]) == {"S", "V", "F", "Q"} and fold["n_records"] == 44 and fold["bootstrap"] == "record"
    assert 0.0 <= fold["auc_ci"][0] <= fold["auc"] <= fold["auc_ci"][1] <= 1.0
    assert 0.0 <= fold["ap_ci"][0] <= fold["ap"] <= fold["ap_ci"][1] <= 1.0
