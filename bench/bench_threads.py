"""Teacher training beats/s at torch.set_num_threads(1) and (2), as the machine is and beside busy processes.

Each measurement runs in a fresh Python process (so the thread pool is set before torch does any work): a
BeatGAN teacher (the default sizes: ngf 32, ndf 32, nz 50, batch 64) trains one warm-up epoch and then
`--epochs` epochs of `--steps` steps on synthetic beats of 320 samples; the figure is the median beats/s
of the timed epochs. The thread counts alternate within each repeat, so slow moments of the machine fall on
both. Condition `ambient` is the machine as it is (the 1-minute load average before each measurement is
recorded: `quiet` when it is under 0.5); `loaded` adds `--load N` busy Python processes (a spin loop each),
ended by pid afterwards. Every measurement is appended to <out>/threads.jsonl as it finishes.

    PYTHONPATH=. python bench/bench_threads.py --threads 1,2 --repeats 4 --load 1 --out bench/results/threads

Writes <out>/threads.json (every measurement, with the load average before it) and <out>/threads.npz
(float32: per-epoch seconds of every measurement, and the per-beat reconstruction scores of 256 held-out
beats after each measurement, which show that the thread count changes the speed and not what is learnt).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPIN = "import time\nwhile True:\n    pass\n"


def measure(threads: int, steps: int, epochs: int, batch_size: int) -> dict:
    """One measurement in this process: set the thread count, train, time every epoch."""
    import torch

    torch.set_num_threads(threads)
    from bench.bench_teacher import synthetic
    from sibeatgan.device import select
    from sibeatgan.metrics import score
    from sibeatgan.train.teacher import TeacherTrainer

    rt = select("cpu")
    trainer = TeacherTrainer(1, 320, rt, batch_size=batch_size, seed=0)
    trainer.set_train_data(torch.from_numpy(synthetic(batch_size * steps, 320, seed=0)))
    trainer.train_epoch()  # warm-up: allocator, oneDNN kernels chosen
    rows = [trainer.train_epoch() for _ in range(epochs)]
    held_out = torch.from_numpy(synthetic(256, 320, seed=1))
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "epoch_s": [r["train_seconds"] for r in rows], "beats_per_s": float(np.median([r["beats_per_s"] for r in rows])),
            "scores": score(trainer.G, held_out, 256, rt.device).tolist()}


def run_child(threads: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(threads), "--steps", str(args.steps), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIBEATGAN_TORCH_THREADS": str(threads)}  # sibeatgan.device.select keeps it
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="thread counts to compare, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement (after one warm-up epoch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--load", type=int, default=1, help="busy processes for the loaded half (0: quiet half only)")
    p.add_argument("--conditions", default="ambient,loaded", help="ambient, loaded or both")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "threads")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.steps, args.epochs, args.batch_size)))
        return 0
    counts = [int(t) for t in args.threads.split(",")]
    conditions = [c for c in args.conditions.split(",") if c]
    if unknown := sorted(set(conditions) - {"ambient", "loaded"}):
        p.error(f"--conditions: unknown {', '.join(unknown)} (ambient, loaded)")
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "threads.jsonl"
    runs = []
    for condition in conditions:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.load if condition == "loaded" else 0)]
        try:
            time.sleep(1.0 if spinners else 0.0)
            for repeat in range(args.repeats):
                order = counts if repeat % 2 == 0 else counts[::-1]
                for threads in order:
                    load_before = os.getloadavg()
                    result = run_child(threads, args)
                    runs.append({"condition": condition, "busy_processes": len(spinners), "repeat": repeat, "load_before": load_before,
                                 **result})
                    with journal.open("a") as f:
                        f.write(json.dumps({k: v for k, v in runs[-1].items() if k != "scores"}) + "\n")
                    print(f"{condition:6s} repeat {repeat} threads {threads}: {result['beats_per_s']:7.1f} beats/s "
                          f"(load {load_before[0]:.2f})", flush=True)
        finally:
            for proc in spinners:  # only the processes started here, by their own pid
                proc.kill()
                proc.wait()
    summary = {}
    for condition in conditions:
        for threads in counts:
            values = [r["beats_per_s"] for r in runs if r["condition"] == condition and r["threads"] == threads]
            if values:
                summary[f"{condition}/{threads}"] = {"median": float(np.median(values)), "min": min(values), "max": max(values),
                                                     "n": len(values)}
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "command": "python bench/bench_threads.py " + " ".join(argv if argv is not None else sys.argv[1:]), "summary": summary}
    rows = [{k: v for k, v in r.items() if k != "scores"} for r in runs]
    (args.out / "threads.json").write_text(json.dumps({**meta, "runs": rows}, indent=1))
    np.savez_compressed(args.out / "threads.npz", epoch_s=np.array([r["epoch_s"] for r in runs], np.float32),
                        scores=np.array([r["scores"] for r in runs], np.float32),
                        threads=np.array([r["threads"] for r in runs]), loaded=np.array([r["condition"] == "loaded" for r in runs]))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
