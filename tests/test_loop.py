"""The split artifact and the one training loop: splits decided once, callbacks, members, resume, progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sibeatgan.config import EvaluateConfig, SplitConfig, TeacherConfig
from sibeatgan.data import artifact
from sibeatgan.data.splits import build_splits, load_split, run_split
from sibeatgan.device import Runtime
from sibeatgan.errors import CheckpointError, DatasetError
from sibeatgan.evaluate import run_evaluate
from sibeatgan.modelio import load_generator
from sibeatgan.train.checkpoint import load_checkpoint
from sibeatgan.train.loop import Callback, FitData, FitSettings, fit
from sibeatgan.train.members import SequentialMembers
from sibeatgan.train.teacher import TeacherTrainer, run_train_teacher
from tests.test_teacher import small_config, synthetic_dataset

CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("beats"), n_normal=900, n_per_class=40, length=64)


# --- the split artifact -------------------------------------------------------------------------


def test_split_artifact_round_trips_and_is_verified(dataset, tmp_path):
    ds = artifact.load(dataset)
    info = run_split(SplitConfig(split_seed=5), dataset, tmp_path / "s")
    loaded = load_split(tmp_path / "s", ds.content_hash())
    assert loaded.hash == info["hash"] and loaded.split_seed == 5
    assert loaded.protocols() == {"beatgan": [0, 1, 2, 3, 4]}  # synthetic records are neither DS1 nor DS2
    for k in range(5):
        s = loaded.fold("beatgan", k)
        assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
        assert (ds.labels[s.train] == 0).all()
    with pytest.raises(DatasetError, match="no 'interpatient' split"):
        loaded.fold("interpatient")
    assert load_split(dataset / "split").hash != loaded.hash  # another split seed, another artifact

    np.savez_compressed(tmp_path / "s" / "split.npz", **{"beatgan/0/train": np.arange(3)})  # tampered
    with pytest.raises(DatasetError, match="missing array|content hash"):
        load_split(tmp_path / "s")
    with pytest.raises(DatasetError, match="not for this one"):
        load_split(dataset / "split", "0" * 64)


def test_split_is_independent_of_the_training_seed(dataset, tmp_path):
    """Two teachers with different training seeds are trained on the same beats and tested on identical beats."""
    runs = {seed: run_train_teacher(small_config(epochs=1, seed=seed, max_train_beats=None), dataset, tmp_path / f"t{seed}")
            for seed in (0, 1)}
    assert runs[0]["split_hash"] == runs[1]["split_hash"] == load_split(dataset / "split").hash
    assert runs[0]["n_train"] == runs[1]["n_train"] and runs[0]["n_val"] == runs[1]["n_val"]
    evals = {seed: run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), dataset, tmp_path / f"t{seed}", tmp_path / f"e{seed}")
             for seed in (0, 1)}
    idx = [np.load(tmp_path / f"e{seed}" / "fold_0" / "scores.npz")["index"] for seed in (0, 1)]
    np.testing.assert_array_equal(idx[0], idx[1])
    assert evals[0]["split_hash"] == evals[1]["split_hash"]
    scores = [np.load(tmp_path / f"e{seed}" / "fold_0" / "scores.npz")["scores"] for seed in (0, 1)]
    assert not np.allclose(scores[0], scores[1])  # two different models on the same beats


def test_a_model_is_refused_on_another_split(dataset, tmp_path):
    run_train_teacher(small_config(epochs=1), dataset, tmp_path / "t")
    run_split(SplitConfig(split_seed=9), dataset, tmp_path / "other")
    with pytest.raises(DatasetError, match="trained on split"):
        run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), dataset, tmp_path / "t", tmp_path / "e", split=tmp_path / "other")
    # and trained on the other split, it is evaluated there
    run_train_teacher(small_config(epochs=1), dataset, tmp_path / "t2", split=tmp_path / "other")
    result = run_evaluate(EvaluateConfig(n_bootstrap=0, plots=False), dataset, tmp_path / "t2", tmp_path / "e2", split=tmp_path / "other")
    assert result["split_hash"] == load_split(tmp_path / "other").hash


def test_a_dataset_without_a_split_names_the_command_that_makes_one(dataset, tmp_path):
    bare = tmp_path / "bare"
    artifact.save(artifact.load(dataset), bare)
    with pytest.raises(DatasetError, match="sibeatgan split --dataset"):
        run_train_teacher(small_config(epochs=1), bare, tmp_path / "t")


def test_a_split_never_replaces_another_in_place(dataset, tmp_path):
    run_split(SplitConfig(split_seed=1), dataset, tmp_path / "s")
    run_split(SplitConfig(split_seed=1), dataset, tmp_path / "s")  # the same split again: fine
    with pytest.raises(DatasetError, match="already holds split"):
        run_split(SplitConfig(split_seed=2), dataset, tmp_path / "s")


def test_build_splits_refuses_a_bad_fraction(dataset):
    with pytest.raises(DatasetError, match="val_fraction"):
        build_splits(artifact.load(dataset), val_fraction=1.5)


# --- the loop -----------------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self, stop: dict[int, int] | None = None, raise_at: int | None = None):
        self.started: dict | None = None
        self.epochs: list[tuple[int, list]] = []
        self.ended: dict | None = None
        self.stop, self.raise_at = stop or {}, raise_at

    def on_fit_start(self, info):
        self.started = info

    def on_epoch_end(self, epoch, rows, control):
        self.epochs.append((epoch, rows))
        for k, at in self.stop.items():
            if epoch == at:
                control.stop(k, "pruned")
        if epoch == self.raise_at:
            raise KeyboardInterrupt("killed by a callback")

    def on_fit_end(self, result):
        self.ended = result


def loop_data(dataset: Path) -> FitData:
    ds = artifact.load(dataset)
    split = load_split(dataset / "split")
    part = split.fold("beatgan", 0)
    train = part.train[:256]
    return FitData(torch.from_numpy(ds.float_beats(train)), torch.from_numpy(ds.float_beats(part.val)), ds.labels[part.val],
                   ds.content_hash(), split.hash, "beatgan", 0)


def members(k: int) -> SequentialMembers:
    return SequentialMembers([TeacherTrainer(1, 64, CPU, ngf=8, ndf=8, nz=8, batch_size=32, seed=s, lambda_fm=0.5 * (s + 1)) for s in range(k)])


def test_callbacks_see_every_loss_and_validation_value(dataset, tmp_path):
    rec = Recorder()
    result = fit(members(1), loop_data(dataset), tmp_path, FitSettings(epochs=2, eval_batch_size=128), [rec])
    assert rec.started["members"] == 1 and rec.started["first_epoch"] == 1
    assert [e for e, _ in rec.epochs] == [1, 2]
    row = rec.epochs[-1][1][0]
    assert {"loss_d", "loss_g", "loss_rec", "loss_fm", "val_normal_mse", "val_auc", "epoch_seconds"} <= set(row)
    assert rec.ended["best_epoch"] == result["best_epoch"] and result["threshold"] > 0
    _, meta = load_generator(result["generator"])
    assert meta["threshold"] == result["threshold"] and meta["split_hash"] == loop_data(dataset).split_hash


def test_members_are_selected_apart_and_a_stopped_member_stops(dataset, tmp_path):
    trainer = members(3)
    rec = Recorder(stop={1: 1})
    result = fit(trainer, loop_data(dataset), tmp_path, FitSettings(epochs=3, eval_batch_size=128,
                                                                    member_configs=[{"lambda_fm": 0.5 * (s + 1)} for s in range(3)]), [rec])
    assert [m["epochs"] for m in result["members"]] == [3, 1, 3]
    assert result["members"][1]["stopped"] == "pruned"
    assert rec.epochs[1][1][1] is None and rec.epochs[1][1][0] is not None  # member 1 no longer reported after epoch 1
    gens = [load_generator(m["generator"]) for m in result["members"]]
    assert [g[1]["member_config"]["lambda_fm"] for g in gens] == [0.5, 1.0, 1.5]
    # member 0 trained alone gives the same weights: members do not disturb each other
    alone = fit(members(1), loop_data(dataset), tmp_path / "alone", FitSettings(epochs=3, eval_batch_size=128))
    a, b = load_generator(alone["generator"])[0].state_dict(), gens[0][0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["members"]) == 3 and saved["members"][1]["stopped"] == "pruned"


def test_a_run_killed_in_a_callback_resumes_from_its_checkpoint(dataset, tmp_path):
    straight = fit(members(2), loop_data(dataset), tmp_path / "a", FitSettings(epochs=3, eval_batch_size=128))
    with pytest.raises(KeyboardInterrupt):
        fit(members(2), loop_data(dataset), tmp_path / "b", FitSettings(epochs=3, eval_batch_size=128), [Recorder(raise_at=2)])
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    resumed = fit(members(2), loop_data(dataset), tmp_path / "b", FitSettings(epochs=3, eval_batch_size=128))
    for m_a, m_b in zip(straight["members"], resumed["members"]):
        assert m_a["best_metric"] == m_b["best_metric"] and m_a["best_epoch"] == m_b["best_epoch"]
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())["members"][0]["history"]
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())["members"][0]["history"]
    assert [h["loss_g"] for h in ha] == [h["loss_g"] for h in hb]


def test_resume_refuses_another_split_and_names_the_switch(dataset, tmp_path):
    data = loop_data(dataset)
    fit(members(1), data, tmp_path, FitSettings(epochs=1, eval_batch_size=128))
    data.split_hash = "f" * 64
    with pytest.raises(CheckpointError, match="--no-resume"):
        fit(members(1), data, tmp_path, FitSettings(epochs=2, eval_batch_size=128))


def test_progress_off_a_terminal_is_log_lines_only(dataset, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="sibeatgan.train.loop")
    fit(members(1), loop_data(dataset), tmp_path, FitSettings(epochs=2, eval_batch_size=128, progress=True))
    err = capfd.readouterr().err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err  # no bar when stderr is not a terminal
    assert sum("epoch" in r.getMessage() and "val_normal_mse" in r.getMessage() for r in caplog.records) == 2


def test_steps_are_reported_inside_an_epoch(dataset):
    seen: list[tuple[int, int]] = []
    trainer = members(1).trainers[0]
    trainer.set_train_data(loop_data(dataset).train_x)
    trainer.train_epoch(lambda i, n: seen.append((i, n)))
    assert seen == [(i, 8) for i in range(1, 9)]  # 256 beats, batch 32
