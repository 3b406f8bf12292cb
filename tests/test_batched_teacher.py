"""K teachers of different (fold, seed) in one step: member k follows its single teacher on its own beats and seed; a
stopped member is frozen; the group's run writes each member's generator with its own card and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sibeatgan.errors import ConfigError
from sibeatgan.train.batched_teacher import BatchedTeacherTrainer, run_train_teachers
from sibeatgan.train.checkpoint import load_checkpoint, load_generator
from sibeatgan.train.teacher import TeacherTrainer, run_train_teacher
from tests.test_student import data
from tests.test_teacher import CPU, dataset, small_config  # noqa: F401 - dataset is a fixture

ARCH = dict(ngf=8, ndf=8, nz=8, batch_size=16)
# Two members of different sizes: 64 beats (4 steps of 16) and 88 (5 steps), so member 0 sits out a step every epoch.
SETS = [np.arange(0, 64), np.arange(40, 128)]
SEEDS = [3, 5]
# As in tests/test_batched.py: after training, every weight within 5% of how far that tensor moved (plus 1e-6).
REL_TOL, ABS_TOL = 0.05, 1e-6
LOSSES = ("loss_d", "loss_g", "loss_rec", "loss_fm")


def flat(states: dict) -> torch.Tensor:
    return torch.cat([v.float().flatten() for name in ("G", "D") for k, v in states[name].items() if "num_batches" not in k])


def single_flat(tr: TeacherTrainer) -> torch.Tensor:
    return flat({"G": tr.G.state_dict(), "D": tr.D.state_dict()})


@pytest.mark.parametrize("threshold,epochs", [(5e-6, 2), (1e9, 1)], ids=["reference", "reinit-every-step"])
def test_member_k_matches_its_single_teacher(threshold: float, epochs: int):
    """The same init, beats, order, losses and weights as TeacherTrainer with member k's seed on member k's beats
    (with D redrawn at every step too: each member's redraws come from its own stream, as its single run's do)."""
    x = data(128)
    bt = BatchedTeacherTrainer(1, 64, CPU, SETS, SEEDS, d_reinit_threshold=threshold, **ARCH)
    start = [flat(bt.member_states(k)) for k in range(2)]
    bt.set_train_data(x)
    rows = [bt.train_epoch() for _ in range(epochs)]
    assert [r["steps"] for r in rows] == [5] * epochs and rows[0]["beats"] == (4 + 5) * 16
    finals = []
    for k, (beats, seed) in enumerate(zip(SETS, SEEDS)):
        st = TeacherTrainer(1, 64, CPU, seed=seed, d_reinit_threshold=threshold, **ARCH)
        assert torch.equal(single_flat(st), start[k]), "the same initial draws"
        st.set_train_data(x[beats])
        for epoch in range(epochs):
            row = st.train_epoch()
            for name in LOSSES:
                assert rows[epoch][name][k] == pytest.approx(row[name], rel=1e-4, abs=1e-7), (k, epoch, name)
            assert rows[epoch]["d_reinits"][k] == row["d_reinits"]
        want, got = single_flat(st), flat(bt.member_states(k))
        moved = (want - start[k]).abs().max()
        assert moved > 0 and (got - want).abs().max() <= REL_TOL * moved + ABS_TOL, k
        finals.append(want)
    assert rows[-1]["d_reinits"] == ([0, 0] if threshold < 1 else [4, 5])
    # the tolerance tells members apart
    assert (flat(bt.member_states(0)) - finals[1]).abs().max() > 10 * REL_TOL * (finals[1] - start[1]).abs().max()
    scores = bt.score(x[:20])
    assert scores.shape == (2, 20)
    for k in range(2):
        torch.testing.assert_close(torch.from_numpy(scores[k]), torch.from_numpy(_single_score(bt.generator(k), x[:20])))


def _single_score(g, x):
    g.eval()
    with torch.no_grad():
        return (g(x).reconstruction - x).pow(2).flatten(1).mean(1).numpy()


def test_a_stopped_member_is_frozen_and_the_others_go_on():
    x = data(128)
    bt = BatchedTeacherTrainer(1, 64, CPU, SETS, SEEDS, **ARCH)
    bt.set_train_data(x)
    bt.train_epoch()
    before = [flat(bt.member_states(k)) for k in range(2)]
    moments = bt.opt_g.exp_avg.clone()
    bt.set_active([False, True])
    row = bt.train_epoch()
    assert row["active"] == [False, True] and row["beats"] == 5 * 16
    assert torch.equal(flat(bt.member_states(0)), before[0]), "weights and BatchNorm statistics"
    assert torch.equal(bt.opt_g.exp_avg[0], moments[0])
    assert not torch.equal(flat(bt.member_states(1)), before[1])


def test_members_must_differ_only_in_fold_and_seed(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"lr \(0.0001 vs 0.001\)"):
        run_train_teachers([small_config(), small_config(fold=1, lr=1e-3)], dataset, tmp_path)
    with pytest.raises(ConfigError, match="distinct"):
        run_train_teachers([small_config(), small_config()], dataset, tmp_path)
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchedTeacherTrainer(1, 64, CPU, [np.arange(8)], [0], **ARCH)


def test_the_group_writes_each_teacher_as_its_single_run_would(dataset, tmp_path):
    """Two (fold, seed) teachers as one group: each member's generator, card, sizes and validation history match
    run_train_teacher's for its config; a killed group resumes to the very weights of an uninterrupted one."""
    configs = [small_config(fold=0, seed=3), small_config(fold=2, seed=4)]
    result = run_train_teachers(configs, dataset, tmp_path / "group")
    metrics = json.loads((tmp_path / "group" / "metrics.json").read_text())["members"]
    for k, config in enumerate(configs):
        single = run_train_teacher(config, dataset, tmp_path / f"single{k}")
        member = result["members"][k]
        assert (member["fold"], member["n_train"], member["n_val"]) == (single["fold"], single["n_train"], single["n_val"])
        card = json.loads((tmp_path / "group" / f"member_{k}" / "model_card.json").read_text())
        assert (card["kind"], card["fold"], card["seed"]) == ("teacher", config.fold, config.seed)
        mine = [h["val_normal_mse"] for h in metrics[k]["history"]]
        theirs = [h["val_normal_mse"] for h in json.loads((tmp_path / f"single{k}" / "metrics.json").read_text())["history"]]
        assert mine == pytest.approx(theirs, rel=1e-2)  # float rounding, grown over 48 Adam steps (0.14% seen)
        g, meta = load_generator(member["generator"])
        assert meta["fold"] == config.fold and meta["epoch"] == single["best_epoch"]
    assert result["members"][0]["fold"] != result["members"][1]["fold"]

    run_train_teachers([c.model_copy(update={"epochs": 1}) for c in configs], dataset, tmp_path / "killed")
    run_train_teachers(configs, dataset, tmp_path / "killed")
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt")["trainer"] for name in ("group", "killed"))
    for part in ("G", "D"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def test_the_group_step_writes_model_folders_and_one_mlflow_run_per_teacher(dataset, tmp_path, monkeypatch):
    """sibeatgan.steps.train.run_train_teacher_group: `teacher-f<fold>-s<seed>/` model folders as run_train_teacher writes
    them, and one MLflow run per teacher tagged with its own fold and seed, with its own curves."""
    from mlflow import MlflowClient

    from sibeatgan.card import read_card
    from sibeatgan.config import TrackingConfig
    from sibeatgan.steps.train import run_train_teacher_group

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configs = [small_config(fold=1, seed=0, epochs=2), small_config(fold=3, seed=2, epochs=2)]
    done = run_train_teacher_group(configs, dataset, tmp_path / "teachers", TrackingConfig(tracking_uri=uri, experiment="group"))
    assert list(done) == ["teacher-f1-s0", "teacher-f3-s2"]
    for (name, result), config in zip(done.items(), configs):
        folder = tmp_path / "teachers" / name
        assert {f.name for f in folder.iterdir()} >= {"generator.pt", "model_card.json", "metrics.json"}
        card = read_card(folder)
        assert (card.fold, card.seed, card.kind) == (config.fold, config.seed, "teacher")
        assert json.loads((folder / "metrics.json").read_text())["fold"] == config.fold
        assert result["generator"] == str(folder / "generator.pt")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("group").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == set(done)
    for name, config in zip(done, configs):
        run = by_name[name]
        assert run.info.status == "FINISHED" and run.data.tags["fold"] == str(config.fold) and run.data.tags["seed"] == str(config.seed)
        assert len(client.get_metric_history(run.info.run_id, "val_normal_mse")) == 2


def test_the_teacher_benchmark_runs_with_torch_and_numpy(tmp_path):
    """bench/bench_batched.py --model teacher (what bench/gpu_batched_teacher.sh runs on the GPU), at tiny size on the CPU."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "b.json"
    done = subprocess.run([sys.executable, str(root / "bench" / "bench_batched.py"), "--model", "teacher", "--device", "cpu", "--steps", "1",
                           "--members", "1,2", "--impl", "grouped,loop", "--repeats", "1", "--length", "64", "--ngf", "8", "--ndf", "8",
                           "--nz", "8", "--batch-size", "16", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["model"] == "teacher" and [(r["K"], r["impl"]) for r in result["rows"]] == [(1, "grouped"), (1, "loop"), (2, "grouped"), (2, "loop")]
    assert all(r["batched_beats_per_s"] > 0 and r["graph_captured"] is False for r in result["rows"])


def test_a_killed_group_with_redraws_resumes_to_the_same_weights(dataset, tmp_path):
    """D redrawn at every step: each member's permutation and redraw streams are saved and restored with the group."""
    configs = [small_config(fold=0, seed=3, d_reinit_threshold=1e9), small_config(fold=2, seed=4, d_reinit_threshold=1e9)]
    run_train_teachers(configs, dataset, tmp_path / "straight")
    run_train_teachers([c.model_copy(update={"epochs": 1}) for c in configs], dataset, tmp_path / "killed")
    run_train_teachers(configs, dataset, tmp_path / "killed")
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt")["trainer"] for name in ("straight", "killed"))
    assert sum(a["reinit_rng"][0] != b["reinit_rng"][0]) == 0
    for part in ("G", "D"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def test_synthetic_selection_shifts_each_members_own_validation_beats(dataset, tmp_path):
    """selection=synthetic: member k's label-free criterion is computed on its own validation beats shifted as its
    single run shifts them, so it matches that run's (up to float rounding), not a copy drawn over every member's beats."""
    configs = [small_config(fold=0, seed=3, epochs=1, selection="synthetic"), small_config(fold=2, seed=4, epochs=1, selection="synthetic")]
    group = json.loads((Path(run_train_teachers(configs, dataset, tmp_path / "group")["metrics"])).read_text())["members"]
    for k, config in enumerate(configs):
        single = json.loads(Path(run_train_teacher(config, dataset, tmp_path / f"single{k}")["metrics"]).read_text())
        assert group[k]["history"][0]["val_synthetic_auc"] == pytest.approx(single["history"][0]["val_synthetic_auc"], abs=5e-4)


def test_the_device_equivalence_check_passes_on_the_cpu(tmp_path):
    """bench/batched_teacher_check.py (gpu_batched_teacher.sh's first step, for CUDA's kernels and graphs) at tiny size."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "eq.json"
    done = subprocess.run([sys.executable, str(root / "bench" / "batched_teacher_check.py"), "--device", "cpu", "--ngf", "8", "--ndf", "8",
                           "--nz", "8", "--length", "64", "--batch-size", "16", "--steps", "5", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ok"] and [m["beats"] for m in result["members"]] == [64, 80]
    assert all(m["same_init"] and m["d_reinits"] == m["single_d_reinits"] for m in result["members"])


def test_a_gpu_group_state_loads_on_the_cpu(caplog):
    """Members' generator states from a GPU run (philox) cannot be set on CPU generators: the group goes on, and says so."""
    x = data(128)
    source = BatchedTeacherTrainer(1, 64, CPU, SETS, SEEDS, **ARCH)
    source.set_train_data(x)
    source.train_epoch()
    state = source.state_dict()
    state["perm_rng"] = [torch.arange(16, dtype=torch.uint8)] * 2  # philox (CUDA) generator states
    target = BatchedTeacherTrainer(1, 64, CPU, SETS, [7, 9], **ARCH)
    target.load_state_dict(state)
    assert "member 1's perm_rng" in caplog.text and "another device type" in caplog.text
    assert torch.equal(flat(target.member_states(0)), flat(source.member_states(0)))
