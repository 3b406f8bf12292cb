"""The whole local chain on synthetic data: what `sibeatgan demo` and the README's first command run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sibeatgan.config import (
    EvaluateConfig,
    IngestConfig,
    PreprocessConfig,
    SynthConfig,
    TeacherConfig,
    ValidateConfig,
)
from sibeatgan.files import write_json

log = logging.getLogger(__name__)


def run_demo(out: Path, epochs: int = 10, progress: bool = False, synth: SynthConfig | None = None) -> dict[str, Any]:
    """synth -> ingest -> validate records -> preprocess -> validate beats -> train teacher -> evaluate."""
    from sibeatgan.data.preprocess import run_preprocess
    from sibeatgan.data.sources import run_ingest
    from sibeatgan.data.synth import run_synth
    from sibeatgan.data.validation import run_validate
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.train.teacher import run_train_teacher

    out = Path(out)
    made = run_synth(synth or SynthConfig(), out / "source")
    records = tuple(made["records"])
    log.info("synth: %d records in %s", len(records), out / "source")

    run_ingest(IngestConfig(source=str(out / "source")), out / "raw", progress=progress)
    run_validate(ValidateConfig(), out / "raw", None, out / "validation-records", records=records)
    manifest = run_preprocess(PreprocessConfig(records=records), out / "raw", out / "dataset", progress=progress)
    run_validate(ValidateConfig(), None, out / "dataset", out / "validation-beats")

    teacher = run_train_teacher(TeacherConfig(epochs=epochs), out / "dataset", out / "teacher", progress=progress)
    evaluation = run_evaluate(EvaluateConfig(folds=(0,)), out / "dataset", out / "teacher", out / "evaluation")
    fold0 = evaluation["folds"]["0"]
    summary = {
        "records": len(records),
        "counts": manifest["counts"],
        "teacher_best_epoch": teacher.get("best_epoch"),
        "selection": teacher.get("selection"),
        "auc": round(float(fold0["auc"]), 4),
        "ap": round(float(fold0["ap"]), 4),
    }
    write_json(out / "summary.json", summary)
    return summary
