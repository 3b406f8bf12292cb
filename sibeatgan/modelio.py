"""Generator files: the selected generator's weights and what it takes to rebuild and trust it.

A floor below training and evaluation: both read and write generator files through here, and it
imports neither. Writes are atomic (temp file, then rename), so a crash never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sibeatgan.errors import CheckpointError
from sibeatgan.files import atomic_open
from sibeatgan.metrics import AnomalyScore
from sibeatgan.models import Generator

GENERATOR_FORMAT = "sibeatgan-generator"
VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file beside `path`, then rename over it."""
    with atomic_open(path) as fh:
        torch.save(obj, fh)
    return Path(path)


def load_file(path: str | Path, fmt: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load a dict written with `format` = fmt and this VERSION; CheckpointError names the file and problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle/zip errors on a truncated or foreign file
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {fmt!r}")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {obj.get('version')!r}, this code reads version {VERSION}")
    return obj


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_generator(path: str | Path, generator: Generator, teacher: Generator | None = None, **meta: Any) -> Path:
    """Write the generator's weights and constructor arguments, plus `meta` (kind, config, dataset and split
    hashes, epoch, selection metric, threshold, score...) and the model card made of it (also written beside the
    file as model_card.json). A student may carry its `teacher`'s encoder, which its
    discrepancy score needs (the encoder only: about half the teacher's weights)."""
    from sibeatgan.card import ModelCard

    meta.pop("card", None)
    card = ModelCard.from_meta(meta)
    if teacher is not None:
        meta["teacher_encoder"] = {"hparams": teacher.hparams(), "state_dict": cpu_state(teacher.encoder)}
    saved = atomic_save({"format": GENERATOR_FORMAT, "version": VERSION, "hparams": generator.hparams(), "state_dict": cpu_state(generator),
                         **meta, "card": card.model_dump(mode="json")}, path)
    card.write(Path(path).parent)
    return saved


def _rebuild(obj: dict[str, Any], path: str | Path, device: str | torch.device) -> tuple[Generator, dict[str, Any]]:
    try:
        gen = Generator(**obj["hparams"])
        gen.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: generator cannot be rebuilt ({type(err).__name__}: {err})") from None
    meta = {k: v for k, v in obj.items() if k not in ("format", "version", "state_dict", "teacher_encoder")}
    meta["has_teacher_encoder"] = "teacher_encoder" in obj
    return gen.to(device).eval(), meta


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild a Generator (in eval mode, on `device`) from a generator file; returns it with its metadata."""
    return _rebuild(load_file(path, GENERATOR_FORMAT), path, device)


def load_score(path: str | Path, device: str | torch.device = "cpu", kind: str | None = None) -> tuple[AnomalyScore, dict[str, Any]]:
    """The model of a generator file as its anomaly score (sibeatgan.metrics.AnomalyScore): the generator, and for a
    student saved with its teacher's encoder, that encoder; `kind` overrides the score the file names."""
    obj = load_file(path, GENERATOR_FORMAT)
    gen, meta = _rebuild(obj, path, device)
    teacher_encoder = None
    if "teacher_encoder" in obj:
        try:
            teacher = Generator(**obj["teacher_encoder"]["hparams"])
            teacher.encoder.load_state_dict(obj["teacher_encoder"]["state_dict"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: the teacher's encoder cannot be rebuilt ({type(err).__name__}: {err})") from None
        teacher_encoder = teacher.encoder.to(device).eval()
    try:
        return AnomalyScore(gen, meta.get("score"), teacher_encoder, kind, source=str(path)), meta
    except ValueError as err:
        raise CheckpointError(str(err)) from None
