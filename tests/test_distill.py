"""The student's steps on the one loop: train-student, a batched group of members, and tune with real students."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sibeatgan.config import SplitConfig, StudentConfig, TuneConfig, replace
from sibeatgan.data.splits import load_split, run_split
from sibeatgan.errors import DatasetError
from sibeatgan.modelio import load_generator
from sibeatgan.steps.tune import run_tune
from sibeatgan.train.distill import run_train_student, train_student_group
from sibeatgan.train.teacher import run_train_teacher
from tests.test_teacher import small_config, synthetic_dataset


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distill")
    dataset = synthetic_dataset(root / "beats", n_normal=700, n_per_class=30, length=64)
    run_train_teacher(small_config(epochs=1, max_train_beats=256, batch_size=32), dataset, root / "teacher")
    return dataset, root / "teacher"


def student(**kw) -> StudentConfig:
    base = dict(nz=16, ngf=8, ndf=8, epochs=2, batch_size=32, max_train_beats=256, eval_batch_size=256, device="cpu", seed=3)
    base.update(kw)
    return StudentConfig(**base)


def test_train_student_writes_a_selected_generator_from_the_teacher(teacher, tmp_path):
    dataset, teacher_dir = teacher
    result = run_train_student(student(), dataset, teacher_dir, tmp_path / "s")
    gen, meta = load_generator(result["generator"])
    assert meta["kind"] == "student" and meta["split_hash"] == load_split(dataset / "split").hash
    assert meta["threshold"] > 0 and meta["config"]["teacher"].endswith("generator.pt")
    history = json.loads((tmp_path / "s" / "metrics.json").read_text())["history"]
    assert {"loss_rec", "loss_fm", "loss_kd", "loss_con"} <= set(history[0])
    resumed = run_train_student(student(epochs=3), dataset, teacher_dir, tmp_path / "s")  # resumes at epoch 3
    assert resumed["epochs"] == 3


def test_a_teacher_of_another_fold_or_split_is_refused(teacher, tmp_path):
    dataset, teacher_dir = teacher
    with pytest.raises(DatasetError, match="another fold"):
        run_train_student(student(fold=1), dataset, teacher_dir, tmp_path / "s")
    run_split(SplitConfig(split_seed=4), dataset, tmp_path / "other")
    with pytest.raises(DatasetError, match="split"):
        run_train_student(student(), dataset, teacher_dir, tmp_path / "s2", split=tmp_path / "other")


def test_a_group_trains_members_with_their_own_hyperparameters(teacher, tmp_path):
    dataset, teacher_dir = teacher
    configs = [student(seed=s, alpha=a, beta=b) for s, a, b in ((0, 1.0, 0.1), (1, 0.0, 0.0), (2, 2.0, 0.5))]
    results = train_student_group(configs, dataset, teacher_dir, tmp_path / "g")
    assert len(results) == 3
    metas = [load_generator(r["generator"])[1] for r in results]
    assert [m["member_config"]["alpha"] for m in metas] == [1.0, 0.0, 2.0]
    weights = [load_generator(r["generator"])[0].state_dict() for r in results]
    assert not torch.equal(weights[0]["encoder.main.0.weight"], weights[1]["encoder.main.0.weight"])
    with pytest.raises(Exception, match="share"):
        train_student_group([student(), student(ngf=4, init="scratch")], dataset, teacher_dir, tmp_path / "bad")
    # the same folder with other members is not resumed as if they were the old ones
    from sibeatgan.errors import ConfigError

    with pytest.raises(ConfigError, match="member_configs"):
        train_student_group([configs[0], student(seed=7, alpha=0.0, beta=0.0), configs[2]], dataset, teacher_dir, tmp_path / "g")


def test_a_diverged_batched_member_is_stopped_and_never_selected(teacher, tmp_path):
    dataset, teacher_dir = teacher
    configs = [student(seed=0, alpha=float("inf")), student(seed=1)]
    results = train_student_group(configs, dataset, teacher_dir, tmp_path / "g")
    assert results[0]["stopped"] == "diverged" and results[0]["epochs"] == 1
    assert results[1]["stopped"] is None and results[1]["epochs"] == 2


def test_tune_searches_real_students_and_its_best_config_trains(teacher, tmp_path):
    dataset, teacher_dir = teacher
    tune = TuneConfig(n_trials=4, group_size=2, heartbeat_s=1, grace_s=30, T=(2.0, 6.0))
    summary = run_tune(tune, student(epochs=1), dataset, teacher_dir, tmp_path / "tune")
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 4
    from sibeatgan.config import load_config

    best = load_config(StudentConfig, tmp_path / "tune" / "best.json")
    assert best.T == summary["params"]["T"] and best.lambda_fm == summary["params"]["lambda_fm"]
    result = run_train_student(replace(best, epochs=1), dataset, teacher_dir, tmp_path / "best")
    assert Path(result["generator"]).is_file()


def test_tune_logs_the_study_as_a_run_and_each_trial_as_a_child_run(teacher, tmp_path):
    from mlflow.tracking import MlflowClient

    from sibeatgan.config import TrackingConfig

    dataset, teacher_dir = teacher
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tune = TuneConfig(n_trials=2, group_size=2, heartbeat_s=1, grace_s=30)
    run_tune(tune, student(epochs=2), dataset, teacher_dir, tmp_path / "tune", tracking=TrackingConfig(tracking_uri=uri))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("si-beatgan")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("optuna.study") == tune.study_name]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED" and "best_value" in parents[0].data.metrics, "the study's run ends with its result"
    assert "plots/history.png" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1"]
    for r in children:
        assert r.info.status in ("FINISHED", "KILLED", "FAILED") and r.data.tags["optuna.state"] in ("complete", "pruned", "failed")
        assert "lambda_fm" in r.data.params
        history = client.get_metric_history(r.info.run_id, "val_normal_mse")
        assert [m.step for m in history] == [1, 2]


# --- the student's anomaly score: reconstruction, teacher-student discrepancy, or both, chosen on validation ---


def _val_and_test(dataset: Path, fold: int = 0):
    from sibeatgan.data.artifact import load

    ds = load(dataset)
    part = load_split(dataset / "split").fold("beatgan", fold)
    return ds, part


def test_a_student_carries_its_teacher_encoder_and_evaluation_reports_each_score(teacher, tmp_path):
    from sibeatgan.config import EvaluateConfig
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.metrics import latent_gap, ranked_metrics, score
    from sibeatgan.modelio import load_score

    dataset, teacher_dir = teacher
    result = run_train_student(student(), dataset, teacher_dir, tmp_path / "s")
    assert result["score"]["kind"] == "reconstruction" and result["score"]["chosen_by"] == "config"
    anomaly, meta = load_score(result["generator"])
    assert meta["has_teacher_encoder"] and anomaly.kind == "reconstruction"
    t_gen, _ = load_generator(teacher_dir / "generator.pt")
    for a, b in zip(anomaly.teacher_encoder.state_dict().values(), t_gen.encoder.state_dict().values()):
        assert torch.equal(a, b)
    ds, part = _val_and_test(dataset)
    gen, _ = load_generator(result["generator"])
    test_x = torch.from_numpy(ds.float_beats(part.test))
    positive = ds.labels[part.test] != 0
    conf = EvaluateConfig(device="cpu", n_bootstrap=0, plots=False)
    rec = run_evaluate(conf, dataset, result["generator"], tmp_path / "rec")["folds"]["0"]
    assert rec["score"] == "reconstruction" and rec["operating"]["source"] == "model"
    assert rec["auc"] == pytest.approx(ranked_metrics(score(gen, test_x), positive)["auc"])
    gap = run_evaluate(replace(conf, score="discrepancy"), dataset, result["generator"], tmp_path / "gap")["folds"]["0"]
    expected = latent_gap(gen, t_gen.encoder, test_x)
    assert gap["score"] == "discrepancy" and gap["auc"] == pytest.approx(ranked_metrics(expected, positive)["auc"])
    assert gap["auc"] != pytest.approx(rec["auc"])
    # the saved threshold is the reconstruction error's: another score gets its own, chosen on validation beats
    assert gap["operating"]["source"] == "validation" and gap["operating"]["threshold"] != pytest.approx(rec["operating"]["threshold"])
    both = run_evaluate(replace(conf, score="combined"), dataset, result["generator"], tmp_path / "both")["folds"]["0"]
    assert both["score"] == "combined" and both["score_spec"]["weight"] == 0.5
    # registering the student with figures of a score it does not use is refused before anything is written
    from sibeatgan.config import TrackingConfig
    from sibeatgan.registry import RegistryError, run_register

    with pytest.raises(RegistryError, match="discrepancy score"):
        run_register(TrackingConfig(), Path(result["generator"]), tmp_path / "gap", dataset, tmp_path / "reg")
    # a teacher has no teacher: asking it for the discrepancy names what is missing
    from sibeatgan.errors import CheckpointError

    with pytest.raises(CheckpointError, match="teacher's encoder"):
        run_evaluate(replace(conf, score="discrepancy"), dataset, teacher_dir / "generator.pt", tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_score_auto_picks_the_best_validation_auc_and_never_looks_at_test(teacher, tmp_path):
    from sibeatgan.config import EvaluateConfig
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.metrics import choose_threshold, combine, latent_gap, ranked_metrics, score, standardizer

    dataset, teacher_dir = teacher
    result = run_train_student(student(selection="paper", score="auto"), dataset, teacher_dir, tmp_path / "s")
    spec = result["score"]
    ds, part = _val_and_test(dataset)
    gen, meta = load_generator(result["generator"])
    t_gen, _ = load_generator(teacher_dir / "generator.pt")
    val_x, val_labels = torch.from_numpy(ds.float_beats(part.val)), ds.labels[part.val]
    rec, gap = score(gen, val_x), latent_gap(gen, t_gen.encoder, val_x)
    normal = val_labels == 0
    assert spec["reconstruction_stats"] == pytest.approx(standardizer(rec[normal]))
    candidates = {"reconstruction": rec, "discrepancy": gap,
                  **{f"combined@{w:g}": combine(rec, gap, w, spec["reconstruction_stats"], spec["discrepancy_stats"]) for w in (0.25, 0.5, 0.75)}}
    aucs = {name: ranked_metrics(v, ~normal)["auc"] for name, v in candidates.items()}
    assert spec["validation_auc"] == pytest.approx(aucs)
    best = max(aucs, key=aucs.get)
    assert spec["chosen_by"] == "validation AUC" and spec["kind"] == best.split("@")[0]
    assert meta["score"] == spec and json.loads((tmp_path / "s" / "score.json").read_text())["kind"] == spec["kind"]
    assert meta["threshold"] == pytest.approx(choose_threshold(candidates[best], val_labels, "f1"))
    ev = run_evaluate(EvaluateConfig(device="cpu", n_bootstrap=0, plots=True), dataset, result["generator"], tmp_path / "e")["folds"]["0"]
    assert ev["score"] == spec["kind"] and ev["operating"]["source"] == "model"
    assert (tmp_path / "e" / "fold_0" / "hist.png").stat().st_size > 0  # a combined score may be negative: a linear axis then


def test_score_settings_are_checked_before_training(teacher, tmp_path):
    from sibeatgan.errors import ConfigError

    dataset, teacher_dir = teacher
    with pytest.raises(ConfigError, match="selection 'paper'"):
        student(score="auto")  # the clean selection has no validation anomalies to choose with
    with pytest.raises(ConfigError, match="score_weight"):
        student(score="combined", score_weight=1.5)
    with pytest.raises(ConfigError, match="latent codes"):
        run_train_student(student(score="discrepancy", nz=8, init="scratch"), dataset, teacher_dir, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_group_gives_every_member_the_score_it_asks_for(teacher, tmp_path):
    from sibeatgan.modelio import load_score

    dataset, teacher_dir = teacher
    configs = [student(seed=s, score="combined", score_weight=0.25) for s in (0, 1)]
    results = train_student_group(configs, dataset, teacher_dir, tmp_path / "g")
    for r in results:
        anomaly, meta = load_score(r["generator"])
        assert anomaly.kind == "combined" and anomaly.spec["weight"] == 0.25 and meta["threshold"] == r["threshold"]
        assert (Path(r["generator"]).parent / "score.json").is_file()
    # the score is chosen after training: changing it resumes the same run instead of refusing it
    again = train_student_group([replace(c, score="discrepancy") for c in configs], dataset, teacher_dir, tmp_path / "g")
    assert [r["score"]["kind"] for r in again] == ["discrepancy", "discrepancy"]
    assert [r["best_epoch"] for r in again] == [r["best_epoch"] for r in results]


def test_the_pyfunc_of_a_discrepancy_student_scores_as_evaluate_does(teacher, tmp_path):
    import mlflow.pyfunc

    from sibeatgan.config import EvaluateConfig, PreprocessConfig, to_dict
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.pyfunc import save_model

    dataset, teacher_dir = teacher
    result = run_train_student(student(score="discrepancy"), dataset, teacher_dir, tmp_path / "s")
    run_evaluate(EvaluateConfig(device="cpu", n_bootstrap=0, plots=False), dataset, result["generator"], tmp_path / "e")
    from sibeatgan.metrics import latent_gap

    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["folds"]["0"]["score"] == "discrepancy"
    with np.load(tmp_path / "e" / "fold_0" / "scores.npz") as npz:
        index, expected = npz["index"], npz["scores"]
    ds, _ = _val_and_test(dataset)
    gen, _ = load_generator(result["generator"])
    t_gen, _ = load_generator(teacher_dir / "generator.pt")
    np.testing.assert_allclose(expected, latent_gap(gen, t_gen.encoder, torch.from_numpy(ds.float_beats(index))), rtol=1e-6)
    prep = to_dict(PreprocessConfig(before=28, after=36))  # the synthetic beats are 64 samples long
    save_model(tmp_path / "model", result["generator"], prep)
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    got = model.predict(ds.float_beats(index).reshape(len(index), -1).astype(np.float64))
    np.testing.assert_allclose(got["score"].to_numpy(), expected, rtol=1e-5, atol=1e-9)
    assert (got["anomalous"] == (expected >= result["threshold"])).all()


def test_a_discrepancy_that_is_not_finite_leaves_the_reconstruction_score_and_loses_no_work(teacher, tmp_path, caplog):
    from sibeatgan.modelio import load_score
    from sibeatgan.train.distill import _prepare, choose_score

    dataset, teacher_dir = teacher
    config = student(score="discrepancy", epochs=1)
    result = run_train_student(config, dataset, teacher_dir, tmp_path / "s")
    summary = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert summary["score"]["kind"] == "discrepancy" and summary["threshold"] == result["threshold"]  # metrics.json says what the file holds
    data, teacher_g, rt, _ = _prepare(config, dataset, teacher_dir, None)
    with torch.no_grad():
        next(teacher_g.encoder.parameters()).fill_(float("nan"))  # a teacher whose codes are NaN: the gap cannot be used
    spec, threshold = choose_score(config, Path(result["generator"]), teacher_g, data, rt)
    assert spec["kind"] == "reconstruction" and "not finite" in spec["unavailable"] and threshold is not None
    assert "cannot be given" in caplog.text
    anomaly, meta = load_score(result["generator"])
    assert anomaly.kind == "reconstruction" and meta["epoch"] == result["best_epoch"]
