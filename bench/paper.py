"""The paper-scale protocol in chunks: teacher and best student over 5 folds x 3 seeds (BeatGAN protocol), and
over 3 seeds of the clean protocol (inter-patient DS1/DS2 split, label-free selection), paired on the same beats.

A unit is one (protocol, fold, seed): a teacher trained from scratch (`--teacher-epochs`, 100 as in the paper),
then, from it, the best student of the protocol's search and its control (same init, epochs and seed, alpha =
beta = 0: the teacher simply trained on), trained together as one batched group, then every model evaluated on
the unit's test beats. Before the first unit of a fold, a search unit runs the Optuna search on a teacher of
that fold (seed 0) with that fold's validation beats (validation AUC for the BeatGAN protocol, the label-free
criterion for the clean one) and writes its best.json, which the fold's units read. One search per fold, because
the BeatGAN folds share their normal beats: fold 0's validation beats are test beats of folds 1-4, so a search on
fold 0 would choose the student of folds 1-4 with their own test beats. A unit keeps only what the verdict needs (each model's
evaluation.json and scores.npz, the training histories and unit.json with the card's name and timings); its
model files stay in the work folder.

    python bench/paper.py status  --results bench/results/paper
    python bench/paper.py run DATASET --results bench/results/paper --out OUT --device cuda --budget-s 500
    python bench/paper.py summarize DATASET --results bench/results/paper      # no GPU needed

`run` does the next units not yet in `--results`, in plan order, as many as `--budget-s` allows (each unit is
estimated from the slowest of its kind done so far on the same card; the first one always runs), and writes them into `--out` (default: the
results folder itself); a GPU session copies `OUT` into bench/results/paper and commits it, so the next session
with a GPU goes on from there (bench/gpu_paper.sh). `summarize` gathers every unit: means over folds and seeds,
and paired record-level comparisons (student vs teacher, student vs control, control vs teacher) per fold and
pooled, per protocol: summary.json and summary.md in the results folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/recompute.py

log = logging.getLogger("paper")

# bench/paper.md (pre-registered): both models scored by reconstruction error, no search unless --search is given
PROTOCOLS = {"beatgan": {"split": "beatgan", "selection": "paper", "folds": (0, 1, 2, 3, 4), "score": "reconstruction"},
             "clean": {"split": "interpatient", "selection": "clean", "folds": (0,), "score": "reconstruction"}}


def plan(protocols: list[str], seeds: list[int]) -> list[tuple[str, int, int]]:
    """Units in the order they run: fold 0 of the BeatGAN protocol first (its search, then a fold-0 verdict over
    seeds), then the clean protocol, then folds 1-4."""
    units = []
    for protocol in protocols:
        for fold in PROTOCOLS[protocol]["folds"][:1]:
            units += [(protocol, fold, s) for s in seeds]
    for protocol in protocols:
        for fold in PROTOCOLS[protocol]["folds"][1:]:
            units += [(protocol, fold, s) for s in seeds]
    return units


def next_group(pending: list[tuple[str, int, int]], k: int) -> list[tuple[str, int, int]]:
    """The next teacher group: the leading units of `pending` (in plan order) of one protocol, at most k of them."""
    return list(itertools.takewhile(lambda u: u[0] == pending[0][0], pending[:k]))


def unit_name(protocol: str, fold: int, seed: int) -> str:
    return f"{protocol}-f{fold}-s{seed}"


def done_units(*folders: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for folder in folders:
        for f in sorted(Path(folder).glob("*/unit.json")) if Path(folder).is_dir() else []:
            out[f.parent.name] = json.loads(f.read_text())
    return out


def search_name(protocol: str, fold: int) -> str:
    return f"{protocol}-f{fold}-search"


def find_best(protocol: str, fold: int, *folders: Path) -> Path | None:
    for folder in folders:
        p = Path(folder) / search_name(protocol, fold) / "best.json"
        if p.is_file():
            return p
    return None


def card() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _keep_eval(src: Path, dst: Path) -> None:
    """What compare needs of an evaluation, without plots or model files: `bench/recompute.py keep` (evaluation.json and
    each fold's test scores in small dtypes, with their records), plus the comparison table when there is one."""
    from recompute import keep

    keep(src, dst)
    if (src / "table.txt").is_file():
        shutil.copy2(src / "table.txt", dst / "table.txt")


def _teacher(args: argparse.Namespace, protocol: str, fold: int, seed: int, out: Path) -> dict[str, Any]:
    """A unit's teacher (and a search's): the protocol's split and selection, `--teacher-epochs`, trained afresh."""
    from sibeatgan.config import TeacherConfig
    from sibeatgan.steps.train import run_train_teacher

    p = PROTOCOLS[protocol]
    return run_train_teacher(TeacherConfig(split=p["split"], fold=fold, selection=p["selection"], epochs=args.teacher_epochs, seed=seed,
                                           device=args.device, max_train_beats=args.teacher_max_train_beats), args.dataset, out)


def _teacher_group(args: argparse.Namespace, units: list[tuple[str, int, int]]) -> tuple[dict[tuple[int, int], dict[str, Any]], float]:
    """The teachers of several units of one protocol as one batched group (`--teacher-group`; sibeatgan.train.batched_teacher):
    {(fold, seed): its training result (`generator` None when it selected no epoch)}, and the group's seconds. A group
    that fails as a whole returns {}: every unit then trains its own teacher, with both of its attempts."""
    from sibeatgan.config import TeacherConfig
    from sibeatgan.errors import SibeatganError
    from sibeatgan.steps.train import run_train_teacher_group

    p = PROTOCOLS[units[0][0]]
    configs = [TeacherConfig(split=p["split"], fold=fold, selection=p["selection"], epochs=args.teacher_epochs, seed=seed, device=args.device,
                             max_train_beats=args.teacher_max_train_beats) for _, fold, seed in units]
    folder = args.work / ("group-" + "-".join(unit_name(*u) for u in units))
    shutil.rmtree(folder, ignore_errors=True)
    t = time.perf_counter()
    try:
        done = run_train_teacher_group(configs, args.dataset, folder)
    except SibeatganError as err:
        log.warning("the teacher group %s failed (%s); each unit trains its own teacher", [unit_name(*u) for u in units], err)
        return {}, time.perf_counter() - t
    return {(c.fold, c.seed): result for c, result in zip(configs, done.values())}, time.perf_counter() - t


def _staging(out: Path, name: str) -> Path:
    """An empty `.name.partial` folder in `out`, where a unit is written before `_publish` puts it in place."""
    tmp = out / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path, name: str) -> None:
    """A unit appears whole or not at all: its staging folder renamed into place, over any older copy."""
    final = out / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def run_unit(args: argparse.Namespace, protocol: str, fold: int, seed: int, results: list[Path], out: Path,
             grouped: tuple[dict[str, Any], float, int] | None = None) -> dict[str, Any]:
    """One unit: its teacher, then the shared protocol (sibeatgan.steps.protocol.run_protocol): the best student and its
    control as one batched group, every model evaluated on the unit's test beats (and by its reconstruction error where
    it chose another score), the winner on validation. `grouped`: its teacher already trained in a group of units
    (the result, the group's seconds, the group's size); a group member that selected no epoch was its first attempt."""
    from sibeatgan.config import EvaluateConfig, StudentConfig, replace
    from sibeatgan.errors import SibeatganError
    from sibeatgan.files import write_json
    from sibeatgan.steps.protocol import run_protocol

    p = PROTOCOLS[protocol]
    name = unit_name(protocol, fold, seed)
    best_path = find_best(protocol, fold, out, *results) if args.search else None
    if args.search and best_path is None:
        raise SystemExit(f"{name}: no {search_name(protocol, fold)}/best.json in {out} or {', '.join(map(str, results))}; run its search first")
    student = json.loads(best_path.read_text())["student"] if best_path else {}  # no search: StudentConfig's defaults (paper.md)
    work = args.work / name
    shutil.rmtree(work, ignore_errors=True)  # a unit is trained whole or not at all: nothing resumed from another attempt
    timings: dict[str, float] = {}
    t = time.perf_counter()
    teacher: dict[str, Any] = {}
    attempts: tuple[int, ...] = (1, 2)
    if grouped is not None:  # its share of the group's time; the group's member folder becomes the unit's teacher
        result, seconds, size = grouped
        timings["teacher_s"] = seconds / size
        if not result:  # the group failed as a whole: not this teacher's attempt
            log.warning("%s: its teacher group failed; it trains its own teacher", name)
        elif result.get("generator"):
            shutil.copytree(result["folder"], work / "teacher")
            teacher = {**result, "generator": str(work / "teacher" / "generator.pt")}
            attempts = ()
        else:
            log.warning("%s: its teacher selected no epoch in the group; trained once more on its own", name)
            attempts = (2,)
    for attempt in attempts:  # bench/paper.md: a teacher that fails is trained once more with the same seed
        try:
            teacher = _teacher(args, protocol, fold, seed, work / "teacher")
            break
        except SibeatganError as err:
            log.warning("%s: teacher attempt %d failed: %s", name, attempt, err)
            shutil.rmtree(work / "teacher", ignore_errors=True)
    timings["teacher_s"] = timings.get("teacher_s", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    best = replace(StudentConfig(**student), split=p["split"], fold=fold, selection=p["selection"], epochs=args.student_epochs,
                   max_train_beats=args.student_max_train_beats, device=args.device, seed=seed, score=p["score"])
    result: dict[str, Any] = {"trained": {}, "evaluations": {}, "figures": {}, "winner": None}
    if teacher.get("generator"):
        try:
            result = run_protocol(best, args.dataset, work / "teacher", work, evaluate=EvaluateConfig(
                split=p["split"], device=args.device, n_bootstrap=args.eval_bootstrap, plots=False), extra_scores=("reconstruction",),
                extra_for=("student", "control"))
        except SibeatganError as err:  # no candidate has a model: the unit is recorded as failed, never left to block the plan
            log.warning("%s: %s", name, err)
            if (work / "eval" / "teacher" / "evaluation.json").is_file():
                result["evaluations"] = {"teacher": str(work / "eval" / "teacher")}
                f = next(iter(json.loads((work / "eval" / "teacher" / "evaluation.json").read_text())["folds"].values()))
                result["figures"] = {"teacher": {"auc": f["auc"], "ap": f["ap"], "auc_ci": f.get("auc_ci"),
                                                 "f1_at_threshold": f["operating"]["f1"], "score": f.get("score"), "n": f["n"]}}
    timings["protocol_s"] = time.perf_counter() - t
    trained = result["trained"]
    failed = [who for who in ("teacher",) if not teacher.get("generator")]
    failed += [who for who in ("student", "control") if not (trained.get(who) or {}).get("generator")]
    tmp = _staging(out, name)
    figures: dict[str, Any] = {}
    for who, folder in result["evaluations"].items():  # `student@reconstruction` is kept as eval/student_reconstruction
        kept = who.replace("@", "_")
        _keep_eval(Path(folder), tmp / "eval" / kept)
        figures[kept] = {k: result["figures"][who][k] for k in ("auc", "ap", "auc_ci", "f1_at_threshold", "score", "n")}
    for who, folder in (("teacher", work / "teacher"), ("students", work / "candidates")):
        for f in folder.rglob("*.json"):
            if f.name in ("metrics.json", "score.json", "model_card.json"):
                target = tmp / "train" / who / f.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
    unit = {"unit": name, "status": f"failed ({', '.join(failed)}: no model selected)" if failed else "done",
            "protocol": protocol, "split": p["split"], "selection": p["selection"], "fold": fold, "seed": seed,
            "card": card(), "teacher_group": grouped[2] if grouped else 1, "timings": timings, "seconds": sum(timings.values()), "figures": figures,
            "best": str(best_path) if best_path else "none (StudentConfig defaults, bench/paper.md)",
            "student_config": student, "scores": {who: ((trained.get(who) or {}).get("score") or {}).get("kind") for who in ("student", "control")},
            "winner": result["winner"], "teacher_best_epoch": teacher.get("best_epoch"), "args": {k: str(v) for k, v in vars(args).items()}}
    write_json(tmp / "unit.json", unit)
    _publish(tmp, out, name)
    log.info("%s %s in %.0f s on %s: %s; winner on validation: %s", name, unit["status"], unit["seconds"], unit["card"],
             ", ".join(f"{who} AUC {f['auc']:.4f} ({f['score']})" for who, f in figures.items()), (result["winner"] or {}).get("winner"))
    return unit


def run_search(args: argparse.Namespace, protocol: str, fold: int) -> dict[str, Any]:
    """The Optuna search of one fold on a teacher of that fold, seed 0 (trained as a unit's teacher is): best.json and
    the trials in `<protocol>-f<fold>-search/`, which the fold's units read. Validation beats only, never test ones."""
    from sibeatgan.config import StudentConfig, TuneConfig
    from sibeatgan.files import write_json
    from sibeatgan.steps.tune import run_tune

    p = PROTOCOLS[protocol]
    out = args.out or args.results
    name = search_name(protocol, fold)
    work = args.work / name
    shutil.rmtree(work, ignore_errors=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    _teacher(args, protocol, fold, 0, work / "teacher")
    timings["teacher_s"] = time.perf_counter() - t
    t = time.perf_counter()
    base = StudentConfig(split=p["split"], fold=fold, selection=p["selection"], epochs=args.tune_epochs, device=args.device,
                         max_train_beats=args.tune_max_train_beats)
    tuned = run_tune(TuneConfig(n_trials=args.trials, group_size=args.group_size, heartbeat_s=30, grace_s=600), base, args.dataset,
                     work / "teacher", work / "tune")
    timings["tune_s"] = time.perf_counter() - t
    tmp = _staging(out, name)
    for f in ("best.json", "summary.json", "trials.csv"):
        if (work / "tune" / f).is_file():
            shutil.copy2(work / "tune" / f, tmp / f)
    search = {"unit": name, "protocol": protocol, "fold": fold, "card": card(), "timings": timings, "seconds": sum(timings.values()),
              "best": {k: tuned[k] for k in ("trial", "value", "criterion", "params") if k in tuned},
              "args": {k: str(v) for k, v in vars(args).items()}}
    write_json(tmp / "search.json", search)
    _publish(tmp, out, name)
    log.info("%s done in %.0f s on %s: best trial %s, %s %.4f", name, search["seconds"], search["card"],
             search["best"].get("trial"), search["best"].get("criterion"), search["best"].get("value") or float("nan"))
    return search


def cmd_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    results = [args.results]
    seeds = [int(s) for s in args.seeds.split(",")]
    protocols = args.protocols.split(",")
    this_card = card()
    ran: list[str] = []

    def fits(name: str, kind: str, count: int = 1) -> bool:
        """Whether `count` more units of `kind` (unit or search) fit in what is left of the budget (the first single one
        always runs; a unit's seconds are those measured on this card, or --assume-s)."""
        if args.units and len(ran) + count > args.units:
            return False
        done = list(done_units(out, *results).values()) + [json.loads(f.read_text()) for d in (out, *results)
                                                           for f in sorted(Path(d).glob("*-search/search.json"))]
        same = [u["seconds"] for u in done if u.get("card") == this_card and u["unit"].endswith("-search") == (kind == "search")]
        estimate = count * (max(same) if same else args.assume_s)
        left = args.budget_s - (time.perf_counter() - started)
        if (ran or count > 1) and estimate > left:
            log.info("stopping before %s: %.0f s left, it takes about %.0f s on %s%s", name, left, estimate, this_card,
                     "" if same else " (none measured yet: --assume-s)")
            return False
        return True

    if args.teacher_group > 1 and args.search:
        raise SystemExit("--teacher-group trains the teachers of primary units together; it does not run with --search")
    pending = [u for u in plan(protocols, seeds) if unit_name(*u) not in done_units(out, *results)]
    while args.teacher_group > 1 and pending:  # groups of up to K consecutive units of one protocol, in plan order
        group = next_group(pending, args.teacher_group)
        while len(group) > 1 and not fits(f"a teacher group of {len(group)}", "unit", len(group)):
            group = group[:-1]
        if not fits(unit_name(*group[0]), "unit"):
            break
        if len(group) == 1:  # nothing to batch with: the unit trains its own teacher
            ran.append(run_unit(args, *group[0], results, out)["unit"])
            pending = pending[1:]
            continue
        teachers, seconds = _teacher_group(args, group)
        for protocol, fold, seed in group:
            ran.append(run_unit(args, protocol, fold, seed, results, out, (teachers.get((fold, seed), {}), seconds, len(group)))["unit"])
        shutil.rmtree(args.work / ("group-" + "-".join(unit_name(*u) for u in group)), ignore_errors=True)  # each unit copied its own
        pending = pending[len(group):]
    for protocol, fold, seed in plan(protocols, seeds) if args.teacher_group <= 1 else []:
        name = unit_name(protocol, fold, seed)
        if name in done_units(out, *results):
            continue
        if args.search and find_best(protocol, fold, out, *results) is None:
            if not fits(search_name(protocol, fold), "search"):
                break
            ran.append(run_search(args, protocol, fold)["unit"])
        if not fits(name, "unit"):
            break
        ran.append(run_unit(args, protocol, fold, seed, results, out)["unit"])
    pending = [unit_name(*u) for u in plan(protocols, seeds) if unit_name(*u) not in done_units(out, *results)]
    print(json.dumps({"ran": ran, "pending": pending, "seconds": time.perf_counter() - started, "card": this_card}, indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    seeds = [int(s) for s in args.seeds.split(",")]
    done = done_units(args.results)
    for protocol, fold, seed in plan(args.protocols.split(","), seeds):
        name = unit_name(protocol, fold, seed)
        if seed == seeds[0] and args.search:
            f = Path(args.results) / search_name(protocol, fold) / "search.json"
            u = json.loads(f.read_text()) if f.is_file() else None
            print(f"{search_name(protocol, fold):<20}" + (f"done on {u['card']} in {u['seconds']:.0f} s" if u else "pending"))
        u = done.get(name)
        state = "pending" if u is None else f"{u.get('status', 'done')} on {u['card']} in {u['seconds']:.0f} s"
        print(f"{name:<20}{state}")
    return 0


def _substitute(src: Path, dst: Path, constant: bool) -> Path:
    """A copy of the evaluation folder `src` standing in for a failed model (bench/paper.md): its scores as they are
    (a failed control takes the student's), or all one constant (a failed student: AUC 0.5)."""
    import numpy as np

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    if constant:
        for f in dst.rglob("scores.npz"):
            with np.load(f) as npz:
                arrays = {k: npz[k] for k in npz.files}
            arrays["scores"] = np.zeros_like(arrays["scores"])
            with open(f, "wb") as fh:
                np.savez_compressed(fh, **arrays)
    return dst


def primary(args: argparse.Namespace, done: dict[str, dict[str, Any]], work: Path) -> tuple[dict[str, Any], list[str]]:
    """The pre-registered primary comparison (bench/paper.md): student - control over the 15 BeatGAN units, two-level
    interval, 2,000 resamples, seed 0, a failed student scored as a loss and a failed control as the student; reported
    only when every planned unit is in."""
    from sibeatgan.compare import run_compare
    from sibeatgan.config import EvaluateConfig

    planned = [unit_name(*u) for u in plan(["beatgan"], [int(s) for s in args.seeds.split(",")])]
    missing = [n for n in planned if n not in done]
    if missing:
        return ({"status": "not reported", "units_done": len(planned) - len(missing), "units_planned": len(planned), "missing": missing},
                [f"**Primary endpoint** (bench/paper.md): not reported, {len(planned) - len(missing)} of {len(planned)} units done "
                 "(no interim look; the missing units would count as failed students).", ""])
    controls, students, failed = [], [], []
    for name in planned:
        ev = args.results / name / "eval"
        student_ok, control_ok = (ev / "student").is_dir(), (ev / "control").is_dir()
        if not (ev / "teacher").is_dir():
            raise SystemExit(f"{name}: no teacher evaluation, so its failed student cannot be scored as a loss; rerun the unit")
        if not student_ok:
            failed.append(f"{name} (student: scored as a loss)")
            students.append(_substitute(ev / "teacher", work / "primary-subst" / name / "student", constant=True))
        else:
            students.append(ev / "student")
        if not control_ok:  # it takes the student's scores; when the student failed too, the teacher's (so it stays a loss)
            failed.append(f"{name} (control: takes the {'student' if student_ok else 'teacher'}'s scores)")
            controls.append(_substitute(students[-1] if student_ok else ev / "teacher", work / "primary-subst" / name / "control",
                                        constant=False))
        else:
            controls.append(ev / "control")
    r = run_compare(EvaluateConfig(n_bootstrap=2000, seed=0), args.dataset, controls, students, args.results / "primary", level="unit+record")
    pooled = r["pooled"]
    lo, hi = pooled["delta_auc_ci"]
    verdict = "the student is better" if lo > 0 else "not shown: the interval includes 0" if hi >= 0 else "the control is better"
    result = {"status": "reported", "delta_auc": pooled["delta_auc"], "delta_auc_ci": [lo, hi], "p_auc": pooled.get("p_auc"),
              "level": pooled.get("level"), "units": len(planned), "failed": failed, "verdict": verdict}
    return result, [f"**Primary endpoint** (bench/paper.md): student - control, pooled delta AUC over {len(planned)} units "
                    f"{pooled['delta_auc']:+.4f} [{lo:+.4f}, {hi:+.4f}], p {pooled.get('p_auc', float('nan')):.3f} (two-level, "
                    f"alpha 0.05): {verdict}. Failed units: {len(failed)}" + (f" ({'; '.join(failed)})" if failed else "") + ".",
                    "", "Everything below is secondary (not pre-registered).", ""]


def cmd_summarize(args: argparse.Namespace) -> int:
    import numpy as np

    from sibeatgan.compare import run_compare
    from sibeatgan.config import EvaluateConfig
    from sibeatgan.files import write_json, write_text

    done = done_units(args.results)
    if not done:
        print(f"no unit in {args.results}: nothing to summarize", file=sys.stderr)
        return 1
    work = args.results / ".compare"
    summary: dict[str, Any] = {}
    lines = ["# Paper-scale protocol: student vs its no-KD control (bench/paper.py summarize)", ""]
    summary["primary"], primary_lines = primary(args, done, work)
    lines += primary_lines
    cconf = EvaluateConfig(n_bootstrap=args.n_bootstrap)
    for protocol in PROTOCOLS:
        units = sorted((u for u in done.values() if u["protocol"] == protocol and u.get("status", "done") == "done"),
                       key=lambda u: (u["fold"], u["seed"]))
        failed = sorted(u["unit"] for u in done.values() if u["protocol"] == protocol and u.get("status", "done") != "done")
        if not units:
            continue

        def eval_folders(who: str, fallback: str | None = None) -> list[Path]:
            """Each unit's evaluation of `who`; a `<model>_reconstruction` folder exists only where the model chose another
            score, else its own evaluation is the reconstruction error's."""
            folders = [args.results / u["unit"] / "eval" / who for u in units]
            return [f if f.is_dir() or fallback is None else args.results / u["unit"] / "eval" / fallback for f, u in zip(folders, units)]

        folders = {who: eval_folders(who) for who in ("teacher", "student", "control")}
        folders.update(student_reconstruction=eval_folders("student_reconstruction", "student"),
                       control_reconstruction=eval_folders("control_reconstruction", "control"))
        trio = ("teacher", "student", "control")
        means = {who: {k: float(np.mean([u["figures"][who][k] for u in units])) for k in ("auc", "ap")} for who in trio}
        sds = {who: float(np.std([u["figures"][who]["auc"] for u in units], ddof=1)) if len(units) > 1 else None for who in trio}
        comparisons = {}
        for name, a, b in (("student_vs_teacher", "teacher", "student"), ("student_vs_control", "control", "student"),
                           ("control_vs_teacher", "teacher", "control"),
                           ("student_reconstruction_vs_teacher", "teacher", "student_reconstruction"),
                           ("student_reconstruction_vs_control_reconstruction", "control_reconstruction", "student_reconstruction")):
            r = run_compare(cconf, args.dataset, folders[a], folders[b], work / protocol / name)
            comparisons[name] = {"pooled": r["pooled"], "folds": r["folds"]}
        folds = sorted({u["fold"] for u in units})
        seeds = sorted({u["seed"] for u in units})
        summary[protocol] = {"units": [u["unit"] for u in units], "folds": folds, "seeds": seeds, "cards": sorted({u["card"] for u in units}),
                             "mean": means, "auc_sd_over_units": sds, "comparisons": comparisons,
                             "failed_units": failed,
                             "scores": {who: sorted({u["figures"][who].get("score") or "reconstruction" for u in units}) for who in trio}}
        chosen = "; ".join(f"{who}: {', '.join(v)}" for who, v in summary[protocol]["scores"].items())
        lines += [f"## {protocol} protocol ({PROTOCOLS[protocol]['split']} split, selection {PROTOCOLS[protocol]['selection']}): "
                  f"{len(units)} unit(s), folds {folds}, seeds {seeds}, on {', '.join(summary[protocol]['cards'])}", "",
                  f"Scores used (chosen on validation): {chosen}." + (f" Failed units (left out): {', '.join(failed)}." if failed else ""), "",
                  "| model | mean AUC | sd over units | mean AP |", "|---|---|---|---|"]
        for who in trio:
            sd = f"{sds[who]:.4f}" if sds[who] is not None else "-"
            lines.append(f"| {who} | {means[who]['auc']:.4f} | {sd} | {means[who]['ap']:.4f} |")
        lines += ["", "| comparison (b - a), pooled over folds and seeds | delta AUC [95% CI] | p | delta AP [95% CI] | p |", "|---|---|---|---|---|"]
        for name, c in comparisons.items():
            r = c["pooled"]

            def ci(key: str) -> str:
                lo_hi = r.get(f"delta_{key}_ci")
                return f"{r[f'delta_{key}']:+.4f}" + (f" [{lo_hi[0]:+.4f}, {lo_hi[1]:+.4f}]" if lo_hi else "")

            lines.append(f"| {name.replace('_', ' ')} | {ci('auc')} | {r.get('p_auc', float('nan')):.3f} | {ci('ap')} | {r.get('p_ap', float('nan')):.3f} |")
        lines.append("")
    shutil.rmtree(work, ignore_errors=True)
    write_json(args.results / "summary.json", summary)
    write_text(args.results / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", type=Path, default=Path("bench/results/paper"), help="the units done so far")
    common.add_argument("--seeds", default="0,1,2")
    common.add_argument("--protocols", default="beatgan,clean")
    r = sub.add_parser("run", parents=[common], help="the next units, within --budget-s")
    r.add_argument("dataset", type=Path)
    r.add_argument("--out", type=Path, default=None, help="where new units go (default: --results)")
    r.add_argument("--work", type=Path, default=Path("/tmp/paper-work"), help="model files and checkpoints")
    r.add_argument("--device", default="auto")
    r.add_argument("--budget-s", type=float, default=500.0)
    r.add_argument("--units", type=int, default=0, help="at most this many units, a search counting as one (0: as many as the budget allows)")
    r.add_argument("--assume-s", type=float, default=400.0, help="a unit's seconds until one has been measured on this card")
    r.add_argument("--teacher-epochs", type=int, default=100)
    r.add_argument("--teacher-max-train-beats", type=int, default=None)
    r.add_argument("--teacher-group", type=int, default=1, help="train the teachers of up to this many units as one batched group")
    r.add_argument("--trials", type=int, default=16)
    r.add_argument("--group-size", type=int, default=8)
    r.add_argument("--tune-epochs", type=int, default=6)
    r.add_argument("--tune-max-train-beats", type=int, default=16384)
    r.add_argument("--student-epochs", type=int, default=10)
    r.add_argument("--search", action="store_true", help="a search per fold first (secondary: bench/paper.md pre-registers none)")
    r.add_argument("--student-max-train-beats", type=int, default=None)
    r.add_argument("--eval-bootstrap", type=int, default=200)
    st = sub.add_parser("status", parents=[common], help="which units are done (no figures: bench/paper.md, no interim looks)")
    st.add_argument("--search", action="store_true", help="list the searches too")
    m = sub.add_parser("summarize", parents=[common], help="means and paired comparisons over every unit done")
    m.add_argument("dataset", type=Path)
    m.add_argument("--n-bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "run":
        return cmd_run(args)
    return cmd_status(args) if args.cmd == "status" else cmd_summarize(args)


if __name__ == "__main__":
    sys.exit(main())
