"""Which label-free criterion tracks test AUC across the trials of one search? (CPU, fold 0 of MIT-BIH.)

One small teacher, then `--trials` student configs drawn from the search space (`sibeatgan.search.suggest`, Optuna's
random sampler, i.e. the search's startup trials), each trained `--epochs` epochs on `--train-beats` beats. Each
trial's final model is scored on a fixed random subset of the validation beats, on synthetic anomalies made from
those beats (`sibeatgan.shifts.synthesize`, exactly what selection=synthetic does in the loop) and on a fixed random
subset of the test beats. Per trial: normal-MSE (selection=clean: mean score of the normal validation beats, lower is
better), synthetic AUC (selection=synthetic, label-free), validation AUC (selection=paper) and test AUC (test labels
read here only, to judge the criteria; no choice is made with them). Reported: Kendall tau of each criterion
(oriented so that higher is better) with test AUC across the trials.

    python bench/criterion.py data/mitdb bench/out/criterion --results bench/results/criterion-cpu-2026-12-03

Writes OUT/criterion.json and, under --results, criterion.json and one float32 npz of per-beat scores per trial.
`python bench/criterion.py --report RESULTS` recomputes every figure from those scores and prints criterion.md's tables.
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

log = logging.getLogger("bench.criterion")


def fold_data(dataset: Path, fold: int, n_val: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    """Fold `fold`'s training indices, and fixed random subsets of its validation and test beats (sorted indices)."""
    from sibeatgan.data.artifact import load
    from sibeatgan.data.splits import resolve_split

    ds = load(dataset)
    split = resolve_split(dataset, None, ds.content_hash())
    part = split.fold("beatgan", fold)
    rng = np.random.default_rng([seed, 11])
    val = np.sort(rng.choice(part.val, size=min(n_val, len(part.val)), replace=False))
    test = np.sort(rng.choice(part.test, size=min(n_test, len(part.test)), replace=False))
    return {"ds": ds, "part": part, "val": val, "test": test, "split_hash": split.hash, "dataset_hash": ds.content_hash()}


def train_teacher(d: dict[str, Any], out: Path, epochs: int, beats: int, seed: int = 0) -> torch.nn.Module:
    """A small BeatGAN teacher (final epoch, no selection), cached in out/teacher.pt."""
    from sibeatgan.device import Runtime
    from sibeatgan.models import Generator
    from sibeatgan.train.teacher import TeacherTrainer, _select_train

    path = out / "teacher.pt"
    ds = d["ds"]
    if path.is_file():
        g = Generator(ds.leads, ds.length)
        g.load_state_dict(torch.load(path))
        return g.eval()
    idx = _select_train(d["part"].train, beats, seed)
    trainer = TeacherTrainer(ds.leads, ds.length, Runtime(torch.device("cpu")), seed=seed)
    trainer.set_train_data(torch.from_numpy(ds.float_beats(idx)))
    for epoch in range(epochs):
        row = trainer.train_epoch()
        log.info("teacher epoch %d: loss_g %.4g, %.0f beats/s", epoch + 1, row["loss_g"], row["beats_per_s"])
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.generator(0).state_dict(), path)
    return trainer.generator(0).eval()


def scores_of(g: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    from sibeatgan.metrics import score

    return score(g, x, 256, "cpu").astype(np.float32)


def kendall(a: list[float], b: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau

    r = kendalltau(a, b)
    return {"tau": float(r.statistic), "p": float(r.pvalue)}


def recompute(results: Path) -> dict[str, Any]:
    """Every per-trial figure and Kendall tau of criterion.json, again from the committed per-beat scores alone."""
    from sibeatgan.metrics import ranked_metrics
    from sibeatgan.shifts import KINDS, separation_auc

    saved = json.loads((results / "criterion.json").read_text())
    rows = []
    for r in saved["rows"]:
        z = np.load(results / f"trial_{r['trial']:02d}.npz")
        sv, ss, kinds = z["val_score"], z["synthetic_score"], z["synthetic_kind"]
        row = {"trial": r["trial"], "val_normal_mse": float(sv[z["val_label"] == 0].astype(np.float64).mean()),
               "synthetic_auc": separation_auc(sv, ss), "val_auc": ranked_metrics(sv, z["val_label"] != 0)["auc"],
               "test_auc": ranked_metrics(z["test_score"], z["test_label"] != 0)["auc"]}
        row.update({f"synthetic_auc_{k}": separation_auc(sv, ss[kinds == i]) for i, k in enumerate(KINDS)})
        rows.append(row)
    test = [r["test_auc"] for r in rows]
    crit = {"normal_mse (clean, negated)": [-r["val_normal_mse"] for r in rows],
            "synthetic_auc (synthetic)": [r["synthetic_auc"] for r in rows], "val_auc (paper)": [r["val_auc"] for r in rows]}
    crit.update({f"synthetic_auc_{k} (one kind)": [r[f"synthetic_auc_{k}"] for r in rows] for k in KINDS})
    return {"rows": rows, "kendall_tau_with_test_auc": {name: kendall(v, test) for name, v in crit.items()},
            "test_auc_of_pick": {name: test[int(np.argmax(v))] for name, v in crit.items()}}


def report(results: Path) -> str:
    """The tables of bench/criterion.md, recomputed from the per-beat scores (and checked against criterion.json)."""
    saved, again = json.loads((results / "criterion.json").read_text()), recompute(results)
    for a, b in zip(saved["rows"], again["rows"]):
        for k, v in b.items():
            if not np.isclose(a[k], v, rtol=1e-5, atol=1e-9):
                raise SystemExit(f"trial {a['trial']} {k}: criterion.json says {a[k]}, the scores give {v}")
    lines = ["| trial | lr | alpha | beta | lambda | T | tau | normal MSE | synthetic AUC | val AUC | test AUC |", "|" + "---|" * 11]
    for s, r in zip(saved["rows"], again["rows"]):
        lines.append(f"| {r['trial']} | {s['lr']:.2e} | {s['alpha']:.3f} | {s['beta']:.3f} | {s['lambda_fm']:.3f} | {s['T']:.2f} | "
                     f"{s['tau']:.3f} | {r['val_normal_mse']:.5f} | {r['synthetic_auc']:.4f} | {r['val_auc']:.4f} | {r['test_auc']:.4f} |")
    lines += ["", "| criterion (higher is better) | Kendall tau with test AUC | p | test AUC of the trial it picks |", "|---|---|---|---|"]
    for name, t in again["kendall_tau_with_test_auc"].items():
        lines.append(f"| {name} | {t['tau']:+.3f} | {t['p']:.3f} | {again['test_auc_of_pick'][name]:.4f} |")
    lines.append(f"| (best test AUC of any trial) | | | {max(r['test_auc'] for r in again['rows']):.4f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(report(Path(sys.argv[2])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--results", type=Path, required=True, help="where criterion.json and the per-beat npz files go (committed)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-beats", type=int, default=1024)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-beats", type=int, default=2048)
    p.add_argument("--val-beats", type=int, default=1500)
    p.add_argument("--test-beats", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extend", action="store_true", help="keep the trials already in RESULTS/criterion.json, run only the new ones")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    import optuna

    from sibeatgan.config import StudentConfig, TuneConfig
    from sibeatgan.device import Runtime
    from sibeatgan.metrics import ranked_metrics
    from sibeatgan.search import suggest
    from sibeatgan.shifts import KINDS, SEED, separation_auc, synthesize
    from sibeatgan.train.student import StudentTrainer
    from sibeatgan.train.teacher import _select_train

    started = time.perf_counter()
    d = fold_data(args.dataset, args.fold, args.val_beats, args.test_beats)
    ds = d["ds"]
    teacher = train_teacher(d, args.out, args.teacher_epochs, args.teacher_beats)
    val_x, test_x = torch.from_numpy(ds.float_beats(d["val"])), torch.from_numpy(ds.float_beats(d["test"]))
    val_y, test_y = ds.labels[d["val"]], ds.labels[d["test"]]
    shifted, kinds = synthesize(val_x, SEED)
    kinds = kinds.numpy().astype(np.int8)
    args.results.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    tune, base = TuneConfig(), StudentConfig(fold=args.fold, epochs=args.epochs, max_train_beats=args.train_beats, device="cpu")
    rows: list[dict[str, Any]] = []
    done = json.loads((args.results / "criterion.json").read_text())["rows"] if args.extend else []
    for t in range(args.trials):
        trial = study.ask()
        cfg = suggest(trial, tune, base)
        if t < len(done):  # --extend: the sampler draws the same trials again; keep what was measured
            if any(not np.isclose(done[t][k], v) for k, v in trial.params.items()):
                raise SystemExit(f"--extend: trial {t}'s parameters {trial.params} are not the saved ones; run afresh")
            rows.append(done[t])
            study.tell(trial, done[t]["synthetic_auc"])
            continue
        idx = _select_train(d["part"].train, args.train_beats, cfg.seed)
        tr = StudentTrainer(teacher, Runtime(torch.device("cpu")), lambda_fm=cfg.lambda_fm, alpha=cfg.alpha, beta=cfg.beta, T=cfg.T,
                            tau=cfg.tau, lr=cfg.lr, seed=cfg.seed)
        tr.set_train_data(torch.from_numpy(ds.float_beats(idx)))
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            tr.train_epoch()
        train_s = time.perf_counter() - t0
        g = tr.generator(0).eval()
        sv, ss, st = scores_of(g, val_x), scores_of(g, shifted), scores_of(g, test_x)
        row = {"trial": t, **{k: trial.params[k] for k in sorted(trial.params)}, "seed": cfg.seed, "train_s": round(train_s, 1),
               "val_normal_mse": float(sv[val_y == 0].mean()), "synthetic_auc": separation_auc(sv, ss),
               "val_auc": ranked_metrics(sv, val_y != 0)["auc"], "test_auc": ranked_metrics(st, test_y != 0)["auc"]}
        row.update({f"synthetic_auc_{k}": separation_auc(sv, ss[kinds == i]) for i, k in enumerate(KINDS)})
        rows.append(row)
        study.tell(trial, row["synthetic_auc"])
        log.info("trial %d: %s", t, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        np.savez_compressed(args.results / f"trial_{t:02d}.npz", val_index=d["val"].astype(np.int32), val_score=sv,
                            val_label=val_y.astype(np.int8), val_record=ds.records[d["val"]], synthetic_score=ss, synthetic_kind=kinds,
                            test_index=d["test"].astype(np.int32), test_score=st, test_label=test_y.astype(np.int8),
                            test_record=ds.records[d["test"]])
    test = [r["test_auc"] for r in rows]
    crit = {"normal_mse (clean, negated)": [-r["val_normal_mse"] for r in rows],
            "synthetic_auc (synthetic)": [r["synthetic_auc"] for r in rows], "val_auc (paper)": [r["val_auc"] for r in rows]}
    crit.update({f"synthetic_auc_{k} (one kind)": [r[f"synthetic_auc_{k}"] for r in rows] for k in KINDS})
    taus = {name: kendall(v, test) for name, v in crit.items()}
    picks = {name: int(np.argmax(v)) for name, v in crit.items()}
    result = {
        "machine": "2 shared CPU cores (load ~20 from other sessions), torch threads %d" % args.threads, "command": " ".join(sys.argv),
        "fold": args.fold, "trials": args.trials, "epochs": args.epochs, "train_beats": args.train_beats,
        "teacher": {"epochs": args.teacher_epochs, "beats": args.teacher_beats}, "n_val": len(d["val"]), "n_test": len(d["test"]),
        "val_anomalous": int((val_y != 0).sum()), "test_anomalous": int((test_y != 0).sum()),
        "dataset_hash": d["dataset_hash"], "split_hash": d["split_hash"], "kendall_tau_with_test_auc": taus,
        "test_auc_of_pick": {name: test[i] for name, i in picks.items()}, "best_test_auc": max(test), "rows": rows,
        "seconds": round(time.perf_counter() - started, 1) + (json.loads((args.results / "criterion.json").read_text())["seconds"]
                                                              if args.extend else 0.0),
    }
    text = json.dumps(result, indent=2)
    (args.out / "criterion.json").write_text(text)
    (args.results / "criterion.json").write_text(text)
    print(json.dumps({"kendall_tau_with_test_auc": taus, "test_auc_of_pick": result["test_auc_of_pick"]}, indent=2))


if __name__ == "__main__":
    main()
