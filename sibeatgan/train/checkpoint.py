"""Self-describing training checkpoints, written atomically (temp file, then os.replace).

A checkpoint holds everything a killed run needs to continue bit for bit: the trainer's model,
optimizer and RNG states, the config, the epoch, the selection state, the history, and the content
hashes of the dataset and split it was trained on. Generator files live in sibeatgan.modelio
(re-exported here for callers of the older path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sibeatgan.modelio import VERSION, atomic_save, cpu_state, load_file, load_generator, save_generator

CHECKPOINT_FORMAT = "sibeatgan-checkpoint"

__all__ = ["CHECKPOINT_FORMAT", "VERSION", "atomic_save", "cpu_state", "load_checkpoint", "load_generator", "save_checkpoint", "save_generator"]


def save_checkpoint(path: str | Path, **fields: Any) -> Path:
    """Write a training checkpoint; `fields` are stored as given next to format and version."""
    return atomic_save({"format": CHECKPOINT_FORMAT, "version": VERSION, **fields}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (CheckpointError names the file and problem)."""
    return load_file(path, CHECKPOINT_FORMAT, map_location)
