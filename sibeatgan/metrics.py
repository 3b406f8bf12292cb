"""Scores and metrics, below training and evaluation (both import from here).

Interim module: score and ranked_metrics still live in sibeatgan.evaluate until the metrics move lands.
"""

from __future__ import annotations

import numpy as np

from sibeatgan.evaluate import ranked_metrics, score

__all__ = ["choose_threshold", "ranked_metrics", "score"]


def choose_threshold(val_scores: np.ndarray, val_labels: np.ndarray, rule: str = "far", far: float = 0.01) -> float:
    """A threshold chosen without test labels: rule 'far', the (1 - far) quantile of normal validation scores
    (label-free); rule 'f1', the best-F1 threshold on the validation beats (paper protocol)."""
    scores, labels = np.asarray(val_scores, dtype=np.float64), np.asarray(val_labels)
    if rule == "far":
        return float(np.quantile(scores[labels == 0], 1.0 - far))
    if rule == "f1":
        return float(ranked_metrics(scores, labels != 0)["threshold"])
    raise ValueError(f"threshold rule {rule!r} is not one of far, f1")
