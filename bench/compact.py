"""The compact student (ngf 16, about a quarter of the teacher's FLOPs) distilled from a full teacher, against
that teacher and against a compact control trained the same way without distillation or contrastive term.

teacher (a generator file or training folder, trained by `sibeatgan train-teacher` or bench/verdict.py) ->
one batched group: the compact student (init from scratch, KD + NT-Xent) with each of `--seeds`, and beside it
the compact control (alpha = beta = 0) with the same seeds -> every model evaluated on the same test beats with
each score it offers (reconstruction error; for the students also the teacher-student latent discrepancy and
their combination, standardized on normal validation beats) -> paired record-level comparisons, pooled over seeds.

    python bench/compact.py DATASET TEACHER OUT --device cpu --epochs 10 --max-train-beats 16384 --seeds 0,1

Writes OUT/compact.json (and prints it). Training resumes from OUT/students if it was stopped.
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

    from sibeatgan.compare import run_compare
    from sibeatgan.config import EvaluateConfig, StudentConfig, replace
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.models.student import generator_flops
    from sibeatgan.modelio import load_generator
    from sibeatgan.train.distill import train_student_group

    out, ds = args.out, args.dataset
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = args.scores.split(",")
    teacher = args.teacher / "generator.pt" if args.teacher.is_dir() else args.teacher
    timings: dict[str, float] = {}

    t = time.perf_counter()
    base = StudentConfig(fold=args.fold, selection=args.selection, ngf=args.ngf, init="scratch", epochs=args.epochs, device=args.device,
                         max_train_beats=args.max_train_beats)
    members = [replace(base, seed=s) for s in seeds] + [replace(base, seed=s, alpha=0.0, beta=0.0) for s in seeds]
    results = train_student_group(members, ds, teacher, out / "students")
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    econf = EvaluateConfig(device=args.device, n_bootstrap=args.eval_bootstrap, plots=False)
    evals = {"teacher": out / "eval" / "teacher"}
    run_evaluate(econf, ds, teacher, evals["teacher"])
    for k, r in enumerate(results):
        who = "student" if k < len(seeds) else "control"
        seed = seeds[k % len(seeds)]
        for kind in scores if who == "student" else ["reconstruction"]:
            name = f"{who}_{kind}_s{seed}"
            evals[name] = out / "eval" / name
            run_evaluate(replace(econf, score=kind), ds, Path(r["generator"]), evals[name])
    timings["evaluate_s"] = time.perf_counter() - t

    cconf = EvaluateConfig(n_bootstrap=args.n_bootstrap)
    teachers = [evals["teacher"]] * len(seeds)
    controls = [evals[f"control_reconstruction_s{s}"] for s in seeds]
    comparisons = {}
    for kind in scores:
        students = [evals[f"student_{kind}_s{s}"] for s in seeds]
        comparisons[f"student_{kind}_vs_teacher"] = run_compare(cconf, ds, teachers, students, out / "compare" / f"student_{kind}_vs_teacher")
        comparisons[f"student_{kind}_vs_control"] = run_compare(cconf, ds, controls, students, out / "compare" / f"student_{kind}_vs_control")
    comparisons["control_vs_teacher"] = run_compare(cconf, ds, teachers, controls, out / "compare" / "control_vs_teacher")
    figures = {}
    for name, folder in evals.items():
        fold = json.loads((folder / "evaluation.json").read_text())["folds"][str(args.fold)]
        figures[name] = {k: fold[k] for k in ("auc", "ap", "auc_ci")} | {"f1_at_threshold": fold["operating"]["f1"]}
    t_gen, _ = load_generator(teacher)
    s_gen, _ = load_generator(results[0]["generator"])
    flops = {"teacher": generator_flops(t_gen, t_gen.nc, t_gen.length), "student": generator_flops(s_gen, s_gen.nc, s_gen.length)}
    report = {"fold": args.fold, "selection": args.selection, "seeds": seeds, "args": {k: str(v) for k, v in vars(args).items()},
              "flops": flops, "flops_ratio": flops["student"] / flops["teacher"], "members": results, "figures": figures,
              "comparisons": comparisons, "timings": timings}
    (out / "compact.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("flops_ratio", "figures", "timings")}, indent=2, default=str))
    for name, c in comparisons.items():
        pooled = c.get("pooled", c)
        print(name, json.dumps(pooled.get("auc", pooled), default=str)[:200])


if __name__ == "__main__":
    main()
