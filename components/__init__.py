"""KFP v2 components, one per pipeline step; each calls one `sibeatgan` function on the project's image."""

from components.data import ingest, preprocess, synth, validate_beats, validate_records
from components.evaluate import compare, evaluate
from components.image import IMAGE
from components.register import register, start_run
from components.student import best_config, create_study, pick_teacher, pick_winner, train_candidates, tune_worker
from components.train import plan_runs, train_teacher

__all__ = ["IMAGE", "best_config", "compare", "create_study", "evaluate", "ingest", "pick_teacher", "pick_winner", "plan_runs", "preprocess",
           "register", "start_run", "synth", "train_candidates", "train_teacher", "tune_worker", "validate_beats", "validate_records"]
