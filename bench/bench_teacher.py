"""Benchmark of the BeatGAN teacher: training epoch time and beats/s, inference (scoring) beats/s.

Needs only torch and numpy (no wfdb, sklearn, yaml...). Beats come from a dataset folder written
by `sibeatgan preprocess` (the normal beats outside fold 0, 90% of them: about the fold-0 training
set) or, without --dataset, synthetic beats of the real size (64,681 x 1 x 320).

    PYTHONPATH=. python bench/bench_teacher.py                        # whatever device is present
    PYTHONPATH=. python bench/bench_teacher.py --modes eager,graph,graph-amp --epochs 3 --json out.json
    PYTHONPATH=. python bench/bench_teacher.py --device cpu --train-beats 2048 --modes eager

With --train-beats, fewer beats are trained on and the epoch time is extrapolated to the full set
(steps of the full set x measured seconds per step); the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sibeatgan.device import Runtime, select  # noqa: E402
from sibeatgan.metrics import score  # noqa: E402
from sibeatgan.train.teacher import TeacherTrainer  # noqa: E402

FULL_TRAIN = 64_681  # BeatGAN fold-0 training beats on the full MIT-BIH set


def synthetic(n: int, length: int = 320, seed: int = 0) -> np.ndarray:
    """n beat-like windows (a jittered QRS spike and T wave on a wandering baseline) in [-1, 1], float32."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, length, dtype=np.float32)[None, :]
    out = np.empty((n, 1, length), np.float32)
    for start in range(0, n, 8192):
        k = min(8192, n - start)
        c = 0.4375 + rng.normal(0, 0.01, (k, 1)).astype(np.float32)
        x = np.exp(-0.5 * ((t - c) / 0.012) ** 2) + 0.3 * np.exp(-0.5 * ((t - c - 0.2) / 0.05) ** 2)
        x += 0.05 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 2, (k, 1)) + rng.random((k, 1))))
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
        out[start : start + k, 0] = 2 * (x - lo) / (hi - lo) - 1
    return out


def dataset_beats(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training-like normal beats, all beats) of a dataset folder, without the yaml-dependent split module."""
    from sibeatgan.data.artifact import load

    ds = load(path)
    pool = np.flatnonzero((ds.labels == 0) & (ds.folds != 0))
    pool = np.sort(np.random.default_rng(seed).permutation(pool)[: int(round(0.9 * pool.size))])
    return ds.float_beats(pool), ds.float_beats()


def sync(rt: Runtime) -> None:
    if rt.is_cuda:
        torch.cuda.synchronize(rt.device)


def bench_train(beats: np.ndarray, mode: str, device: str, epochs: int, full: int) -> dict:
    rt = select(device, amp="amp" in mode, cuda_graph="graph" in mode)
    if ("graph" in mode and not rt.cuda_graph) or ("amp" in mode and not rt.amp):
        return {"what": "train", "mode": mode, "skipped": f"needs CUDA; running on {rt.device}"}
    trainer = TeacherTrainer(beats.shape[1], beats.shape[2], rt)
    trainer.set_train_data(torch.from_numpy(beats))
    rows = []
    for _ in range(epochs):
        sync(rt)
        rows.append(trainer.train_epoch())
    steady = rows[1:] or rows
    per_step = float(np.median([r["train_seconds"] / r["steps"] for r in steady]))
    return {
        "what": "train", "mode": mode, "runtime": rt.describe(), "beats": int(beats.shape[0]), "epochs": epochs,
        "first_epoch_s": rows[0]["train_seconds"], "step_ms": 1e3 * per_step,
        "epoch_s_measured": float(np.median([r["train_seconds"] for r in steady])),
        "epoch_s_full": per_step * (full // trainer.batch_size), "full_beats": full,
        f"epoch_s_at_{FULL_TRAIN}": per_step * (FULL_TRAIN // trainer.batch_size),
        "train_beats_per_s": trainer.batch_size / per_step, "loss_rec_last": rows[-1]["loss_rec"],
        "d_reinits": sum(r["d_reinits"] for r in rows), "graph_captured": bool(trainer._captured),
    }


def check_graph(device: str = "cuda", steps_per_epoch: int = 10, epochs: int = 2) -> dict:
    """Train the same seeded model eagerly and through the CUDA graph; report how far their weights drift apart."""
    if not select(device, cuda_graph=True).cuda_graph:
        return {"what": "check_graph", "skipped": f"needs CUDA; running on {select(device).device}"}
    x = torch.from_numpy(synthetic(64 * steps_per_epoch, 320, seed=1))
    trainers = []
    for graph in (False, True):
        tr = TeacherTrainer(1, 320, select(device, cuda_graph=graph), seed=11)
        tr.set_train_data(x)
        losses = [tr.train_epoch()["loss_g"] for _ in range(epochs)]
        trainers.append((tr, losses))
    (a, la), (b, lb) = trainers
    diff = max(float((p - q).abs().max()) for p, q in zip(list(a.G.parameters()) + list(a.D.parameters()), list(b.G.parameters()) + list(b.D.parameters())))
    return {"what": "check_graph", "captured": bool(b._captured), "max_abs_weight_diff": diff, "loss_g_eager": la, "loss_g_graph": lb,
            "ok": bool(b._captured) and diff < 1e-3}


def bench_score(beats: np.ndarray, device: str, batch_sizes: list[int], amp: bool, repeats: int) -> list[dict]:
    """Scoring beats/s through metrics.score with the beats already on the device (what run_evaluate does after
    its one copy), and again with that host-to-device copy of the whole set included."""
    rt = select(device)
    torch.manual_seed(0)
    from sibeatgan.models import Generator

    gen = Generator(beats.shape[1], beats.shape[2]).to(rt.device).eval()
    host = torch.from_numpy(beats)
    x = host.to(rt.device)
    out = []
    for bs in batch_sizes:
        score(gen, x[: 2 * bs], bs, rt.device, amp)  # warm-up: kernels, cuDNN autotuning
        sync(rt)
        times, copied = [], []
        for _ in range(repeats):
            # as run_evaluate does: the beats are on the device before score(); score() ends with a
            # device-to-host copy of the scores, so it is synchronous
            start = time.perf_counter()
            score(gen, x, bs, rt.device, amp)
            times.append(time.perf_counter() - start)
            sync(rt)
            start = time.perf_counter()
            score(gen, host.to(rt.device), bs, rt.device, amp)  # the same with run_evaluate's one host-to-device copy
            copied.append(time.perf_counter() - start)
        best, best_copied = min(times), min(copied)
        out.append({"what": "score", "device": str(rt.device), "amp": amp, "batch_size": bs, "beats": int(x.shape[0]),
                    "seconds": best, "beats_per_s": x.shape[0] / best,
                    "seconds_with_copy": best_copied, "beats_per_s_with_copy": x.shape[0] / best_copied})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, help="a beat dataset folder; default: synthetic beats of the real size")
    p.add_argument("--device", default="auto")
    p.add_argument("--modes", default="eager,graph,graph-amp", help="comma list of eager, amp, graph, graph-amp")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per mode (the first is reported apart)")
    p.add_argument("--train-beats", type=int, help="train on this many beats and extrapolate the epoch time")
    p.add_argument("--score-beats", type=int, help="score this many beats (default: all)")
    p.add_argument("--score-batch", default="256,1024,4096,16384")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--check-graph", action="store_true", help="first compare CUDA-graph and eager training of one seeded model")
    p.add_argument("--json", type=Path, help="write all results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    # sibeatgan.device.select sets the CPU thread count from this: --threads, else torch's own (as these figures were taken)
    os.environ["SIBEATGAN_TORCH_THREADS"] = str(a.threads) if a.threads else os.environ.get("SIBEATGAN_TORCH_THREADS", "torch")
    if a.dataset:
        train, every = dataset_beats(a.dataset)
        source = str(a.dataset)
    else:
        train = every = synthetic(FULL_TRAIN)
        source = "synthetic"
    full = train.shape[0]
    if a.train_beats:
        train = train[: a.train_beats]
    if a.score_beats:
        every = every[: a.score_beats]
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                           "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
               "source": source, "results": []}
    print(json.dumps(results["machine"]), flush=True)
    if a.check_graph:
        row = check_graph(a.device)
        results["results"].append(row)
        print(json.dumps(row), flush=True)
    batch_sizes = [int(b) for b in a.score_batch.split(",")]
    for amp in (False, True):
        for row in bench_score(every, a.device, batch_sizes, amp, a.repeats):
            results["results"].append(row)
            print(json.dumps(row), flush=True)
    if not a.skip_train:
        for mode in a.modes.split(","):
            row = bench_train(train, mode.strip(), a.device, a.epochs, full)
            results["results"].append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
