"""The model card saved with every model, and the one threshold policy.

A generator file carries its card (`card` in the file, and `model_card.json` beside it): what the model is (kind:
teacher, student or control), how it was trained (hyperparameters, protocol, fold, seed, selection, epoch), on what
(dataset and split hashes), how it scores (the score spec), its operating threshold and the rule that chose it, and
the teacher it was distilled from. `ModelCard.check` is the one "does this model fit this dataset, split and fold"
check; `ThresholdPolicy` the one place a threshold rule is decided and applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from sibeatgan.errors import DatasetError

CARD_FILE = "model_card.json"
DEFAULT_FAR = 0.01  # the label-free rule: 1% false alarms on normal validation beats


class ThresholdPolicy(BaseModel):
    """How an operating threshold is chosen on validation beats, never test beats: `far` (the score's quantile that
    leaves `far` false alarms on normal validation beats; label-free) or `f1` (best F1 over validation thresholds,
    which needs labelled validation anomalies: the paper protocol)."""

    model_config = ConfigDict(frozen=True)

    rule: Literal["far", "f1"] = "far"
    far: float | None = DEFAULT_FAR

    @classmethod
    def for_selection(cls, selection: str | None, far: float = DEFAULT_FAR) -> ThresholdPolicy:
        """The rule of a model's protocol: best validation F1 when it was selected on validation labels (paper), else
        label-free false alarms (clean and every other label-free selection)."""
        return cls(rule="f1", far=None) if selection == "paper" else cls(rule="far", far=far)

    @classmethod
    def resolve(cls, rule: str, selection: str | None, far: float = DEFAULT_FAR) -> ThresholdPolicy:
        """An evaluation's `threshold_rule` setting: `auto` is the model's own protocol's rule."""
        if rule == "auto":
            return cls.for_selection(selection, far)
        return cls(rule=rule, far=far if rule == "far" else None)

    def applicable(self, labels: np.ndarray) -> bool:
        """F1 needs anomalies among the validation beats; the false-alarm rule needs normal ones."""
        labels = np.asarray(labels)
        return bool((labels != 0).any()) if self.rule == "f1" else bool((labels == 0).any())

    def choose(self, scores: np.ndarray, labels: np.ndarray) -> float | None:
        """The threshold on these validation scores, or None when the rule cannot apply to them."""
        from sibeatgan.metrics import choose_threshold

        if not self.applicable(labels):
            return None
        return float(choose_threshold(np.asarray(scores), np.asarray(labels), self.rule, self.far or DEFAULT_FAR))


class TeacherRef(BaseModel):
    path: str
    sha256: str | None = None


class ModelCard(BaseModel):
    """What a model is and what it fits; built from a generator file's metadata (`from_meta`)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["teacher", "student", "control"]
    protocol: str
    fold: int
    seed: int | None = None
    dataset_hash: str
    split_hash: str
    hyperparameters: dict[str, Any] = {}
    selection: str | None = None
    criterion: str | None = None
    validation_metric: float | None = None  # the criterion's value at the selected epoch (validation beats)
    epoch: int | None = None
    score: dict[str, Any] = {"kind": "reconstruction"}
    threshold: float | None = None
    threshold_policy: ThresholdPolicy | None = None
    teacher: TeacherRef | None = None
    has_model: bool = True  # False: a stand-in card of a candidate that selected no epoch (nothing finite on validation)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelCard:
        """The card of a generator file's metadata (as `modelio.save_generator` receives it)."""
        config = dict(meta.get("config") or {})
        if meta.get("member_config"):
            config.update(meta["member_config"])
        kind = str(meta.get("kind") or "teacher")
        if kind == "student" and not config.get("alpha") and not config.get("beta"):
            kind = "control"  # a student trained on without distillation and contrastive terms: the no-KD control
        rule = meta.get("threshold_rule")
        teacher = config.get("teacher")
        return cls(
            kind=kind, protocol=str(meta.get("protocol") or config.get("split") or "beatgan"),
            fold=int(meta["fold"] if meta.get("fold") is not None else config.get("fold", 0)), seed=config.get("seed"),
            dataset_hash=str(meta.get("dataset_hash") or ""), split_hash=str(meta.get("split_hash") or ""),
            hyperparameters={k: v for k, v in config.items() if k not in ("teacher", "teacher_sha256")},
            selection=meta.get("selection"), criterion=meta.get("criterion"), epoch=meta.get("epoch"),
            validation_metric=meta.get("metric"),
            score=dict(meta.get("score") or {"kind": "reconstruction"}), threshold=meta.get("threshold"),
            threshold_policy=ThresholdPolicy(rule=rule, far=meta.get("threshold_far")) if rule in ("far", "f1") else None,
            teacher=TeacherRef(path=str(teacher), sha256=config.get("teacher_sha256")) if teacher else None,
        )

    def check(self, dataset_hash: str, split_hash: str | None = None, fold: int | None = None, protocol: str | None = None,
              what: str = "the model") -> None:
        """Refuse a dataset, split, protocol or fold this model was not trained for (DatasetError naming both sides).
        Another fold's model has trained on this fold's test beats; another split's may have too."""
        if self.dataset_hash != dataset_hash:
            raise DatasetError(f"{what} was trained on dataset {self.dataset_hash[:12] or 'unknown'}, not on {dataset_hash[:12]}")
        if split_hash is not None and self.split_hash != split_hash:
            raise DatasetError(f"{what} was trained on split {self.split_hash[:12] or 'unknown'}, not on {split_hash[:12]}; "
                               "use the split it was trained on (--split)")
        if protocol is not None and self.protocol != protocol:
            raise DatasetError(f"{what} was trained on the {self.protocol!r} split, not the {protocol!r} one")
        if fold is not None and self.protocol == "beatgan" and self.fold != int(fold):
            raise DatasetError(f"{what} was trained on fold {self.fold}, refused for fold {fold}: a model of another fold has "
                               "trained on this fold's test beats")

    def write(self, folder: str | Path) -> Path:
        from sibeatgan.files import write_text

        return write_text(Path(folder) / CARD_FILE, self.model_dump_json(indent=2) + "\n")

    def summary(self) -> str:
        """One line a reviewer reads at a glance."""
        thr = "none" if self.threshold is None else f"{self.threshold:.4g} ({self.threshold_policy.rule if self.threshold_policy else '?'})"
        return (f"{self.kind} of {self.protocol} fold {self.fold} seed {self.seed}, selected by {self.selection} at epoch {self.epoch}, "
                f"score {self.score.get('kind')}, threshold {thr}, dataset {self.dataset_hash[:12]}, split {self.split_hash[:12]}")


def card_of(meta: dict[str, Any]) -> ModelCard:
    """The card a generator file carries, else the one its metadata implies (files written before cards)."""
    if isinstance(meta.get("card"), dict):
        return ModelCard.model_validate(meta["card"])
    return ModelCard.from_meta(meta)


def read_card(folder_or_file: str | Path) -> ModelCard:
    """The card of a model folder (model_card.json) or generator file."""
    path = Path(folder_or_file)
    if path.is_dir() and (path / CARD_FILE).is_file():
        return ModelCard.model_validate(json.loads((path / CARD_FILE).read_text()))
    from sibeatgan.modelio import load_generator

    _, meta = load_generator(path / "generator.pt" if path.is_dir() else path)
    return card_of(meta)
