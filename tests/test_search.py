"""The Optuna search: groups of trials trained as members, parallel workers on one journal, crashed workers retried.

The groups here are small BeatGAN generators searched over lambda and lr (a real search on real training);
the student's group trainer plugs into the same `train_group` slot.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sibeatgan.config import StudentConfig, TuneConfig
from sibeatgan.data import artifact
from sibeatgan.data.splits import load_split
from sibeatgan.device import Runtime
from sibeatgan.errors import ConfigError
from sibeatgan.search import OptunaReporter, open_study, reap_stale, run_workers, suggest, tune_worker, write_outputs
from sibeatgan.train.loop import Control, FitData, FitSettings, fit
from sibeatgan.train.members import SequentialMembers
from sibeatgan.train.teacher import TeacherTrainer
from tests.test_teacher import synthetic_dataset

optuna = pytest.importorskip("optuna")
pytest_plugins = ["tests.services"]

BASE = StudentConfig(epochs=2, seed=0, device="cpu")


def tiny_tune(**kw) -> TuneConfig:
    base = dict(n_trials=4, group_size=2, heartbeat_s=0.2, grace_s=1.5, pruner_warmup_epochs=5, lr=(1e-4, 5e-4), T=(2.0, 2.0))
    base.update(kw)
    return TuneConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("beats"), n_normal=700, n_per_class=30, length=64)


class GroupTrainer:
    """A picklable train_group (for spawned workers): small generators with each trial's lambda, lr and seed."""

    def __init__(self, dataset: Path, pause_s: float = 0.0, fail: bool = False, nan_first: bool = False):
        self.dataset, self.pause_s, self.fail, self.nan_first = dataset, pause_s, fail, nan_first

    def __call__(self, configs, out, callbacks):
        if self.fail:
            raise RuntimeError("this group crashed")
        ds = artifact.load(self.dataset)
        split = load_split(self.dataset / "split")
        part = split.fold("beatgan", 0)
        data = FitData(torch.from_numpy(ds.float_beats(part.train[:192])), torch.from_numpy(ds.float_beats(part.val)),
                       ds.labels[part.val], ds.content_hash(), split.hash, "beatgan", 0)
        trainers = [TeacherTrainer(1, 64, Runtime(torch.device("cpu")), ngf=4, ndf=4, nz=4, batch_size=32, seed=c.seed,
                                   lambda_fm=c.lambda_fm, lr=c.lr)
                    for c in configs]
        if self.nan_first and len(configs) > 1:  # member 0 diverged: NaN weights, so NaN scores and a NaN criterion
            with torch.no_grad():
                trainers[0].G.encoder.main[0].weight.fill_(math.nan)
        slow = [Pause(self.pause_s)] if self.pause_s else []
        settings = FitSettings(epochs=configs[0].epochs, eval_batch_size=256, kind="student", member_configs=[{"seed": c.seed} for c in configs])
        result = fit(SequentialMembers(trainers), data, out, settings, [*callbacks, *slow])
        return result["members"] if "members" in result else [result]


class Pause:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_fit_start(self, info):
        pass

    def on_epoch_end(self, epoch, rows, control):
        time.sleep(self.seconds)

    def on_fit_end(self, result):
        pass


def test_the_search_space_is_one_function():
    study = optuna.create_study()
    trial = study.ask()
    config = suggest(trial, TuneConfig(init=("teacher", "scratch")), StudentConfig(seed=10))
    assert set(trial.params) == {"lambda_fm", "T", "tau", "alpha", "beta", "lr", "init"}
    assert 0.1 <= config.lambda_fm <= 10 and 1 <= config.T <= 8 and 0.05 <= config.tau <= 1
    assert config.seed == 10 + trial.number and config.init in ("teacher", "scratch")


def test_a_study_resumes_to_its_budget_and_writes_its_outputs(dataset, tmp_path):
    tune_worker(tiny_tune(n_trials=2), BASE, tmp_path, GroupTrainer(dataset))
    study = open_study(tiny_tune(), "clean", tmp_path)
    assert len(study.trials) == 2
    tune_worker(tiny_tune(n_trials=4), BASE, tmp_path, GroupTrainer(dataset))  # the rerun goes on to the new budget
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # reported every epoch
    summary = write_outputs(tiny_tune(n_trials=4), BASE, tmp_path)
    best = json.loads((tmp_path / "summary.json").read_text())
    assert best["value"] == min(t.value for t in study.trials) and best["criterion"] == "val_normal_mse"
    assert best["student"]["lambda_fm"] == study.best_trial.params["lambda_fm"]
    assert Path(best["generator"]).is_file()
    from sibeatgan.config import load_config

    loaded = load_config(StudentConfig, tmp_path / "best.json")  # what train-student --config reads
    assert loaded.lambda_fm == best["student"]["lambda_fm"] and loaded.seed == study.best_trial.number
    assert (tmp_path / "trials.csv").read_text().count("\n") == 5
    assert any(p.endswith("history.png") for p in summary["plots"])


def test_two_worker_processes_share_one_study(dataset, tmp_path):
    summary = run_workers(tiny_tune(n_trials=4, workers=2, group_size=1), BASE, tmp_path, GroupTrainer(dataset))
    study = open_study(tiny_tune(), "clean", tmp_path)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}  # both took trials
    assert summary["trials"]["complete"] == 4


def _killed_worker(dataset: Path, out: Path) -> None:
    tune_worker(tiny_tune(n_trials=2, group_size=2), BASE, out, GroupTrainer(dataset, pause_s=30))


def test_a_worker_killed_mid_trial_has_its_trials_retried(dataset, tmp_path):
    proc = multiprocessing.get_context("spawn").Process(target=_killed_worker, args=(dataset, tmp_path))
    proc.start()
    study = None
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until its two trials have reported an epoch
        time.sleep(0.5)
        if (tmp_path / "study.journal").exists():
            study = open_study(tiny_tune(), "clean", tmp_path)
            if sum(len(t.intermediate_values) for t in study.trials) >= 2:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING"]
    time.sleep(2.0)  # past the grace period: the heartbeats have stopped
    tune_worker(tiny_tune(n_trials=2, group_size=2), BASE, tmp_path, GroupTrainer(dataset))
    trials = study.get_trials()
    assert [t.state.name for t in trials[:2]] == ["FAIL", "FAIL"]
    retried = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["retry_of"] for t in retried) == [0, 1]
    assert [t.params for t in retried] == [trials[0].params, trials[1].params]


def test_crashed_and_diverged_trials_fail_and_the_study_goes_on(dataset, tmp_path):
    with pytest.raises(Exception, match="failed"):
        tune_worker(tiny_tune(n_trials=1, group_size=1), BASE, tmp_path / "always", GroupTrainer(dataset, fail=True))
    study = open_study(tiny_tune(), "clean", tmp_path / "always")
    assert {t.state.name for t in study.trials} == {"FAIL"} and "crashed" in study.trials[0].user_attrs["error"]
    tune_worker(tiny_tune(n_trials=2, group_size=2), BASE, tmp_path / "nan", GroupTrainer(dataset, nan_first=True))
    study = open_study(tiny_tune(), "clean", tmp_path / "nan")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") >= 2 and "FAIL" in states  # the diverged member failed, another trial took its place


def test_the_reporter_prunes_the_members_the_pruner_prunes():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trials = [study.ask(), study.ask(), study.ask()]
    control = Control(3)
    reporter = OptunaReporter(trials, "val_normal_mse")
    reporter.on_epoch_end(1, [{"val_normal_mse": 0.5}, {"val_normal_mse": 2.0}, {"val_normal_mse": math.nan}], control)
    assert control.stopped == [None, "pruned", "diverged"]
    assert trials[0].storage.get_trial(trials[0]._trial_id).intermediate_values == {1: 0.5}


def test_bad_search_ranges_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="alpha: range"):
        TuneConfig(alpha=(0.0, 1.0))
    with pytest.raises(ConfigError, match="tau: range"):
        TuneConfig(tau=(1.0, 0.1))
    with pytest.raises(ConfigError, match="init"):
        TuneConfig(init=("teacher", "nope"))


def test_a_study_of_the_other_direction_is_refused(tmp_path):
    open_study(tiny_tune(), "clean", tmp_path)
    with pytest.raises(ConfigError, match="direction"):
        open_study(tiny_tune(), "paper", tmp_path)


def test_stale_trials_without_params_are_failed_not_retried(tmp_path):
    study = open_study(tiny_tune(), "clean", tmp_path)
    study.ask()
    time.sleep(0.1)
    assert reap_stale(study, grace_s=0.05, max_retry=2) == [0]
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_two_workers_share_a_study_on_a_real_postgresql(mlflow_services, dataset, tmp_path):
    """The cluster's storage: a PostgreSQL database (here the test suite's own throwaway server)."""
    import subprocess

    pg = mlflow_services.pg
    subprocess.run(pg._as_owner(str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "optuna_test"),
                   check=True, capture_output=True)
    tune = tiny_tune(n_trials=4, workers=2, group_size=1, storage=pg.url("optuna_test"))
    summary = run_workers(tune, BASE, tmp_path, GroupTrainer(dataset))
    study = optuna.load_study(study_name=tune.study_name, storage=pg.url("optuna_test"))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3] and {t.user_attrs["worker"] for t in study.trials} == {0, 1}
    assert summary["trials"]["complete"] == 4 and not (tmp_path / "study.journal").exists()


def test_an_unreachable_database_is_named_without_its_password(tmp_path):
    from sibeatgan.errors import SibeatganError

    tune = tiny_tune(storage="postgresql+psycopg2://optuna:s3cret@127.0.0.1:1/optuna")
    with pytest.raises(SibeatganError, match=r"optuna:\*\*\*@127.0.0.1:1/optuna cannot be reached") as err:
        open_study(tune, "clean", tmp_path)
    assert "s3cret" not in str(err.value)
