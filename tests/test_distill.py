"""The student's steps on the one loop: train-student, a batched group of members, and tune with real students."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sibeatgan.config import SplitConfig, StudentConfig, TuneConfig, replace
from sibeatgan.data.splits import load_split, run_split
from sibeatgan.errors import DatasetError
from sibeatgan.modelio import load_generator
from sibeatgan.train.distill import run_train_student, run_tune, train_student_group
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
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1"]
    for r in children:
        assert r.info.status in ("FINISHED", "KILLED", "FAILED") and r.data.tags["optuna.state"] in ("complete", "pruned", "failed")
        assert "lambda_fm" in r.data.params
        history = client.get_metric_history(r.info.run_id, "val_normal_mse")
        assert [m.step for m in history] == [1, 2]
