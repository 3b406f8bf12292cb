"""Do K batched teachers follow their single runs on this device? The CUDA half of tests/test_batched_teacher.py.

Two members of different sizes (the smaller one sits out the last steps of each epoch) with D redrawn at every
step, against TeacherTrainer with each member's seed on its beats, both with this device's defaults (on CUDA the
grouped kernels and the step captured as a CUDA graph). Reports, per member, the largest weight difference as a
fraction of how far the weights moved, the loss differences and the re-initialisation counts; `ok` when every
member is within the test suite's tolerance (5% of the movement). Needs torch and numpy (and pydantic).

    PYTHONPATH=. python bench/batched_teacher_check.py --device cuda --json OUT/equivalence.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_teacher import synthetic  # noqa: E402

from sibeatgan.device import select  # noqa: E402
from sibeatgan.train.batched_teacher import BatchedTeacherTrainer  # noqa: E402
from sibeatgan.train.teacher import LOSS_NAMES, TeacherTrainer  # noqa: E402

REL_TOL = 0.05


def flat(states: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([v.detach().float().cpu().flatten() for s in states for k, v in s.items() if "num_batches" not in k])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=12, help="steps of the larger member per epoch")
    p.add_argument("--epochs", type=int, default=1, help="more than 1 with --threshold 1e9: the smaller member's redraws are offset (see the module)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--length", type=int, default=320)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=32)
    p.add_argument("--nz", type=int, default=50)
    p.add_argument("--threshold", type=float, default=1e9, help="D re-initialisation threshold (1e9: every step)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    rt = select(args.device, amp=False, cuda_graph=True)
    b, n = args.batch_size, args.batch_size * args.steps
    x = torch.from_numpy(synthetic(n + 2 * b, args.length))
    sets = [np.arange(0, n - b), np.arange(2 * b, n + 2 * b)]  # steps - 1 and steps steps
    seeds = [3, 5]
    common = dict(nz=args.nz, ngf=args.ngf, ndf=args.ndf, batch_size=b, d_reinit_threshold=args.threshold)
    group = BatchedTeacherTrainer(1, args.length, rt, sets, seeds, **common)
    start = [flat(list(group.member_states(k).values())) for k in range(2)]
    group.set_train_data(x)
    rows = [group.train_epoch() for _ in range(args.epochs)]
    members = []
    for k, (beats, seed) in enumerate(zip(sets, seeds)):
        single = TeacherTrainer(1, args.length, rt, seed=seed, **common)
        same_init = bool(torch.equal(flat([single.G.state_dict(), single.D.state_dict()]), start[k]))
        single.set_train_data(x[beats])
        singles = [single.train_epoch() for _ in range(args.epochs)]
        want, got = flat([single.G.state_dict(), single.D.state_dict()]), flat(list(group.member_states(k).values()))
        moved = float((want - start[k]).abs().max())
        ratio = float((got - want).abs().max()) / moved if moved else float("inf")
        members.append({
            "member": k, "seed": seed, "beats": len(beats), "same_init": same_init, "moved": moved, "max_diff_over_moved": ratio,
            "loss_rel_diff": {name: max(abs(r[name][k] - s[name]) / max(abs(s[name]), 1e-12) for r, s in zip(rows, singles))
                              for name in LOSS_NAMES if name != "d_reinits"},
            "d_reinits": [r["d_reinits"][k] for r in rows], "single_d_reinits": [s["d_reinits"] for s in singles],
            "captured": {"group": group._captured, "single": single._captured},
        })
    result = {"device": rt.describe(), "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}, "tolerance": REL_TOL,
              "members": members, "ok": all(m["same_init"] and m["max_diff_over_moved"] <= REL_TOL for m in members)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
