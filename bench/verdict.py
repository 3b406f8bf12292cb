"""Teacher vs self-improving student on one fold, judged by the paired record-level comparison.

teacher (fold F, `--selection`) -> a small Optuna search of the student (groups of batched members, the
validation criterion only) -> the best config trained with `--seeds`, next to a control with the same
init, epochs and seeds but no distillation and no contrastive term (alpha = beta = 0: the teacher simply
trained on, which DESIGN.md warns moves AUC by +-0.02 on its own) -> every model scored on the same test
beats -> paired comparisons: student vs teacher, student vs control, per seed and pooled -> the winner on validation.
Everything after the search is the shared protocol, sibeatgan.steps.protocol.run_protocol (the pipeline's pieces).

    python bench/verdict.py DATASET OUT --device cuda --teacher-epochs 30 --trials 8 --group-size 8 ...

Writes OUT/verdict.json (and prints it); every step's own outputs stay in OUT.
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
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--selection", default="paper", choices=("clean", "paper"))
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--tune-epochs", type=int, default=8)
    p.add_argument("--final-epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-train-beats", type=int, default=None, help="teacher's training beats (default: all)")
    p.add_argument("--student-max-train-beats", type=int, default=None, help="each student's training beats (default: all)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="resamples of the paired comparisons")
    p.add_argument("--eval-bootstrap", type=int, default=200, help="resamples of each model's own intervals")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from sibeatgan.config import EvaluateConfig, StudentConfig, TeacherConfig, TuneConfig, replace
    from sibeatgan.steps.protocol import run_protocol
    from sibeatgan.steps.train import run_train_teacher
    from sibeatgan.steps.tune import run_tune

    out, ds = args.out, args.dataset
    seeds = [int(s) for s in args.seeds.split(",")]
    timings: dict[str, float] = {}
    t = time.perf_counter()
    teacher = run_train_teacher(TeacherConfig(fold=args.fold, selection=args.selection, epochs=args.teacher_epochs, device=args.device,
                                              max_train_beats=args.max_train_beats), ds, out / "teacher")
    timings["teacher_s"] = time.perf_counter() - t

    t = time.perf_counter()
    base = StudentConfig(fold=args.fold, selection=args.selection, epochs=args.tune_epochs, device=args.device,
                         max_train_beats=args.student_max_train_beats)
    tuned = run_tune(TuneConfig(n_trials=args.trials, group_size=args.group_size, heartbeat_s=30, grace_s=600), base, ds,
                     out / "teacher", out / "tune")
    timings["tune_s"] = time.perf_counter() - t

    # the shared protocol: the best student and its no-KD control per seed (one batched group), all evaluated on the same
    # test beats, paired comparisons pooled over seeds, the winner on validation
    t = time.perf_counter()
    best = replace(StudentConfig(**tuned["student"]), epochs=args.final_epochs)
    result = run_protocol(best, ds, out / "teacher", out, seeds=seeds,
                          evaluate=EvaluateConfig(device=args.device, n_bootstrap=args.eval_bootstrap, plots=False),
                          compare=EvaluateConfig(n_bootstrap=args.n_bootstrap))
    timings["protocol_s"] = time.perf_counter() - t
    verdict = {
        "fold": args.fold, "selection": args.selection, "seeds": seeds, "args": {k: str(v) for k, v in vars(args).items()},
        "teacher": {"generator": teacher["generator"], "best_epoch": teacher["best_epoch"]},
        "search": {k: tuned[k] for k in ("trial", "value", "criterion", "params", "trials")},
        **{k: result["comparisons"][k] for k in ("student_vs_teacher", "student_vs_control", "control_vs_teacher")},
        "figures": result["figures"], "winner": result["winner"], "timings": timings,
    }
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str) + "\n")
    print(json.dumps(verdict, indent=2, default=str))


if __name__ == "__main__":
    main()
