"""KFP v2 components, one per pipeline step; each calls one `sibeatgan` function on the project's image."""

from components.data import ingest, preprocess, synth, validate_beats, validate_records
from components.evaluate import compare, evaluate
from components.image import IMAGE
from components.register import register
from components.student import best_config, create_study, pick_teacher, train_student, tune_worker
from components.train import plan_runs, train_teacher

__all__ = ["IMAGE", "best_config", "compare", "create_study", "evaluate", "ingest", "pick_teacher", "plan_runs", "preprocess", "register",
           "synth",
           "train_student", "train_teacher", "tune_worker", "validate_beats", "validate_records"]
