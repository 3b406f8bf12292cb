"""Training steps: the teacher, one student, and the protocol's candidates (the best student and its no-KD control,
trained together as one batched group), each tracked as its own MLflow run with per-epoch curves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from sibeatgan.config import StudentConfig, TeacherConfig, TrackingConfig, replace
from sibeatgan.files import write_json
from sibeatgan.steps.tracked import StepRun, step_runs, tracked

MODEL_FILES = ("metrics.json", "model_card.json", "score.json")


def run_train_teacher(config: TeacherConfig, dataset: Path, out: Path, tracking: TrackingConfig | None = None, resume: bool = True,
                      progress: bool = False, split: Path | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Train the BeatGAN teacher (sibeatgan.train.teacher); with `tracking`, one MLflow run with every epoch."""
    from sibeatgan.train.teacher import run_train_teacher as train

    runs = step_runs(tracking, "train-teacher", out, run_name or f"teacher-f{config.fold}-s{config.seed}", protocol=config.split,
                     device=config.device, fold=config.fold, seed=config.seed, kind="teacher")
    return tracked(runs, lambda cbs: train(config, dataset, out, resume=resume, progress=progress, split=split, callbacks=cbs), MODEL_FILES)


def run_train_student(config: StudentConfig, dataset: Path, teacher: Path, out: Path, tracking: TrackingConfig | None = None,
                      resume: bool = True, progress: bool = False, split: Path | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Distil one student from `teacher` (sibeatgan.train.distill); with `tracking`, one MLflow run with every epoch."""
    from sibeatgan.train.distill import run_train_student as train

    runs = step_runs(tracking, "train-student", out, run_name or f"student-f{config.fold}-s{config.seed}", protocol=config.split,
                     device=config.device, fold=config.fold, seed=config.seed, kind="student")
    return tracked(runs, lambda cbs: train(config, dataset, teacher, out, resume=resume, progress=progress, split=split, callbacks=cbs),
                   MODEL_FILES)


def control_of(student: StudentConfig) -> StudentConfig:
    """The no-KD control of a student: the same init, epochs, beats, seed and everything else, without the
    distillation and contrastive terms (alpha = beta = 0): the teacher simply trained on for as long."""
    return replace(student, alpha=0.0, beta=0.0)


class MemberRuns:
    """Training-loop callback for a batched group whose members are separate models: member k's rows, selection and
    end go to its own StepRun (not one run with m0./m1. prefixes)."""

    def __init__(self, runs: list[StepRun], configs: list[dict[str, Any]]) -> None:
        self.runs, self.configs = runs, configs

    def on_fit_start(self, info: dict[str, Any]) -> None:
        for run, conf in zip(self.runs, self.configs):
            run.on_fit_start({**info, "config": conf, "members": None, "fold": conf.get("fold", info.get("fold"))})

    def on_epoch_end(self, epoch: int, rows: Any, control: Any) -> None:
        for run, row in zip(self.runs, rows):
            if row is not None:
                run.tracker.on_epoch_end(epoch, row)

    def on_fit_end(self, result: dict[str, Any]) -> None:
        for run, member in zip(self.runs, result.get("members") or [result]):
            run.on_fit_end(member)

    def finish(self, files: Any = (), status: str = "FINISHED") -> None:
        for run in self.runs:
            run.finish(MODEL_FILES, status)


def _place_members(group: Path, out: Path, names: list[str]) -> None:
    """A batched group's member_<k>/ files copied into `out/<names[k]>`, each with its own metrics.json."""
    rows = json.loads((group / "metrics.json").read_text())
    rows = rows.get("members", [rows])
    for k, name in enumerate(names):
        src, dst = group / f"member_{k}" if len(names) > 1 else group, out / name  # one member: `fit` writes no member_0/
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir() if src.is_dir() else ():
            if f.is_file() and f.name not in ("checkpoint.pt", "metrics.json"):
                shutil.copy2(f, dst / f.name)
        write_json(dst / "metrics.json", rows[k])


def teacher_name(config: TeacherConfig) -> str:
    return f"teacher-f{config.fold}-s{config.seed}"


def run_train_teacher_group(configs: Sequence[TeacherConfig], dataset: Path, out: Path, tracking: TrackingConfig | None = None,
                            resume: bool = True, split: Path | None = None) -> dict[str, dict[str, Any]]:
    """Teachers of several (fold, seed) pairs trained as one batched group (sibeatgan.train.batched_teacher), each written
    as the model folder `out/teacher-f<fold>-s<seed>` that `run_train_teacher` would write (generator.pt, model_card.json,
    metrics.json), each its own MLflow run with `tracking`. Returns {name: the member's training result, with `folder`
    and `generator` (None for a member with no finite validation epoch)}."""
    from sibeatgan.config import to_dict
    from sibeatgan.train.batched_teacher import run_train_teachers

    out = Path(out)
    names = [teacher_name(c) for c in configs]
    runs = [StepRun(tracking, "train-teacher", out / name, name, protocol=c.split, device=c.device, fold=c.fold, seed=c.seed,
                    kind="teacher") for name, c in zip(names, configs)] if tracking else []
    callbacks = [MemberRuns(runs, [to_dict(c) for c in configs])] if runs else []
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    group = out / "group"
    results: list[dict[str, Any]] = []

    def train_and_place(cbs: list[Any]) -> dict[str, Any]:
        done = run_train_teachers(list(configs), dataset, group, resume=resume, split=split, callbacks=cbs)
        results.extend(done.get("members", [done]))
        _place_members(group, out, names)
        return {}

    tracked(callbacks, train_and_place, MODEL_FILES)
    return {name: {**results[k], "folder": str(out / name),
                   "generator": str(out / name / "generator.pt") if results[k].get("generator") else None}
            for k, name in enumerate(names)}


def _stand_in_cards(out: Path, with_model: list[str], without: list[str]) -> None:
    """A candidate that selected no epoch (its validation criterion never finite) gets a stand-in card: a trained
    sibling's, with its own kind, no validation value and `has_model` false, so the winner's choice counts it as lost."""
    from sibeatgan.card import read_card

    if not with_model:
        return
    sibling = read_card(out / with_model[0])
    for name in without:
        sibling.model_copy(update={"kind": name.split("-")[0], "validation_metric": None, "has_model": False, "epoch": None,
                                   "threshold": None}).write(out / name)


def candidate_configs(best: StudentConfig, seeds: Sequence[int] | None = None) -> dict[str, StudentConfig]:
    """The protocol's candidates: the student of `best` and its no-KD control, for `best`'s seed (named `student` and
    `control`) or for each of `seeds` (`student-s<seed>`, ..., then `control-s<seed>`, ...)."""
    if seeds is None:
        return {"student": best, "control": control_of(best)}
    students = {f"student-s{s}": replace(best, seed=int(s)) for s in seeds}
    return students | {f"control-s{s}": control_of(replace(best, seed=int(s))) for s in seeds}


def run_train_candidates(best: StudentConfig, dataset: Path, teacher: Path, out: Path, tracking: TrackingConfig | None = None,
                         split: Path | None = None, resume: bool = True, seeds: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """The protocol's candidates from one teacher (`candidate_configs`): the student of `best` (the search's winner) and
    its no-KD control, trained as one batched group (the same init, epochs, training beats, data order and seed), each
    written as a model folder of its own, `out/<name>` (generator.pt, model_card.json, metrics.json, score.json), each
    its own MLflow run with `tracking`. Returns {name: the member's training result, with `folder` and `generator`
    (None for a member with no finite validation epoch)}."""
    from sibeatgan.config import to_dict
    from sibeatgan.train.distill import train_student_group

    out = Path(out)
    members = candidate_configs(best, seeds)
    runs = [StepRun(tracking, "train-student", out / name, f"{name.split('-')[0]}-f{c.fold}-s{c.seed}", protocol=c.split,
                    device=c.device, fold=c.fold, seed=c.seed, kind=name.split("-")[0]) for name, c in members.items()] if tracking else []
    callbacks = [MemberRuns(runs, [to_dict(c) for c in members.values()])] if runs else []
    for name in members:  # each member's run journal lives in its own model folder
        (out / name).mkdir(parents=True, exist_ok=True)
    group = out / "group"
    results: list[dict[str, Any]] = []

    def train_and_place(cbs: list[Any]) -> dict[str, Any]:
        results.extend(train_student_group(list(members.values()), dataset, teacher, group, cbs, split, resume=resume))
        _place_members(group, out, list(members))  # before the runs end, so each logs its own model folder's files
        return {}

    tracked(callbacks, train_and_place, MODEL_FILES)
    _stand_in_cards(out, [name for k, name in enumerate(members) if results[k].get("generator")],
                    [name for k, name in enumerate(members) if not results[k].get("generator")])
    return {name: {**results[k], "folder": str(out / name),
                   "generator": str(out / name / "generator.pt") if results[k].get("generator") else None}
            for k, name in enumerate(members)}
