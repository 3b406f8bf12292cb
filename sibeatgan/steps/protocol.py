"""The experiment protocol, once, for the pipeline's components and the bench scripts alike: after the search, the best
student and its no-KD control trained together, evaluated on the same beats, compared, and the winner chosen on
validation only (`run_protocol`, `choose_winner`); and what a pipeline task needs around it: a step's config from the
pipeline's parameters, its tracking (nested under the pipeline run's MLflow run), the (fold, seed) grid, the search's
config, the pick of one run among a fan-in's outputs, content-keyed checkpoints and their pruning.

Nothing here imports kfp: components pass their artifacts in, duck-typed (`.path`, `.metadata`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np

from sibeatgan.errors import ConfigError, SibeatganError

C = TypeVar("C")
OPTUNA_STORAGE_ENV = "OPTUNA_STORAGE"  # set from the sibeatgan-optuna secret on a cluster


def step_config(cls: type[C], config_yaml: str = "", **overrides: Any) -> C:
    """A step's config from YAML text (as `--config` reads it: top-level fields or one section per step)
    plus typed overrides; `None` overrides are left out, so a component's unset parameter keeps the default."""
    from sibeatgan.config import load_config

    given = {k: v for k, v in overrides.items() if v is not None}
    if not config_yaml.strip():
        return load_config(cls, None, given)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml)
        try:
            return load_config(cls, path, given)
        except ConfigError as err:
            raise ConfigError(str(err).replace(str(path), "config_yaml")) from None


def _as_int(value: Any, what: str) -> int:
    """Pipeline lists reach components as JSON numbers (0.0 for 0); refuse anything that is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{what}: {value!r} is not an integer")
    return int(value)


def run_grid(folds: Sequence[Any], seeds: Sequence[Any]) -> list[dict[str, int]]:
    """Every (fold, seed) pair the teacher is trained for, seed-major, duplicates refused."""
    f = [_as_int(x, "folds") for x in folds]
    s = [_as_int(x, "seeds") for x in seeds]
    if not f or not s:
        raise ConfigError(f"the run grid needs at least one fold and one seed, got folds={f} seeds={s}")
    for name, values in (("folds", f), ("seeds", s)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{name}: {values} repeats a value")
        if min(values) < 0:
            raise ConfigError(f"{name}: {values} holds a negative value")
    return [{"fold": fold, "seed": seed} for seed in s for fold in f]




def check_search(trials: int, workers: int, members_per_worker: int, tune_epochs: int = 1, student_epochs: int = 1) -> None:
    """The search's sizes, refused before any task starts (trials 0 means no search, so the rest is not used then)."""
    if trials < 0:
        raise ConfigError(f"trials: {trials} is negative (0 skips the search and registers the teacher)")
    if trials > 0:
        for name, value in (("workers", workers), ("members_per_worker", members_per_worker), ("tune_epochs", tune_epochs),
                            ("student_epochs", student_epochs)):
            if value < 1:
                raise ConfigError(f"{name}: {value}; the search needs at least 1")


def tune_config(config_yaml: str, trials: int, workers: int, members_per_worker: int, storage: str, run_id: str) -> Any:
    """The search's TuneConfig in a pipeline task: the `tune` section plus the pipeline's parameters; the storage is
    the `optuna_storage` parameter (a journal file locally), else $OPTUNA_STORAGE (the cluster's database, from a
    secret); the study is named after the pipeline run so each run searches afresh and a retried worker rejoins it."""
    from sibeatgan.config import TuneConfig

    check_search(trials, workers, members_per_worker)
    url = storage or os.environ.get(OPTUNA_STORAGE_ENV, "")
    if not url:
        raise ConfigError(f"no Optuna storage: the optuna_storage parameter is empty and ${OPTUNA_STORAGE_ENV} is not set "
                          "(on a cluster it comes from the sibeatgan-optuna secret; locally give a *.journal path all tasks can see)")
    base = step_config(TuneConfig, config_yaml)
    return step_config(TuneConfig, config_yaml, n_trials=trials, workers=workers, group_size=members_per_worker, storage=url,
                       study_name=f"{base.study_name}-{run_id}")


def pick_run(artifacts: Sequence[Any], fold: int, seed: int, what: str) -> Any:
    """The artifact of one (fold, seed) among a ParallelFor's collected outputs (matched on their metadata)."""
    found = [a for a in artifacts
             if _as_int(a.metadata.get("fold", -1), "fold") == fold and _as_int(a.metadata.get("seed", -1), "seed") == seed]
    if len(found) != 1:
        raise ConfigError(f"{what}: {len(found)} artifacts of fold {fold} seed {seed} among {len(artifacts)} "
                          f"({[(a.metadata.get('fold'), a.metadata.get('seed')) for a in artifacts]})")
    return found[0]


def roc_points(scores: np.ndarray, positive: np.ndarray, max_points: int = 200) -> tuple[list[float], list[float], list[float]]:
    """(fpr, tpr, thresholds) of the ROC curve, thinned to at most `max_points` (KFP stores them as
    run metadata) and with finite thresholds only (the curve's first point has threshold +inf)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64))
    thr = np.where(np.isfinite(thr), thr, np.nanmax(np.where(np.isfinite(thr), thr, -np.inf)) + 1.0)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return fpr.tolist(), tpr.tolist(), thr.tolist()


def evaluation_markdown(result: dict[str, Any], title: str) -> str:
    """The evaluation summary the KFP UI shows: one row per fold, per-class AUC, and where the files are."""
    lines = [f"# {title}", "", "| fold | AUC | AP | F1 at the threshold | best F1 (oracle) | test beats (anomalous) | epoch | selection |",
             "|---|---|---|---|---|---|---|---|"]
    for fold, m in result["folds"].items():
        ci = m.get("auc_ci")
        auc = f"{m['auc']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        op = m.get("operating") or {}
        at = f"{op['f1']:.4f} (threshold {op['threshold']:.4g}, {op.get('rule', 'saved')})" if "f1" in op else "n/a"
        lines.append(f"| {fold} | {auc} | {m['ap']:.4f} | {at} | {m['f1_oracle']:.4f} "
                     f"| {m['n']} ({m['n_anomalous']}) | {m.get('epoch')} | {m.get('selection')} |")
    for fold, m in result["folds"].items():
        per_class = ", ".join(f"{c} {v['auc']:.4f} (n={v['n']})" for c, v in m.get("per_class", {}).items())
        lines += ["", f"Per-class AUC, fold {fold}: {per_class or 'none'}"]
    lines += ["", f"Dataset {result['dataset_hash'][:12]}; evaluation.json, scores and plots are in the `evaluation` artifact.", ""]
    return "\n".join(lines)




def prune_checkpoints(root: Path, older_than_days: float, dry_run: bool = False) -> list[Path]:
    """Remove the training folders under `root` (content-keyed checkpoints, `checkpoint_key`) not written to for
    `older_than_days` days; returns what was (or, with `dry_run`, would be) removed. Only folders holding a
    checkpoint.pt are touched."""
    import shutil
    import time

    if older_than_days < 0:
        raise ConfigError(f"older_than_days: {older_than_days} is negative")
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    cutoff = time.time() - older_than_days * 86400
    removed = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "checkpoint.pt").is_file()):
        newest = max(f.stat().st_mtime for f in folder.rglob("*") if f.is_file())
        if newest < cutoff:
            removed.append(folder)
            if not dry_run:
                shutil.rmtree(folder)
    return removed


def choose_winner(cards: dict[str, Any], comparison: dict[str, Any] | None = None, table: str | Path | None = None) -> dict[str, Any]:
    """The model to register among the protocol's candidates (name -> ModelCard: `student` and its no-KD `control`),
    chosen on validation only: each candidate's selection criterion at its selected epoch (validation AUC under the
    paper protocol, the label-free criterion otherwise), the one value every candidate was selected by. The student
    must beat its control to win: a tie, or a student whose criterion is missing or not finite (diverged), registers
    the control. Test figures never enter the choice; `comparison` (the paired test comparison, b = student, a =
    control) and its `table` are carried along as the evidence a reviewer reads.

    Returns the evidence: winner, candidates, criterion, each one's validation value, the margin (winner minus the
    other in the criterion's better direction, so positive), and the reason in words."""
    import math

    from sibeatgan.train.loop import CRITERIA

    if set(cards) != {"student", "control"}:
        raise ConfigError(f"choose_winner: the candidates are a student and its control, got {sorted(cards)}")
    cards = {name: list(c) if isinstance(c, (list, tuple)) else [c] for name, c in cards.items()}  # one card per seed
    criteria = {c.criterion for cs in cards.values() for c in cs}
    if len(criteria) != 1 or None in criteria:
        raise ConfigError(f"choose_winner: the candidates were selected by different criteria ({sorted(map(str, criteria))}); "
                          "they must be trained together, by one protocol")
    (criterion,) = criteria
    higher = dict(CRITERIA.values()).get(criterion, True)
    # over seeds, the mean; a seed without a finite value (diverged, no model) makes the candidate's value missing
    per_seed = {name: [c.validation_metric for c in cs] for name, cs in cards.items()}
    ok = {name: all(v is not None and math.isfinite(v) for v in vs) for name, vs in per_seed.items()}
    values = {name: (sum(vs) / len(vs) if ok[name] else None) for name, vs in per_seed.items()}
    if not ok["control"] and not ok["student"]:
        raise ConfigError(f"choose_winner: neither candidate has a finite validation {criterion} ({values})")
    sign = 1.0 if higher else -1.0
    if not ok["student"]:
        winner, margin, reason = "control", None, "The student's validation criterion is missing or not finite (diverged)."
    elif not ok["control"]:
        winner, margin, reason = "student", None, "The control's validation criterion is missing or not finite (diverged)."
    else:
        gain = sign * (values["student"] - values["control"])
        winner = "student" if gain > 0 else "control"
        margin = abs(gain)
        reason = ("Its validation criterion is better than its no-KD control's (the teacher simply trained on for as long)."
                  if winner == "student" else
                  "The student did not beat its no-KD control on validation, so distillation is not shown to help here.")
    evidence: dict[str, Any] = {"winner": winner, "candidates": ["student", "control"], "criterion": criterion,
                                "higher_is_better": higher, "validation": values, "margin": margin, "reason": reason}
    if any(len(vs) > 1 for vs in per_seed.values()):
        evidence["validation_per_seed"] = per_seed
    if comparison is not None:
        pooled = comparison.get("pooled", comparison)
        evidence["test_comparison"] = {k: pooled.get(k) for k in ("delta_auc", "delta_auc_ci", "p_auc", "delta_ap", "delta_ap_ci", "p_ap",
                                                                  "auc_a", "auc_b", "bootstrap") if k in pooled}
        evidence["test_comparison"]["delta"] = "student - control"
    if table is not None:
        evidence["table"] = str(table)
    return evidence


def pipeline_tracking(config_yaml: str, mlflow_uri: str, kfp_run_id: str = "", **overrides: Any) -> Any:
    """A pipeline task's TrackingConfig: the `tracking` section of config_yaml and the pipeline's MLflow URI, with the
    pipeline run's own MLflow run (tagged with `kfp_run_id` by the start-run task) as the parent every step's run nests
    under; None when the pipeline has no MLflow URI (tracking off)."""
    from sibeatgan.config import TrackingConfig
    from sibeatgan.steps.tracked import find_pipeline_run

    if not mlflow_uri:
        return None
    tracking = step_config(TrackingConfig, config_yaml, tracking_uri=mlflow_uri, **overrides)
    if kfp_run_id:
        parent = find_pipeline_run(tracking, kfp_run_id)
        if parent:
            tracking = step_config(TrackingConfig, config_yaml, tracking_uri=mlflow_uri, parent_run_id=parent, **overrides)
    return tracking


def checkpoint_key(kind: str, config: Any, dataset_hash: str, *extra: str) -> str:
    """The folder name of a training's checkpoints on the shared volume: the kind, fold and seed for people, and a hash
    of what the model is (its config with its epochs, less the settings that do not change the model (device, AMP,
    CUDA graphs, batch size of evaluation, score), the dataset's content hash and, for a student, its teacher) for the
    machine. A resubmitted run with the same content resumes from there (a retried pod too); another config, epoch
    count or dataset gets a folder of its own, so a shorter rerun never takes a longer training's model."""
    import hashlib
    import json

    from sibeatgan.config import to_dict
    from sibeatgan.train.distill import RESUMABLE_CHANGES

    conf = {k: v for k, v in to_dict(config).items() if k not in RESUMABLE_CHANGES or k == "epochs"}
    digest = hashlib.sha256(json.dumps([kind, conf, dataset_hash, *extra], sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}-f{conf.get('fold', 0)}-s{conf.get('seed', 0)}-{digest[:16]}"


def run_protocol(best: Any, dataset: Path, teacher: Path, out: Path, seeds: Sequence[int] | None = None, evaluate: Any = None,
                 compare: Any = None, tracking: Any = None, extra_scores: Sequence[str] = (), extra_for: Sequence[str] = ("student",),
                 resume: bool = True) -> dict[str, Any]:
    """The experiment protocol after the search, once for the pipeline's pieces and the bench scripts alike: the student
    of `best` and its no-KD control trained together from `teacher` (for `best`'s seed, or each of `seeds`); the
    teacher and every candidate evaluated on the same test beats (each with its own score, and those of `extra_for` also
    with each of `extra_scores` other than their own, as `<name>@<score>`); paired comparisons pooled over seeds (student vs teacher, student vs control, control vs
    teacher; with each extra score, its student vs teacher and vs control); the winner on validation (`choose_winner`).
    A candidate with no model (no finite validation epoch) is evaluated nowhere and counts against it in the choice.
    Writes under `out`: candidates/, eval/<name>/, compare/<name>/, winner.json. Returns all of it."""
    from sibeatgan.card import read_card
    from sibeatgan.config import EvaluateConfig, replace
    from sibeatgan.files import write_json
    from sibeatgan.steps.evaluate import run_compare_step, run_evaluate_step
    from sibeatgan.steps.train import run_train_candidates

    out = Path(out)
    econf = evaluate or EvaluateConfig(split=best.split, device=best.device, plots=False)
    cconf = compare or econf
    trained = run_train_candidates(best, dataset, teacher, out / "candidates", tracking, resume=resume, seeds=seeds)
    teacher_file = Path(teacher) / "generator.pt" if Path(teacher).is_dir() else Path(teacher)
    evals = {"teacher": out / "eval" / "teacher"}
    figures: dict[str, Any] = {}

    def scored(name: str, model: Path, kind: str = "model") -> None:
        result = run_evaluate_step(replace(econf, score=kind), dataset, model, evals[name], tracking, run_name=f"evaluate-{name}")
        f = next(iter(result["folds"].values()))
        figures[name] = {"auc": f["auc"], "ap": f["ap"], "auc_ci": f.get("auc_ci"), "f1_at_threshold": f["operating"]["f1"],
                         "f1_oracle": f["f1_oracle"], "score": f.get("score"), "n": f["n"]}

    scored("teacher", teacher_file)
    for name, r in trained.items():
        if r.get("generator"):
            evals[name] = out / "eval" / name
            scored(name, Path(r["generator"]))
            if name.split("-")[0] in extra_for:
                own = (r.get("score") or {}).get("kind", "reconstruction")
                for kind in (k for k in extra_scores if k != own):
                    evals[f"{name}@{kind}"] = out / "eval" / f"{name}@{kind}"
                    scored(f"{name}@{kind}", Path(r["generator"]), kind)
    suffixes = [""] if seeds is None else [f"-s{s}" for s in seeds]
    sides = {"teacher": [evals["teacher"]] * len(suffixes)}
    for who in ("student", "control", *(f"student@{k}" for k in extra_scores)):
        base, _, kind = who.partition("@")
        names = [f"{base}{sfx}" + (f"@{kind}" if kind else "") for sfx in suffixes]
        if all(n in evals for n in names):
            sides[who] = [evals[n] for n in names]
    pairs = [("student", "teacher"), ("student", "control"), ("control", "teacher")]
    pairs += [(f"student@{k}", other) for k in extra_scores for other in ("teacher", "control")]
    comparisons: dict[str, Any] = {}
    for b, a in pairs:
        name = f"{b.replace('@', '_')}_vs_{a}"
        if a in sides and b in sides:
            comparisons[name] = run_compare_step(cconf, dataset, sides[a], sides[b], out / "compare" / name, tracking, run_name=f"compare-{name}")
        else:
            comparisons[name] = {"skipped": f"no model for {b if b not in sides else a} (no finite validation epoch)"}
    found = {name: read_card(r["folder"]) for name, r in trained.items() if r.get("generator")}
    if not found:
        raise SibeatganError(f"{out}: no candidate has a model (no finite validation epoch for any of {', '.join(trained)})")
    any_card = next(iter(found.values()))  # a candidate without a model: its criterion, no value (it lost)
    cards = {who: [found.get(f"{who}{sfx}", any_card.model_copy(update={"validation_metric": None})) for sfx in suffixes]
             for who in ("student", "control")}
    versus = comparisons["student_vs_control"]
    winner = choose_winner(cards, versus if "pooled" in versus else None,
                           out / "compare" / "student_vs_control" / "table.txt" if "pooled" in versus else None)
    write_json(out / "winner.json", winner)
    return {"trained": trained, "evaluations": {k: str(v) for k, v in evals.items()}, "figures": figures, "comparisons": comparisons,
            "winner": winner}
