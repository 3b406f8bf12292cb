"""The compact student (ngf 16, about a quarter of the teacher's FLOPs) distilled from a full teacher, against
that teacher and against a compact control trained the same way without distillation or contrastive term.

teacher (a generator file or training folder, trained by `sibeatgan train-teacher` or bench/verdict.py) ->
one batched group: the compact student (init from scratch, KD + NT-Xent) with each of `--seeds`, and beside it
the compact control (alpha = beta = 0) with the same seeds -> every model evaluated on the same test beats with
each score it offers (reconstruction error; for the students also the teacher-student latent discrepancy and
their combination, standardized on normal validation beats) -> paired record-level comparisons, pooled over seeds.

    python bench/compact.py DATASET TEACHER OUT --device cpu --epochs 10 --max-train-beats 16384 --seeds 0,1

Everything is the shared protocol, sibeatgan.steps.protocol.run_protocol (the pipeline's pieces); a student's extra
scores are evaluated as `student-s<seed>@<score>` and compared as `student_<score>_vs_teacher` / `_vs_control`.
Writes OUT/compact.json (and prints it). Training resumes from OUT/candidates if it was stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("teacher", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--selection", default="paper", choices=("clean", "paper"))
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--max-train-beats", type=int, default=None, help="each student's training beats (default: all)")
    p.add_argument("--scores", default="reconstruction,discrepancy,combined", help="the students' scores to evaluate")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="resamples of the paired comparisons")
    p.add_argument("--eval-bootstrap", type=int, default=200, help="resamples of each model's own intervals")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from sibeatgan.config import EvaluateConfig, StudentConfig
    from sibeatgan.models.student import generator_flops
    from sibeatgan.modelio import load_generator
    from sibeatgan.steps.protocol import run_protocol

    out, ds = args.out, args.dataset
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [k for k in args.scores.split(",") if k != "reconstruction"]
    teacher = args.teacher / "generator.pt" if args.teacher.is_dir() else args.teacher
    t = time.perf_counter()
    base = StudentConfig(fold=args.fold, selection=args.selection, ngf=args.ngf, init="scratch", epochs=args.epochs, device=args.device,
                         max_train_beats=args.max_train_beats)
    # the shared protocol: compact students and compact controls per seed (one batched group), evaluated on the same test
    # beats (the students also by each extra score), paired comparisons pooled over seeds, the winner on validation
    result = run_protocol(base, ds, teacher, out, seeds=seeds, extra_scores=extra,
                          evaluate=EvaluateConfig(device=args.device, n_bootstrap=args.eval_bootstrap, plots=False),
                          compare=EvaluateConfig(n_bootstrap=args.n_bootstrap))
    timings = {"protocol_s": time.perf_counter() - t}
    t_gen, _ = load_generator(teacher)
    s_gen, _ = load_generator(next(r["generator"] for r in result["trained"].values() if r.get("generator")))
    flops = {"teacher": generator_flops(t_gen, t_gen.nc, t_gen.length), "student": generator_flops(s_gen, s_gen.nc, s_gen.length)}
    report = {"fold": args.fold, "selection": args.selection, "seeds": seeds, "args": {k: str(v) for k, v in vars(args).items()},
              "flops": flops, "flops_ratio": flops["student"] / flops["teacher"], "members": result["trained"], "figures": result["figures"],
              "comparisons": result["comparisons"], "winner": result["winner"], "timings": timings}
    (out / "compact.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("flops_ratio", "figures", "winner", "timings")}, indent=2, default=str))
    for name, c in report["comparisons"].items():
        pooled = c.get("pooled", c)
        print(name, json.dumps({k: pooled.get(k) for k in ("delta_auc", "delta_auc_ci", "p_auc")}, default=str))


if __name__ == "__main__":
    main()
