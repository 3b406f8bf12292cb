"""The bet: shifted beats as NT-Xent negatives (CSI) make the student beat its no-KD control? (CPU, fold 0, 3 seeds.)

Arms, each trained from the same small teacher (bench/criterion.py's, cached in --teacher-dir) with the same seeds,
beats, epochs and init (the teacher's weights), final epoch kept (no selection, so the arms differ only in loss):
- control: alpha = beta = 0 (no KD, no contrastive term: the teacher simply trained on, as in bench/verdict.py);
- student: alpha 1, beta 0.1, T 4, tau 0.2 (the defaults: KD + NT-Xent, invariance only);
- bet: the student plus `shift_negatives` (shifted copies of each batch, sibeatgan.shifts, as extra NT-Xent negatives).
Every model is scored on the same fixed random subset of fold 0's test beats; the comparisons (bet vs control, bet vs
student, student vs control) use the project's two-level paired bootstrap (sibeatgan.metrics.paired_compare_units,
level "unit+record", what `sibeatgan compare` uses for several units): each resample draws the records with
replacement once for every seed (seeds and records are crossed: every seed is scored on the same beats) and weighs
the seeds by K - 1 draws with replacement; the record-only figures of the same draws (seeds fixed) come beside it.

    python bench/bet.py data/mitdb --teacher-dir bench/out/criterion --results bench/results/bet-cpu-2026-12-03
    python bench/bet.py --report bench/results/bet-cpu-2026-12-03      # bet.md's tables, from the per-beat scores alone
    python bench/bet.py --recompare bench/results/bet-cpu-2026-12-03   # the comparisons again from the scores, into bet.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench.bet")

ARMS = {"control": dict(alpha=0.0, beta=0.0), "student": dict(alpha=1.0, beta=0.1), "bet": dict(alpha=1.0, beta=0.1, shift_negatives=True)}


PAIRS = (("bet_vs_control", "control", "bet"), ("bet_vs_student", "student", "bet"), ("student_vs_control", "control", "student"))


def compare_pair(a: list[np.ndarray], b: list[np.ndarray], labels: np.ndarray, records: np.ndarray, n_bootstrap: int) -> dict[str, Any]:
    """b - a over the seeds: the two-level interval and, from the same draws, the record-only one (seeds fixed)."""
    from sibeatgan.metrics import paired_compare_units

    c = paired_compare_units([(x, y, labels, records) for x, y in zip(a, b)], n_bootstrap, level="unit+record")
    two = {k: c[k] for k in ("auc_a", "auc_b", "delta_auc", "unit_delta_auc", "delta_auc_ci", "p_auc", "n_bootstrap", "n_units",
                             "units_drawn", "n_groups", "bootstrap")}
    return {"two_level": two, "record_only": {"delta_auc": c["delta_auc"], **c["record_only"]}}


def compare(scores: dict[str, list[np.ndarray]], labels: np.ndarray, records: np.ndarray, n_bootstrap: int) -> dict[str, Any]:
    """Every comparison of PAIRS (compare_pair)."""
    return {name: compare_pair(scores[a], scores[b], labels, records, n_bootstrap) for name, a, b in PAIRS}


def load_scores(results: Path) -> tuple[dict[str, Any], dict[str, list[np.ndarray]], np.ndarray, np.ndarray]:
    saved = json.loads((results / "bet.json").read_text())
    beats = np.load(results / "test_beats.npz")
    scores = {arm: [np.load(results / f"{arm}_s{s}.npz")["score"] for s in saved["seeds"]] for arm in ARMS}
    return saved, scores, beats["label"], beats["record"]


def report(results: Path) -> str:
    """The tables of bench/bet.md, recomputed from the committed per-beat scores (and checked against bet.json)."""
    from sibeatgan.metrics import ranked_metrics

    saved, scores, labels, records = load_scores(results)
    teacher_auc = ranked_metrics(np.load(results / "teacher.npz")["score"], labels != 0)["auc"]
    lines = [f"Teacher: test AUC {teacher_auc:.4f} on these beats.", "", "| seed | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for i, s in enumerate(saved["seeds"]):
        aucs = [ranked_metrics(scores[arm][i], labels != 0)["auc"] for arm in ARMS]
        for arm, auc in zip(ARMS, aucs):
            run = next(r for r in saved["runs"] if r["arm"] == arm and r["seed"] == s)
            if not np.isclose(run["test_auc"], auc, rtol=0, atol=1e-12):
                raise SystemExit(f"seed {s} {arm}: bet.json says {run['test_auc']}, the scores give {auc}")
        lines.append(f"| {s} | " + " | ".join(f"{a:.4f}" for a in aucs) + " |")
    lines += ["", "| comparison (b - a) | delta AUC | two-level 95% interval | p | record-only interval (seeds fixed) | p |",
              "|---|---|---|---|---|---|"]
    for name, c in saved["comparisons"].items():
        a, b = name.split("_vs_")[1], name.split("_vs_")[0]
        again = compare_pair(scores[a], scores[b], labels, records, c["two_level"]["n_bootstrap"])
        two, r = again["two_level"], again["record_only"]
        for part in ("two_level", "record_only"):
            if not np.allclose(again[part]["delta_auc_ci"], c[part]["delta_auc_ci"], rtol=0, atol=1e-12):
                raise SystemExit(f"{name}: bet.json's {part} interval {c[part]['delta_auc_ci']} is not the scores' {again[part]['delta_auc_ci']}")
        lines.append(f"| {name} | {two['delta_auc']:+.4f} | [{two['delta_auc_ci'][0]:+.4f}, {two['delta_auc_ci'][1]:+.4f}] | "
                     f"{two['p_auc']:.3f} | [{r['delta_auc_ci'][0]:+.4f}, {r['delta_auc_ci'][1]:+.4f}] | {r['p_auc']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(report(Path(sys.argv[2])))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--recompare":  # the comparisons again, from the per-beat scores, into bet.json
        results = Path(sys.argv[2])
        saved, scores, labels, records = load_scores(results)
        saved["comparisons"] = compare(scores, labels, records, next(iter(saved["comparisons"].values()))["two_level"]["n_bootstrap"])
        (results / "bet.json").write_text(json.dumps(saved, indent=2))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--teacher-dir", type=Path, required=True, help="folder of bench/criterion.py's teacher.pt (trained there if absent)")
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-beats", type=int, default=1024)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-beats", type=int, default=2048)
    p.add_argument("--test-beats", type=int, default=3000)
    p.add_argument("--n-bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    from bench.criterion import fold_data, scores_of, train_teacher
    from sibeatgan.device import Runtime
    from sibeatgan.metrics import ranked_metrics
    from sibeatgan.train.student import StudentTrainer
    from sibeatgan.train.teacher import _select_train

    started = time.perf_counter()
    d = fold_data(args.dataset, args.fold, 0, args.test_beats)  # the same test subset as bench/criterion.py
    ds = d["ds"]
    teacher = train_teacher(d, args.teacher_dir, args.teacher_epochs, args.teacher_beats)
    test_x, test_y, test_r = torch.from_numpy(ds.float_beats(d["test"])), ds.labels[d["test"]], ds.records[d["test"]]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.results.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.results / "test_beats.npz", index=d["test"].astype(np.int32), label=test_y.astype(np.int8), record=test_r)
    scores: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    teacher_scores = scores_of(teacher, test_x)
    np.savez_compressed(args.results / "teacher.npz", score=teacher_scores)
    runs = []
    for s in seeds:
        idx = _select_train(d["part"].train, args.train_beats, s)
        for arm, kw in ARMS.items():
            tr = StudentTrainer(teacher, Runtime(torch.device("cpu")), T=4.0, tau=0.2, seed=s, **kw)
            tr.set_train_data(torch.from_numpy(ds.float_beats(idx)))
            t0 = time.perf_counter()
            losses = [tr.train_epoch() for _ in range(args.epochs)]
            sc = scores_of(tr.generator(0).eval(), test_x)
            scores[arm].append(sc)
            np.savez_compressed(args.results / f"{arm}_s{s}.npz", score=sc)
            auc = ranked_metrics(sc, test_y != 0)["auc"]
            runs.append({"arm": arm, "seed": s, "test_auc": auc, "train_s": round(time.perf_counter() - t0, 1),
                         "loss_con": [r["loss_con"] for r in losses], "loss_kd": [r["loss_kd"] for r in losses]})
            log.info("seed %d %s: test AUC %.4f (%.0f s)", s, arm, auc, runs[-1]["train_s"])
    comparisons = compare(scores, test_y, test_r, args.n_bootstrap)
    result = {
        "machine": "2 shared CPU cores (load ~20 from other sessions), torch threads %d" % args.threads, "command": " ".join(sys.argv),
        "fold": args.fold, "seeds": seeds, "epochs": args.epochs, "train_beats": args.train_beats,
        "teacher": {"epochs": args.teacher_epochs, "beats": args.teacher_beats,
                    "test_auc": ranked_metrics(teacher_scores, test_y != 0)["auc"]},
        "n_test": len(d["test"]), "test_anomalous": int((test_y != 0).sum()), "arms": ARMS, "runs": runs, "comparisons": comparisons,
        "dataset_hash": d["dataset_hash"], "split_hash": d["split_hash"], "seconds": round(time.perf_counter() - started, 1),
    }
    (args.results / "bet.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"runs": runs, "comparisons": comparisons}, indent=2))


if __name__ == "__main__":
    main()
