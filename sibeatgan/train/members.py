"""K independent trainers run one after another each step of the loop: the plain way to train several members.

`fit` treats it like any trainer of `members` = K; it is the reference a batched trainer (one step for K
members) is measured and tested against, and it lets a search train a group of trials on any trainer.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


class SequentialMembers:
    """Members k = 0..K-1, each its own trainer with its own hyperparameters, seed and data order."""

    def __init__(self, trainers: list[Any]):
        if not trainers:
            raise ValueError("SequentialMembers needs at least one trainer")
        self.trainers = list(trainers)
        self.members = len(trainers)
        self.loss_names = tuple(trainers[0].loss_names)
        self.active = [True] * self.members

    def set_active(self, active: list[bool]) -> None:
        """Stopped members (pruned or diverged trials) are no longer trained or scored."""
        self.active = [bool(a) for a in active]

    def set_train_data(self, beats: torch.Tensor) -> None:
        for t in self.trainers:
            t.set_train_data(beats)

    def train_epoch(self, on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Each active member's epoch (its own `run_epoch`), one after another; lists of K values."""
        rows = [t.train_epoch(on_step) if a else None for t, a in zip(self.trainers, self.active)]
        keys = next(r for r in rows if r is not None).keys()
        out: dict[str, Any] = {k: [r[k] if r is not None else None for r in rows] for k in keys}
        seconds = sum(r["train_seconds"] for r in rows if r is not None)
        out["beats_per_s"] = [sum(r["beats"] for r in rows if r is not None) / seconds if seconds else None] * self.members
        return out

    def score(self, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        n = x.shape[0]
        return np.stack([t.score(x, batch_size)[0] if a else np.full(n, np.nan, np.float32) for t, a in zip(self.trainers, self.active)])

    def generator(self, k: int = 0) -> torch.nn.Module:
        return self.trainers[k].generator(0)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [t.state_dict() for t in self.trainers], "active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for t, s in zip(self.trainers, state["members"]):
            t.load_state_dict(s)
        self.active = list(state["active"])
