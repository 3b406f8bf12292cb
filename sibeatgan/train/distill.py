"""The student's training: `train-student` (one student, or K at once as a batched group), on the one loop.

A student is distilled from a teacher trained on the same dataset, split and fold (it is refused
otherwise: a teacher of another fold has seen this fold's test beats). Its data, selection and
checkpoints are the loop's (sibeatgan.train.loop.fit); what it trains is StudentTrainer, or
BatchedStudentTrainer for a group of members with their own hyperparameters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sibeatgan.config import StudentConfig

log = logging.getLogger(__name__)

# Fields a group's members may differ in; the rest is shared by the whole group (one data set, one step shape).
MEMBER_FIELDS = ("init", "lambda_fm", "alpha", "beta", "T", "tau", "lr", "seed")
RESUMABLE_CHANGES = ("epochs", "device", "amp", "cuda_graph", "eval_batch_size", "score", "score_weight")
SCORE_WEIGHTS = (0.25, 0.5, 0.75)  # the combinations score "auto" tries


def _teacher_path(teacher: str | Path) -> Path:
    path = Path(teacher)
    return path / "generator.pt" if path.is_dir() else path


def _prepare(config: StudentConfig, dataset: Path, teacher: Path, split: Path | None):
    """Dataset, split, fit data and the frozen teacher, with the checks that keep a student honest."""
    from sibeatgan.card import card_of
    from sibeatgan.data.artifact import load
    from sibeatgan.data.splits import resolve_split
    from sibeatgan.device import select
    from sibeatgan.errors import ConfigError, DatasetError
    from sibeatgan.modelio import load_generator
    from sibeatgan.train.loop import FitData
    from sibeatgan.train.teacher import _select_train

    ds = load(dataset)
    content_hash = ds.content_hash()
    split_set = resolve_split(dataset, split, content_hash)
    rt = select(config.device, config.amp, config.cuda_graph)
    tpath = _teacher_path(teacher)
    teacher_g, meta = load_generator(tpath, rt.device)
    card_of(meta).check(content_hash, split_set.hash, config.fold, config.split, what=f"the teacher {tpath}")
    part = split_set.fold(config.split, config.fold)
    train_idx = _select_train(part.train, config.max_train_beats, config.seed)
    val_labels = ds.labels[part.val]
    if config.selection == "paper" and (val_labels == 0).all():
        raise DatasetError(f"{dataset}: selection='paper' needs labelled anomalies in the validation split; it has none")
    if config.score != "reconstruction" and teacher_g.nz != config.nz:
        raise ConfigError(f"score {config.score!r} compares latent codes, but the teacher's has {teacher_g.nz} dimensions and the "
                          f"student's nz is {config.nz}")
    if len(train_idx) < config.batch_size:
        raise DatasetError(f"{dataset}: {len(train_idx)} training beats, fewer than one batch of {config.batch_size}")
    data = FitData(torch.from_numpy(ds.float_beats(train_idx)), torch.from_numpy(ds.float_beats(part.val)), val_labels,
                   content_hash, split_set.hash, config.split, config.fold)
    return data, teacher_g, rt, str(tpath)


def choose_score(config: StudentConfig, generator: Path, teacher_g: torch.nn.Module, data: Any, rt: Any) -> tuple[dict[str, Any], float | None]:
    """Give a trained student its anomaly score, chosen on validation beats (config.score), and rewrite its file.

    The file gets the teacher's encoder when the latent codes compare (same nz), the score's spec (kind, weight, and
    the mean and sd of reconstruction error and discrepancy on normal validation beats, which standardize them), the
    validation AUC of every candidate when validation has labelled anomalies, and a threshold chosen anew on the
    chosen score by the model's own rule; its config records the score settings applied. Also written beside it as
    score.json. A discrepancy that is not finite on validation beats (a diverged student) leaves the reconstruction
    error as the score, with a warning and the reason in the spec; training's work is never lost to it.
    Returns the spec and the threshold."""
    from sibeatgan.files import write_json
    from sibeatgan.card import ThresholdPolicy, card_of
    from sibeatgan.metrics import combine, ranked_metrics, score, score_and_gap, standardizer
    from sibeatgan.modelio import load_generator, save_generator

    path = Path(generator)
    gen, meta = load_generator(path, rt.device)
    meta.pop("has_teacher_encoder", None)
    labels = data.val_labels
    normal = labels == 0
    x = data.val_x.to(rt.device)
    teacher = teacher_g if gen.nz == teacher_g.nz else None  # else refused in _prepare unless the score is the reconstruction error
    if teacher is None:
        rec = score(gen, x, config.eval_batch_size, rt.device, rt.amp)
    else:
        rec, gap = score_and_gap(gen, teacher_g.encoder, x, config.eval_batch_size, rt.device, rt.amp)
    spec: dict[str, Any] = {"kind": "reconstruction", "chosen_by": "validation AUC" if config.score == "auto" else "config"}
    candidates = {"reconstruction": rec}
    if teacher is not None:
        if np.isfinite(rec[normal]).all() and np.isfinite(gap[normal]).all():
            rs, gs = standardizer(rec[normal]), standardizer(gap[normal])
            weights = SCORE_WEIGHTS if config.score == "auto" else (config.score_weight,)
            spec.update(reconstruction_stats=rs, discrepancy_stats=gs)
            candidates.update(discrepancy=gap, **{f"combined@{w:g}": combine(rec, gap, w, rs, gs) for w in weights})
        else:
            spec["unavailable"] = "reconstruction error or discrepancy not finite on normal validation beats"
    finite = {name: bool(np.isfinite(v).all()) for name, v in candidates.items()}
    if (~normal).any():
        spec["validation_auc"] = {name: ranked_metrics(v, ~normal)["auc"] if finite[name] else None for name, v in candidates.items()}
    if config.score == "auto":
        ranked = [(auc, name) for name, auc in spec.get("validation_auc", {}).items() if auc is not None]
        chosen = max(ranked, key=lambda t: t[0])[1] if ranked else "reconstruction"  # ties: the first, reconstruction first
    else:
        chosen = f"combined@{config.score_weight:g}" if config.score == "combined" else config.score
    if chosen not in candidates:
        log.warning("%s: the %s score cannot be given (%s); the student scores by reconstruction error", path, config.score,
                    spec.get("unavailable", "no teacher encoder"))
        chosen = "reconstruction"
    spec["kind"] = chosen.split("@")[0]
    if "discrepancy_stats" in spec:  # the weight of a combination (evaluation may ask for it even when not chosen)
        spec["weight"] = float(chosen.split("@")[1]) if spec["kind"] == "combined" else config.score_weight
    policy = card_of(meta).threshold_policy or ThresholdPolicy.for_selection(config.selection)
    threshold = policy.choose(candidates[chosen], labels) if finite[chosen] else None
    meta.update(score=spec, threshold=threshold, config={**(meta.get("config") or {}), "score": config.score, "score_weight": config.score_weight})
    save_generator(path, gen, teacher=teacher, **meta)
    write_json(path.parent / "score.json", {**spec, "threshold": threshold, "threshold_rule": policy.rule})
    auc = (spec.get("validation_auc") or {}).get(chosen)
    log.info("%s: score %s (%s)%s, threshold %s", path, chosen, spec["chosen_by"], f", validation AUC {auc:.4f}" if auc is not None else "",
             f"{threshold:.4g}" if threshold is not None else "none")
    return spec, threshold


def _with_scores(config: StudentConfig, results: list[dict[str, Any]], teacher_g: torch.nn.Module, data: Any, rt: Any, out: Path) -> None:
    """choose_score for every member with a generator; metrics.json then shows each one's score and threshold."""
    from sibeatgan.files import write_json

    for r in results:
        if r.get("generator"):
            r["score"], r["threshold"] = choose_score(config, Path(r["generator"]), teacher_g, data, rt)
    metrics_path = Path(out) / "metrics.json"
    if metrics_path.is_file():
        summary = json.loads(metrics_path.read_text())
        for row, r in zip(summary.get("members", [summary]), results):
            if "score" in r:
                row.update(score=r["score"], threshold=r["threshold"])
        write_json(metrics_path, summary)


def _settings(config: StudentConfig, resume: bool, progress: bool, member_configs: list[dict[str, Any]] | None = None, teacher: str = ""):
    from sibeatgan.config import to_dict
    from sibeatgan.card import ThresholdPolicy
    from sibeatgan.files import sha256_file
    from sibeatgan.train.loop import FitSettings

    # the teacher's file hash, not only its path: a teacher retrained in place is another teacher, and no resume
    identity = {"teacher": teacher, "teacher_sha256": sha256_file(teacher) if teacher else None}
    return FitSettings(epochs=config.epochs, selection=config.selection, eval_batch_size=config.eval_batch_size, kind="student",
                       config={**to_dict(config), **identity}, resumable_changes=RESUMABLE_CHANGES, resume=resume,
                       progress=progress, threshold_rule=ThresholdPolicy.for_selection(config.selection).rule,
                       member_configs=member_configs)


def _common(config: StudentConfig) -> dict[str, Any]:
    return dict(ngf=config.ngf, ndf=config.ndf, kd=config.kd_target, kd_direction=config.kd_direction, betas=(config.beta1, config.beta2),
                batch_size=config.batch_size, augment_config=config.augment)


def run_train_student(config: StudentConfig, dataset: Path, teacher: Path, out: Path, resume: bool = True, progress: bool = False,
                      split: Path | None = None, callbacks: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
    """Distil one student from `teacher` (a generator file or training folder); outputs as run_train_teacher's."""
    from sibeatgan.train.loop import fit
    from sibeatgan.train.student import StudentTrainer

    data, teacher_g, rt, tpath = _prepare(config, Path(dataset), Path(teacher), split)
    trainer = StudentTrainer(teacher_g, rt, init=config.init, lambda_fm=config.lambda_fm, alpha=config.alpha, beta=config.beta, T=config.T,
                             tau=config.tau, lr=config.lr, seed=config.seed, **_common(config))
    log.info("student: %d training beats, %d validation, %s fold %d, teacher %s, init %s, ngf %d, %s", data.train_x.shape[0],
             data.val_x.shape[0], config.split, config.fold, tpath, config.init, config.ngf, rt.describe())
    result = fit(trainer, data, Path(out), _settings(config, resume, progress, teacher=tpath), callbacks, runtime=rt.describe())
    _with_scores(config, [result], teacher_g, data, rt, Path(out))
    return result


def train_student_group(configs: list[StudentConfig], dataset: Path, teacher: Path, out: Path, callbacks: list[Any] | tuple[Any, ...] = (),
                        split: Path | None = None, resume: bool = True, progress: bool = False, scores: bool = True) -> list[dict[str, Any]]:
    """K students at once (BatchedStudentTrainer), each with its own MEMBER_FIELDS; one result per member.
    `scores`: give each member its anomaly score (choose_score); the search's trials skip it (their objective is
    the loop's validation criterion, and the best config is trained again by train-student)."""
    from sibeatgan.config import replace, to_dict
    from sibeatgan.errors import ConfigError
    from sibeatgan.train.loop import fit
    from sibeatgan.train.student import BatchedStudentTrainer

    base = configs[0]
    shared = {k: v for k, v in to_dict(base).items() if k not in MEMBER_FIELDS}
    for c in configs[1:]:
        differ = sorted(k for k, v in to_dict(c).items() if k not in MEMBER_FIELDS and shared[k] != v)
        if differ:
            raise ConfigError(f"members of one group must share {', '.join(differ)}; only {', '.join(MEMBER_FIELDS)} may differ")
    data, teacher_g, rt, tpath = _prepare(base, Path(dataset), Path(teacher), split)
    per = {name: [getattr(c, name) for c in configs] for name in MEMBER_FIELDS}
    trainer = BatchedStudentTrainer(teacher_g, rt, len(configs), **per, **_common(base))
    member_configs = [{name: per[name][k] for name in MEMBER_FIELDS} for k in range(len(configs))]
    settings = _settings(replace(base, **{n: per[n][0] for n in MEMBER_FIELDS}), resume, progress, member_configs, tpath)
    fitted = fit(trainer, data, Path(out), settings, callbacks, runtime=rt.describe())
    results = fitted["members"] if "members" in fitted else [fitted]
    if scores:
        _with_scores(base, results, teacher_g, data, rt, Path(out))
    return results
