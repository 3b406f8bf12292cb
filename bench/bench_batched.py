"""Benchmark of K models trained at once against K sequential single runs: students (BatchedStudentTrainer against
StudentTrainer) or teachers of K different (fold, seed) pairs (BatchedTeacherTrainer against TeacherTrainer).

Needs only torch and numpy. Beats are synthetic (bench_teacher.synthetic), the teacher a freshly drawn
Generator: throughput does not depend on what the weights are. Batched teachers each train on their own subset
of the beats (as folds do), in their own order. K sequential runs take K times one run's
time, so their aggregate beats/s is one run's beats/s; a batched run's aggregate is K * batch * steps / time.
Each figure is the fastest of `--repeats` timed epochs after one warm-up epoch (on CUDA the warm-up epoch
also captures the CUDA graph), the runs interleaved so that load from other processes hits both alike.
Beside wall-clock beats/s, beats per CPU-second of this process (time.process_time) are reported: on a
CPU shared with other jobs they measure the work done rather than the share of the CPU obtained.

    PYTHONPATH=. python bench/bench_batched.py --device cpu --steps 2 --members 1,4,8,16
    PYTHONPATH=. python bench/bench_batched.py --device cuda --steps 50 --batch-size 64 --json bench/batched_gpu.json
    PYTHONPATH=. python bench/bench_batched.py --device cuda --impl grouped,loop   # both kernels of the members' convolutions
    PYTHONPATH=. python bench/bench_batched.py --model teacher --device cuda --amp --members 1,4,8   # K teachers (gpu_batched_teacher.sh)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_teacher import synthetic  # noqa: E402

from sibeatgan.device import select  # noqa: E402
from sibeatgan.models import Generator  # noqa: E402
from sibeatgan.models.batched import set_impl  # noqa: E402
from sibeatgan.train.batched_teacher import BatchedTeacherTrainer  # noqa: E402
from sibeatgan.train.student import BatchedStudentTrainer, StudentTrainer  # noqa: E402
from sibeatgan.train.teacher import TeacherTrainer  # noqa: E402


def make_teacher(kind: str, k: int, args: argparse.Namespace, impl: str):
    """One TeacherTrainer on steps * batch beats, or K members, each on its own steps * batch of twice as many."""
    rt = select(args.device, amp=args.amp, cuda_graph=not args.no_graph)
    common = dict(nz=args.nz, ngf=args.ngf, ndf=args.ndf, batch_size=args.batch_size)
    n = args.batch_size * args.steps
    if kind == "single":
        trainer = TeacherTrainer(1, args.length, rt, seed=0, **common)
        trainer.set_train_data(torch.from_numpy(synthetic(n, args.length)))
        return trainer, rt
    rng = np.random.default_rng(0)
    sets = [np.sort(rng.choice(2 * n, size=n, replace=False)) for _ in range(k)]
    trainer = BatchedTeacherTrainer(1, args.length, rt, sets, list(range(k)), **common)
    set_impl(trainer.G, impl)
    set_impl(trainer.D, impl)
    trainer.set_train_data(torch.from_numpy(synthetic(2 * n, args.length)))
    return trainer, rt


def make(kind: str, k: int, args: argparse.Namespace, impl: str):
    if args.model == "teacher":
        return make_teacher(kind, k, args, impl)
    rt = select(args.device, amp=args.amp, cuda_graph=not args.no_graph)
    torch.manual_seed(0)
    teacher = Generator(1, args.length, args.nz, args.ngf)
    common = dict(ngf=args.ngf, ndf=args.ndf, batch_size=args.batch_size)
    if kind == "single":
        trainer = StudentTrainer(teacher, rt, seed=0, **common)
    else:
        trainer = BatchedStudentTrainer(teacher, rt, k, seed=list(range(k)), lr=[1e-4 * (1 + i) for i in range(k)],
                                        T=[1.0 + i for i in range(k)], tau=[0.1 + 0.05 * i for i in range(k)], **common)
        set_impl(trainer.G, impl)
        set_impl(trainer.D, impl)
        set_impl(trainer.head, impl)
    trainer.set_train_data(torch.from_numpy(synthetic(args.batch_size * args.steps, args.length)))
    return trainer, rt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", choices=("student", "teacher"), default="student", help="what the members are")
    p.add_argument("--members", default="1,4,8,16", help="comma-separated K")
    p.add_argument("--impl", default="auto", help="comma-separated: auto, grouped, loop (how member convolutions run)")
    p.add_argument("--steps", type=int, default=2, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per run (the fastest counts)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--length", type=int, default=320)
    p.add_argument("--nz", type=int, default=50)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=32)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--no-graph", action="store_true", help="eager steps on CUDA instead of one captured graph")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # sibeatgan.device.select sets the CPU thread count from this: --threads, else torch's own (as these figures were taken)
    os.environ["SIBEATGAN_TORCH_THREADS"] = str(args.threads) if args.threads else os.environ.get("SIBEATGAN_TORCH_THREADS", "torch")
    members = [int(k) for k in args.members.split(",")]
    impls = args.impl.split(",")
    runs = {("single", 1, "-"): make("single", 1, args, "auto")}
    for k in members:
        for impl in impls:
            runs[("batched", k, impl)] = make("batched", k, args, impl)
    rt = next(iter(runs.values()))[1]
    for trainer, _ in runs.values():  # warm-up epoch (and graph capture)
        trainer.train_epoch()
    best: dict[tuple, float] = {key: float("inf") for key in runs}
    cpu: dict[tuple, float] = {key: float("inf") for key in runs}
    for _ in range(args.repeats):
        for key, (trainer, _) in runs.items():
            if rt.is_cuda:
                torch.cuda.synchronize(rt.device)
            started = time.process_time()
            best[key] = min(best[key], trainer.train_epoch()["train_seconds"])
            cpu[key] = min(cpu[key], time.process_time() - started)
    beats = args.batch_size * args.steps
    single = beats / best[("single", 1, "-")]
    single_cpu = beats / cpu[("single", 1, "-")]
    rows = []
    for (kind, k, impl), seconds in best.items():
        if kind == "single":
            continue
        per_cpu = k * beats / cpu[(kind, k, impl)]
        rows.append({"K": k, "impl": impl, "graph_captured": runs[(kind, k, impl)][0]._captured,
                     "batched_beats_per_s": k * beats / seconds, "sequential_beats_per_s": single,
                     "speedup_vs_sequential": k * beats / seconds / single, "step_ms": 1e3 * seconds / args.steps,
                     "batched_beats_per_cpu_s": per_cpu, "sequential_beats_per_cpu_s": single_cpu, "cpu_speedup": per_cpu / single_cpu})
    result = {
        "model": args.model, "device": rt.describe(), "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
        "threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()},
        "single_beats_per_s": single, "single_graph_captured": runs[("single", 1, "-")][0]._captured,
        "single_step_ms": 1e3 * best[("single", 1, "-")] / args.steps, "rows": rows,
    }
    print(f"{args.model}s on {rt.describe()}; one run: {single:,.0f} beats/s ({result['single_step_ms']:.1f} ms/step)")
    print(f"{'K':>3} {'impl':>8} {'batched b/s':>12} {'sequential b/s':>15} {'speedup':>8} {'b/cpu-s':>9} {'seq b/cpu-s':>12} {'cpu speedup':>12}")
    for r in rows:
        print(f"{r['K']:>3} {r['impl']:>8} {r['batched_beats_per_s']:>12,.0f} {r['sequential_beats_per_s']:>15,.0f} {r['speedup_vs_sequential']:>8.2f}"
              f" {r['batched_beats_per_cpu_s']:>9,.0f} {r['sequential_beats_per_cpu_s']:>12,.0f} {r['cpu_speedup']:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
