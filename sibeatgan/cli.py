"""The `sibeatgan` command: every pipeline step as a subcommand, plus `demo` for the whole local run."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from sibeatgan import config as cfg
from sibeatgan.errors import SibeatganError, ValidationFailed

app = typer.Typer(
    help=(
        "SI-BeatGAN: ECG anomaly detection on MIT-BIH.\n\n"
        "Steps, in pipeline order: synth (demo data) -> ingest -> validate -> preprocess -> "
        "train-teacher -> evaluate. `sibeatgan demo` runs them all on synthetic data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("sibeatgan")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config: top-level fields, or a section per step.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field: key=value (repeatable).", metavar="KEY=VALUE")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def _config(cls: type, path: Optional[Path], sets: Optional[list[str]], **explicit: Any) -> Any:
    overrides: dict[str, Any] = dict(cfg.parse_overrides(sets or []))
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    return cfg.load_config(cls, path, overrides)


def _done(step: str, started: float, result: dict[str, Any], keys: tuple[str, ...]) -> None:
    shown = {k: result[k] for k in keys if k in result}
    log.info("%s done in %.1f s%s", step, time.perf_counter() - started, f": {json.dumps(shown)}" if shown else "")


@app.callback()
def _main(
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the synthetic WFDB database into."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    seed: Optional[int] = typer.Option(None, help="Random seed."),
) -> None:
    """Write a small synthetic WFDB database (MIT-BIH-like, with injected anomalous beats)."""
    from sibeatgan.data.synth import run_synth

    t = time.perf_counter()
    result = run_synth(_config(cfg.SynthConfig, config, set_, seed=seed), out)
    _done("synth", t, result, ("records", "counts"))


@app.command()
def ingest(
    source: str = typer.Option(..., "--source", help="'physionet', a local folder of WFDB files, or s3://bucket/prefix."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to copy the records into."),
    records: Optional[str] = typer.Option(None, help="Comma-separated record names (default: all)."),
    s3_endpoint_url: Optional[str] = typer.Option(None, help="S3 endpoint (MinIO, moto); default: AWS."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Copy a WFDB database from PhysioNet, a folder or S3, verifying SHA256SUMS when present."""
    from sibeatgan.data.sources import run_ingest

    t = time.perf_counter()
    conf = _config(cfg.IngestConfig, config, set_, source=source, records=records, s3_endpoint_url=s3_endpoint_url)
    result = run_ingest(conf, out, progress=progress)
    _done("ingest", t, result, ("n_records", "n_files", "bytes", "checksums_verified"))


@app.command()
def validate(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for validation.json and validation.html."),
    raw: Optional[Path] = typer.Option(None, help="WFDB folder to validate at record level."),
    dataset: Optional[Path] = typer.Option(None, help="Beat dataset (from preprocess) to validate at beat level."),
    records: Optional[str] = typer.Option(
        None, help="Comma-separated records to check in --raw, or 'all' (default: the 44 the BeatGAN protocol uses)."
    ),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """The pipeline's gate: great-expectations suites on records and beats; exit 1 when any fails."""
    from sibeatgan.data.validation import run_validate

    if raw is None and dataset is None:
        raise typer.BadParameter("give --raw, --dataset or both")
    t = time.perf_counter()
    conf = _config(cfg.ValidateConfig, config, set_, records=records)
    result = run_validate(conf, raw, dataset, out)
    _done("validate", t, result, ("success",))


@app.command()
def preprocess(
    source: Path = typer.Option(..., "--source", help="Folder of WFDB records (from ingest or synth)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for beats.npz and manifest.json."),
    records: Optional[str] = typer.Option(None, help="Comma-separated records (default: the 44 without paced beats)."),
    leads: Optional[str] = typer.Option(None, help="Lead names, e.g. MLII or MLII,V1, or 'all'."),
    grouping: Optional[str] = typer.Option(None, help="Class grouping: beatgan (default) or aami."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Cut beats by the BeatGAN protocol, assign folds, and write the versioned beat dataset."""
    from sibeatgan.data.preprocess import run_preprocess

    t = time.perf_counter()
    conf = _config(cfg.PreprocessConfig, config, set_, records=records, leads=leads, grouping=grouping)
    result = run_preprocess(conf, source, out, progress=progress)
    _done("preprocess", t, result, ("n_beats", "counts"))


@app.command("train-teacher")
def train_teacher(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder (from preprocess)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for checkpoint.pt, generator.pt and metrics.json."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 100)."),
    fold: Optional[int] = typer.Option(None, help="BeatGAN fold 0..4."),
    selection: Optional[str] = typer.Option(None, help="clean (no anomaly labels, default) or paper (val AUC)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/checkpoint.pt when present."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Train the BeatGAN teacher (checkpoint every epoch; a killed run resumes)."""
    from sibeatgan.train.teacher import run_train_teacher

    t = time.perf_counter()
    conf = _config(cfg.TeacherConfig, config, set_, epochs=epochs, fold=fold, selection=selection, device=device)
    result = run_train_teacher(conf, dataset, out, resume=resume, progress=progress)
    _done("train-teacher", t, result, ("best_epoch", "selection", "criterion", "best_metric"))


@app.command()
def evaluate(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder."),
    model: list[Path] = typer.Option(
        ..., "--model", "-m", help="Training output folder (or generator.pt); with --folds, one per fold in that order."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for evaluation.json and plots."),
    folds: Optional[str] = typer.Option(None, help="Comma-separated folds, e.g. 0,1,2,3,4 (default: the fold each model was trained on)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Score test beats by reconstruction error; AUC, AP, F1, per-class AUC, bootstrap CIs and plots."""
    from sibeatgan.evaluate import format_table, run_evaluate

    conf = _config(cfg.EvaluateConfig, config, set_, folds=folds)
    if not conf.folds:
        if len(model) != 1:
            raise typer.BadParameter(f"{len(model)} --model without --folds: say which fold each one is for")
        models: Any = model[0]  # evaluated on the fold it was trained on
    elif len(model) != len(conf.folds):
        raise typer.BadParameter(f"{len(model)} --model for folds {','.join(map(str, conf.folds))}: give one --model per fold")
    else:
        models = dict(zip(conf.folds, model))
    t = time.perf_counter()
    result = run_evaluate(conf, dataset, models, out)
    typer.echo(format_table(result))
    _done("evaluate", t, result, ("overall",))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for every step's output."),
    epochs: int = typer.Option(10, help="Teacher epochs (small: this is a smoke run of the whole chain)."),
    progress: bool = ProgressOpt,
) -> None:
    """Run the whole local chain on synthetic data: synth, ingest, validate, preprocess, train-teacher, evaluate."""
    from sibeatgan.demo import run_demo

    t = time.perf_counter()
    result = run_demo(out, epochs=epochs, progress=progress)
    _done("demo", t, result, ("auc",))
    typer.echo(f"demo outputs in {out}: {json.dumps(result)}")


def main() -> None:
    """Entry point: clear one-line errors for bad input instead of tracebacks."""
    try:
        app()
    except ValidationFailed as err:
        typer.echo(f"validation failed:\n{err.summary}", err=True)
        sys.exit(1)
    except SibeatganError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()


@app.command()
def compare(
    a: list[Path] = typer.Option(..., "--a", help="Evaluation folder of model a (from `sibeatgan evaluate`); repeat for seeds."),
    b: list[Path] = typer.Option(..., "--b", help="Evaluation folder of model b, one per --a, paired in order."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for compare.json and table.txt."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Beat dataset both were evaluated on (checked when given)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Paired comparison b - a of AUC and AP on identical test beats, with record-level bootstrap intervals and p-values."""
    from sibeatgan.compare import format_compare_table, run_compare

    t = time.perf_counter()
    result = run_compare(_config(cfg.EvaluateConfig, config, set_), dataset, a, b, out)
    typer.echo(format_compare_table(result))
    _done("compare", t, {}, ())
