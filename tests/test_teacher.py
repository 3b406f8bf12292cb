"""BeatGAN teacher training: the step, D re-initialisation, the CUDA-graph protocol, learning, resume, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sibeatgan.config import TeacherConfig
from sibeatgan.data import artifact
from sibeatgan.data.splits import load_split, make_split
from sibeatgan.device import Runtime
from sibeatgan.errors import CheckpointError, ConfigError, DatasetError
from sibeatgan.evaluate import ranked_metrics, score
from sibeatgan.models import Generator
from sibeatgan.models.beatgan import init_spec
from sibeatgan.train.checkpoint import load_checkpoint, load_generator
from sibeatgan.train.teacher import TeacherTrainer, run_train_teacher
from tests import conftest

CPU = Runtime(torch.device("cpu"))


def synthetic_beats(labels: np.ndarray, length: int, nc: int, seed: int) -> np.ndarray:
    """Smooth P-QRS-T beats for label 0; S (early, no P), V (wide, inverted T), F (wide), Q (noise) otherwise."""
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    t = np.linspace(0.0, 1.0, length)[None, :]

    def bump(center, width, amp):
        return amp[:, None] * np.exp(-0.5 * ((t - center[:, None]) / width[:, None]) ** 2)

    def jit(mean, sd):
        return mean + rng.normal(0.0, sd, n)

    shift = np.where(labels == 1, -0.12, 0.0) + rng.normal(0.0, 0.004, n)
    qrs = jit(0.012, 0.0006) * np.select([labels == 2, labels == 3], [4.0, 2.2], 1.0)
    t_amp = jit(0.3, 0.02) * np.where(labels == 2, -1.5, 1.0)
    p_amp = jit(0.15, 0.015) * (labels != 1)
    x = (
        bump(0.30 + shift, jit(0.03, 0.002), p_amp)
        + bump(0.42 + shift, qrs, jit(-0.1, 0.01))
        + bump(0.4375 + shift, qrs, jit(1.0, 0.05))
        + bump(0.455 + shift, qrs, jit(-0.2, 0.02))
        + bump(0.65 + shift, jit(0.05, 0.003), t_amp)
    )
    noise = np.cumsum(rng.normal(0.0, 0.08, (n, length)), axis=1)
    x = np.where((labels == 4)[:, None], noise, x) + rng.normal(0.0, 0.005, (n, length))
    leads = np.stack([x * (1.0 - 0.3 * k) + 0.1 * k * np.roll(x, 3 * k, axis=1) for k in range(nc)], axis=1)
    lo, hi = leads.min(axis=2, keepdims=True), leads.max(axis=2, keepdims=True)
    return (2 * (leads - lo) / (hi - lo) - 1).astype(np.float32)


def synthetic_dataset(out: Path, n_normal: int = 1500, n_per_class: int = 60, length: int = 160, nc: int = 1, seed: int = 0) -> Path:
    """A BeatDataset folder of synthetic beats with BeatGAN folds and its default split artifact, as preprocess writes them."""
    labels = np.concatenate([np.zeros(n_normal, np.uint8)] + [np.full(n_per_class, c, np.uint8) for c in range(1, 5)])
    labels = labels[np.random.default_rng(seed).permutation(labels.shape[0])]
    ds = conftest.make_dataset(labels, synthetic_beats(labels, length, nc, seed), records=("100",), seed=seed,
                               meta={"source": "test_teacher synthetic"})
    return conftest.save_dataset(ds, out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("beats"))


def small_config(**kw) -> TeacherConfig:
    base = dict(ngf=8, ndf=8, nz=16, epochs=2, max_train_beats=384, eval_batch_size=512, device="cpu", seed=3)
    base.update(kw)
    return TeacherConfig(**base)


def trainer(seed: int = 0, graphs=None, **kw) -> TeacherTrainer:
    return TeacherTrainer(1, 64, CPU, ngf=8, ndf=8, nz=8, batch_size=16, seed=seed, graphs=graphs, **kw)


def weights(tr: TeacherTrainer) -> dict[str, torch.Tensor]:
    return {f"G.{k}": v.clone() for k, v in tr.G.state_dict().items()} | {f"D.{k}": v.clone() for k, v in tr.D.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


class FakeGraphs:
    """CPU stand-in for CudaGraphs with CUDA's semantics: capture records without running, replay runs."""

    def __init__(self):
        self.calls: list[str] = []
        self.fn = None

    def warmup(self, fn):
        self.calls.append("warmup")
        fn()

    def capture(self, fn):
        self.calls.append("capture")
        self.fn = fn

    def replay(self):
        self.calls.append("replay")
        self.fn()


def test_graph_protocol_matches_eager_steps():
    x = torch.from_numpy(synthetic_beats(np.zeros(100, np.uint8), 64, 1, 1))
    eager, graphed = trainer(), trainer(graphs=FakeGraphs())
    for tr in (eager, graphed):
        tr.set_train_data(x)
        stats = [tr.train_epoch() for _ in range(2)]
    assert graphed.graphs.fn == graphed.step  # the captured callable is the eager step itself
    assert graphed.graphs.calls[:5] == ["warmup"] * 3 + ["capture", "replay"]
    assert graphed.graphs.calls.count("replay") == 2 * (100 // 16) - 3  # every batch ran exactly once
    assert stats[-1]["steps"] == 6 and stats[-1]["beats"] == 96
    assert_same(weights(eager), weights(graphed))


def test_step_learns_and_reports_losses_from_device_sums():
    x = torch.from_numpy(synthetic_beats(np.zeros(256, np.uint8), 64, 1, 2))
    tr = trainer(lr=1e-3)
    tr.set_train_data(x)
    first = tr.train_epoch()
    for _ in range(6):
        last = tr.train_epoch()
    assert set(first) >= {"loss_d", "loss_g", "loss_rec", "loss_fm", "d_reinits", "beats_per_s"}
    assert all(math.isfinite(first[k]) for k in ("loss_d", "loss_g", "loss_rec", "loss_fm"))
    assert first["loss_g"] == pytest.approx(first["loss_rec"] + first["loss_fm"], rel=1e-5)
    assert last["loss_rec"] < 0.5 * first["loss_rec"]


def test_d_reinit_redraws_weights_only_when_the_flag_is_set():
    tr = trainer(seed=5)
    with torch.no_grad():
        for p in tr.D.parameters():
            p.fill_(0.5)
    tr._reinit_d(torch.tensor(False))
    assert all(bool((p == 0.5).all()) for p in tr.D.parameters())
    tr._reinit_d(torch.tensor(True))
    for m in tr.D.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            assert bool((m.bias == 0).all()) and abs(float(m.weight.detach().mean()) - 1) < 0.02
        elif isinstance(m, torch.nn.Conv1d):
            fan = (m.weight.shape[0] + m.weight.shape[1]) * m.weight.shape[2]
            assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan), rel=0.25)


def test_d_reinit_draws_from_the_same_spec_as_init_weights():
    tr = trainer(seed=5)
    spec = [entry for m in tr.D.modules() for entry in init_spec(m)]
    assert [id(p) for p in tr._d_params] == [id(p) for p, _, _ in spec] == [id(p) for p in tr.D.parameters()]
    assert tr._d_mean == [mean for _, mean, _ in spec] and tr._d_std == [std for _, _, std in spec]
    assert any(std > 0 for std in tr._d_std) and any(std == 0 for std in tr._d_std)


def test_d_reinit_fires_inside_the_step_below_the_threshold():
    x = torch.from_numpy(synthetic_beats(np.zeros(64, np.uint8), 64, 1, 3))
    never, always = trainer(d_reinit_threshold=0.0), trainer(d_reinit_threshold=1e9)
    for tr in (never, always):
        tr.set_train_data(x)
    assert never.train_epoch()["d_reinits"] == 0
    assert always.train_epoch()["d_reinits"] == 4
    # after a reinit D's weights are fresh draws, not what its Adam step made of them
    before = always.D.features[0].weight.detach().clone()
    always.train_epoch()
    assert not torch.equal(before, always.D.features[0].weight)


def test_trainer_refuses_less_than_one_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        trainer().set_train_data(torch.zeros(5, 1, 64))


def test_synthetic_training_learns(dataset, tmp_path):
    config = small_config(epochs=6, max_train_beats=None, selection="paper", lr=1e-3)
    result = run_train_teacher(config, dataset, tmp_path)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["val_normal_mse"] < 0.5 * history[0]["val_normal_mse"]
    gen, meta = load_generator(result["generator"])
    ds = artifact.load(dataset)
    split = make_split(ds, "beatgan", 0, 0.1, config.seed)
    test_scores = score(gen, torch.from_numpy(ds.float_beats(split.test)), 256, "cpu")
    assert ranked_metrics(test_scores, ds.labels[split.test] != 0)["auc"] > 0.9
    assert meta["selection"] == "paper" and meta["epoch"] == result["best_epoch"]
    assert meta["metric"] == max(h["val_auc"] for h in history)


@pytest.mark.parametrize("threshold", [5e-6, 1e9], ids=["reference", "reinit-every-step"])
def test_resume_continues_at_the_next_epoch_and_matches_an_uninterrupted_run(dataset, tmp_path, caplog, threshold):
    run_train_teacher(small_config(epochs=4, d_reinit_threshold=threshold), dataset, tmp_path / "straight")
    run_train_teacher(small_config(epochs=2, d_reinit_threshold=threshold), dataset, tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 2
    caplog.set_level("INFO", logger="sibeatgan.train.loop")
    resumed = run_train_teacher(small_config(epochs=4, d_reinit_threshold=threshold), dataset, tmp_path / "killed")
    assert "resuming" in caplog.text and "at epoch 3" in caplog.text
    assert resumed["epochs"] == 4
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    for part in ("G", "D"):
        assert_same(a["trainer"][part], b["trainer"][part])
    sa, sb = a["selection_state"], b["selection_state"]
    assert [h["loss_g"] for h in sa["histories"][0]] == [h["loss_g"] for h in sb["histories"][0]]
    assert sa["best_epoch"] == sb["best_epoch"] and sa["best"] == sb["best"] and sa["thresholds"] == sb["thresholds"]
    ga, _ = load_generator(tmp_path / "straight" / "generator.pt")
    gb, _ = load_generator(tmp_path / "killed" / "generator.pt")
    assert_same(ga.state_dict(), gb.state_dict())


def test_outputs_describe_themselves(dataset, tmp_path):
    config = small_config(epochs=1)
    result = run_train_teacher(config, dataset, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["selection"] == "clean" and metrics["criterion"] == "val_normal_mse"
    row = metrics["history"][0]
    for key in ("loss_d", "loss_g", "loss_rec", "loss_fm", "d_reinits", "val_normal_mse", "val_auc", "epoch_seconds", "beats_per_s"):
        assert key in row, key
    assert row["beats"] == (384 // 64) * 64
    assert metrics["best_metric"] == row["val_normal_mse"]
    gen, meta = load_generator(result["generator"])
    assert meta["hparams"] == {"nc": 1, "length": 160, "nz": 16, "ngf": 8}
    assert meta["dataset_hash"] == artifact.load(dataset).content_hash()
    assert meta["config"]["fold"] == 0 and meta["criterion"] == "val_normal_mse" and meta["kind"] == "teacher"
    assert meta["split_hash"] == load_split(dataset / "split").hash and meta["threshold"] == metrics["threshold"] > 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert {"trainer", "config", "epoch", "selection", "dataset_hash", "split_hash", "selection_state"} <= set(ckpt)
    assert {"histories", "best", "best_epoch", "thresholds", "stopped"} <= set(ckpt["selection_state"])
    assert {"G", "D", "opt_g", "opt_d", "perm_rng", "torch_rng"} <= set(ckpt["trainer"])
    assert not list(tmp_path.glob("*.tmp"))


def nan_scores_in_epochs(monkeypatch, bad_epochs: set[int]) -> None:
    """Make the validation scores of the given epochs NaN, as a diverged generator's would be."""
    from sibeatgan.train import teacher

    calls = []

    def scoring(*args, **kw):
        calls.append(1)
        out = score(*args, **kw)
        return np.full_like(out, np.nan) if len(calls) in bad_epochs else out

    monkeypatch.setattr(teacher, "score", scoring)


@pytest.mark.parametrize("selection", ["clean", "paper"])
def test_an_epoch_with_a_nan_criterion_is_never_selected(dataset, tmp_path, monkeypatch, caplog, selection):
    nan_scores_in_epochs(monkeypatch, {1})
    caplog.set_level("WARNING", logger="sibeatgan.train.loop")
    result = run_train_teacher(small_config(epochs=3, selection=selection), dataset, tmp_path)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    criterion = "val_auc" if selection == "paper" else "val_normal_mse"
    assert history[0][criterion] is None and all(math.isfinite(h[criterion]) for h in history[1:])  # NaN is null in strict JSON
    assert result["best_epoch"] in (2, 3) and math.isfinite(result["best_metric"])
    assert result["best_metric"] == history[result["best_epoch"] - 1][criterion]
    assert load_generator(result["generator"])[1]["epoch"] == result["best_epoch"]
    assert "epoch 1" in caplog.text and "not considered for selection" in caplog.text


def test_no_finite_criterion_in_any_epoch_is_an_error(dataset, tmp_path, monkeypatch):
    nan_scores_in_epochs(monkeypatch, {1, 2})
    with pytest.raises(CheckpointError, match="none of the 2 epoch.*finite val_normal_mse"):
        run_train_teacher(small_config(epochs=2), dataset, tmp_path)
    assert not (tmp_path / "generator.pt").exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["selection_state"]["best"] == [None]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["best_metric"] is None and len(saved["history"]) == 2


def test_resume_refuses_a_changed_config_or_dataset(dataset, tmp_path):
    run_train_teacher(small_config(epochs=1), dataset, tmp_path)
    with pytest.raises(ConfigError, match="lambda_fm"):
        run_train_teacher(small_config(epochs=2, lambda_fm=0.5), dataset, tmp_path)
    other = synthetic_dataset(tmp_path / "other", seed=9)
    with pytest.raises(CheckpointError, match="dataset"):
        run_train_teacher(small_config(epochs=2), other, tmp_path)
    # resume=False starts afresh in the same folder
    result = run_train_teacher(small_config(epochs=1, lambda_fm=0.5), dataset, tmp_path, resume=False)
    assert result["epochs"] == 1 and result["config"]["lambda_fm"] == 0.5


def test_corrupt_checkpoint_is_named(dataset, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        run_train_teacher(small_config(epochs=1), dataset, tmp_path)


def test_paper_selection_needs_anomalies_in_validation(tmp_path):
    normal_only = synthetic_dataset(tmp_path / "normal", n_per_class=0)
    with pytest.raises(DatasetError, match="selection='paper'"):
        run_train_teacher(small_config(selection="paper"), normal_only, tmp_path / "out")


def test_two_leads_and_another_length(tmp_path):
    data = synthetic_dataset(tmp_path / "two", n_normal=400, n_per_class=10, length=96, nc=2)
    result = run_train_teacher(small_config(epochs=1, max_train_beats=128), data, tmp_path / "out")
    gen, meta = load_generator(result["generator"])
    assert meta["hparams"]["nc"] == 2 and meta["hparams"]["length"] == 96
    assert gen(torch.zeros(3, 2, 96)).reconstruction.shape == (3, 2, 96)


def test_files_of_another_format_are_refused(dataset, tmp_path):
    result = run_train_teacher(small_config(epochs=1), dataset, tmp_path)
    with pytest.raises(CheckpointError, match="expected 'sibeatgan-generator'"):
        load_generator(result["checkpoint"])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_device_selection_on_this_machine():
    from sibeatgan.device import resolve_device, select

    assert select("cpu", amp=True, cuda_graph=True) == Runtime(torch.device("cpu"), False, False)
    with pytest.raises(ConfigError, match="not supported"):
        resolve_device("meta")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_bench_runs_with_torch_and_numpy_only(tmp_path):
    """bench/bench_teacher.py must run on a GPU node that has torch and numpy but none of the pipeline's other packages."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    blocked = ("yaml", "sklearn", "matplotlib", "scipy", "tqdm", "wfdb", "mlflow", "optuna", "kfp", "pandas", "great_expectations", "biosppy", "boto3")
    (tmp_path / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(root / "bench" / "bench_teacher.py"), "--device", "cpu", "--train-beats", "128", "--score-beats", "128",
           "--score-batch", "64", "--repeats", "1", "--epochs", "1", "--modes", "eager,graph", "--json", str(out)]
    done = subprocess.run(cmd, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    train = [r for r in rows if r["what"] == "train"]
    assert train[0]["mode"] == "eager" and train[0]["step_ms"] > 0 and train[0]["epoch_s_at_64681"] > 0
    assert "skipped" in train[1]  # no CUDA here
    assert {r["amp"] for r in rows if r["what"] == "score"} == {False, True}
    assert all(r["beats_per_s"] > 0 and r["beats_per_s_with_copy"] > 0 for r in rows if r["what"] == "score")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_training_matches_eager_training_on_gpu():
    x = torch.from_numpy(synthetic_beats(np.zeros(200, np.uint8), 64, 1, 4))
    eager = TeacherTrainer(1, 64, Runtime(torch.device("cuda", 0)), ngf=8, ndf=8, nz=8, batch_size=16, seed=1)
    graphed = TeacherTrainer(1, 64, Runtime(torch.device("cuda", 0), cuda_graph=True), ngf=8, ndf=8, nz=8, batch_size=16, seed=1)
    for tr in (eager, graphed):
        tr.set_train_data(x)
        for _ in range(2):
            tr.train_epoch()
    assert graphed._captured
    for (k, a), b in zip(weights(eager).items(), weights(graphed).values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=k)


def test_a_gpu_checkpoint_state_loads_on_the_cpu(caplog):
    """Optimizer flags (capturable, fused) and a CUDA permutation RNG from a GPU run must not break a CPU resume."""
    x = torch.from_numpy(synthetic_beats(np.zeros(64, np.uint8), 64, 1, 5))
    source = trainer(seed=2)
    source.set_train_data(x)
    source.train_epoch()
    state = source.state_dict()
    for key in ("opt_g", "opt_d"):
        for group in state[key]["param_groups"]:
            group["capturable"], group["fused"] = True, True
    state["perm_rng"] = torch.arange(16, dtype=torch.uint8)  # a philox (CUDA) generator state
    target = trainer(seed=9)
    target.load_state_dict(state)
    assert "another device type" in caplog.text
    assert all(not g["capturable"] and not g["fused"] for g in target.opt_g.param_groups)
    assert_same({k: v for k, v in weights(source).items()}, weights(target))
    target.set_train_data(x)
    assert math.isfinite(target.train_epoch()["loss_g"])


def test_generator_running_statistics_move_as_in_the_reference():
    """The reference runs G twice per step on one batch; one forward here must leave the same running statistics."""
    tr = trainer(seed=6)
    reference = Generator(1, 64, 8, 8).train()
    reference.load_state_dict(tr.G.state_dict())
    x = torch.from_numpy(synthetic_beats(np.zeros(16, np.uint8), 64, 1, 6))
    with torch.no_grad():
        tr.G(x)
        reference(x)
        reference(x)
    for (k, a), b in zip(tr.G.state_dict().items(), reference.state_dict().values()):
        if "running" in k:
            torch.testing.assert_close(a, b, msg=k)


def test_gpu_script_checks_folds_and_summarizes_fold_results(tmp_path):
    """bench/gpu_teacher.sh: FOLDS is checked before any work; SUMMARY_ONLY averages the per-fold files of several calls."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_teacher.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    bad = subprocess.run(["bash", str(script)], env=env | {"FOLDS": "0,5"}, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "FOLDS must be" in bad.stderr
    for fold, auc in ((0, 0.90), (1, 0.94), (3, 0.92)):
        per_class = {"S": auc - 0.1, "V": auc} if fold else {"V": auc}
        (tmp_path / f"train_fold{fold}.json").write_text(json.dumps({"test_auc": auc, "test_ap": 0.8, "test_f1": 0.7, "per_class_auc": per_class}))
    done = subprocess.run(["bash", str(script)], env=env | {"SUMMARY_ONLY": "1"}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "folds.json").read_text())
    assert summary["folds"] == [0, 1, 3] and summary["complete"] is False
    assert summary["test_auc"]["mean"] == pytest.approx(0.92) and summary["test_auc"]["sd"] == pytest.approx(0.02)
    assert summary["per_class_auc"]["S"]["mean"] == pytest.approx(0.83) and summary["per_class_auc"]["V"]["mean"] == pytest.approx(0.92)
