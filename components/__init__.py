"""KFP v2 components, one per pipeline step; each calls one `sibeatgan` function on the project's image."""

from components.data import ingest, preprocess, synth, validate_beats, validate_records
from components.evaluate import evaluate
from components.image import IMAGE
from components.train import plan_runs, train_teacher

__all__ = ["IMAGE", "evaluate", "ingest", "plan_runs", "preprocess", "synth", "train_teacher", "validate_beats", "validate_records"]
