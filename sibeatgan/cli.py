"""The `sibeatgan` command: every pipeline step as a subcommand, plus `demo` for the whole local run."""

from __future__ import annotations

import json
import logging
import os
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
        "Steps, in pipeline order: synth (demo data) -> ingest -> validate -> preprocess (writes the default split) -> "
        "split (optional, for another split) -> train-teacher -> evaluate -> compare. `sibeatgan demo` runs them all on synthetic data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("sibeatgan")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config: top-level fields, or a section per step.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field: key=value (repeatable).", metavar="KEY=VALUE")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
TrackOpt = typer.Option(True, "--track/--no-track", help="Log to MLflow: the tracking section's URI, $MLFLOW_TRACKING_URI, or runs/mlflow.db.")


def _tracking(track: bool, config_path: Optional[Path]) -> Any:
    """The tracking section (of a --config file of sections), or None with --no-track."""
    from sibeatgan.steps.tracked import tracking_config

    return tracking_config(config_path) if track else None

_debug = False  # --debug: a failure's traceback too

# Output folders this command is about to create (see `_track_out`); main() removes them, if empty, after a failure.
_fresh_outs: list[Path] = []


def _track_out(value: Optional[Path]) -> Optional[Path]:
    """Remember the topmost folder of --out that does not exist yet, so a failed command leaves nothing behind."""
    if value is not None:
        path = Path(value).expanduser().absolute()
        if not path.exists():
            while not path.parent.exists():
                path = path.parent
            _fresh_outs.append(path)
    return value


def OutOpt(default: Any, help: str) -> Any:  # noqa: N802 (an Option factory, named like the others)
    return typer.Option(default, "--out", "-o", help=help, callback=_track_out)


def _remove_if_empty(path: Path) -> None:
    """Remove `path` when it holds no files (only, possibly, empty folders)."""
    if not path.is_dir() or path.is_symlink() or any(not p.is_dir() or p.is_symlink() for p in path.rglob("*")):
        return
    for root, _dirs, _files in os.walk(path, topdown=False):
        os.rmdir(root)


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
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of a failure, not only its one-line cause."),
) -> None:
    """Every command uses one MLflow store: $MLFLOW_TRACKING_URI when set, else runs/mlflow.db under the working
    directory (where `python -m pipelines.local` registers its winner), so `promote` and `score` find what a run wrote."""
    global _debug
    _debug = debug
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        from sibeatgan.tracking import default_store

        os.environ["MLFLOW_TRACKING_URI"] = default_store()


@app.command()
def synth(
    out: Path = OutOpt(..., help="Folder to write the synthetic WFDB database into."),
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
    out: Path = OutOpt(..., help="Folder to copy the records into."),
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
    out: Path = OutOpt(..., help="Folder for validation.json and validation.html."),
    raw: Optional[Path] = typer.Option(None, help="WFDB folder to validate at record level."),
    dataset: Optional[Path] = typer.Option(None, help="Beat dataset (from preprocess) to validate at beat level."),
    records: Optional[str] = typer.Option(
        None, help="Comma-separated records to check in --raw, or 'all' (default: the 44 the BeatGAN protocol uses)."
    ),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    track: bool = TrackOpt,
) -> None:
    """The pipeline's gate: great-expectations suites on records and beats; exit 1 when any fails."""
    from sibeatgan.data.validation import run_validate
    from sibeatgan.steps.tracked import log_step

    if raw is None and dataset is None:
        raise typer.BadParameter("give --raw, --dataset or both")
    t = time.perf_counter()
    conf = _config(cfg.ValidateConfig, config, set_, records=records)
    result = run_validate(conf, raw, dataset, out)
    log_step(_tracking(track, config), "validate", conf, out, {"success": float(bool(result.get("success")))},
             (out / "validation.html", out / "validation.json"))
    _done("validate", t, result, ("success",))


@app.command()
def preprocess(
    source: Path = typer.Option(..., "--source", help="Folder of WFDB records (from ingest or synth)."),
    out: Path = OutOpt(..., help="Folder for beats.npz and manifest.json."),
    records: Optional[str] = typer.Option(None, help="Comma-separated records (default: the 44 without paced beats)."),
    leads: Optional[str] = typer.Option(None, help="Lead names, e.g. MLII or MLII,V1, or 'all'."),
    grouping: Optional[str] = typer.Option(None, help="Class grouping: beatgan (default) or aami."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
    track: bool = TrackOpt,
) -> None:
    """Cut beats by the BeatGAN protocol, assign folds, and write the versioned beat dataset."""
    from sibeatgan.data.preprocess import run_preprocess
    from sibeatgan.steps.tracked import log_step

    t = time.perf_counter()
    conf = _config(cfg.PreprocessConfig, config, set_, records=records, leads=leads, grouping=grouping)
    result = run_preprocess(conf, source, out, progress=progress)
    log_step(_tracking(track, config), "preprocess", conf, out,
             {f"count_{c}": n for c, n in result["counts"].items()} | {"n_beats": result["n_beats"]},
             (out / "manifest.json", out / "split" / "split.json"), result["content_hash"], result.get("default_split", {}).get("hash"))
    _done("preprocess", t, result, ("n_beats", "counts"))


@app.command()
def split(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder (from preprocess)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for split.json and split.npz (default: DATASET/split)."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the validation/test draw (default 0)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Decide every fold's train/validation/test beats once, as a versioned artifact that training and evaluation read."""
    from sibeatgan.data.splits import run_split

    t = time.perf_counter()
    result = run_split(_config(cfg.SplitConfig, config, set_, split_seed=split_seed), dataset, out)
    _done("split", t, result, ("split", "hash", "splits"))


SplitPathOpt = typer.Option(None, "--split", help="Split artifact folder (default: DATASET/split, written by preprocess).")


@app.command("train-teacher")
def train_teacher(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder (from preprocess)."),
    out: Path = OutOpt(..., help="Folder for checkpoint.pt, generator.pt and metrics.json."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 100)."),
    fold: Optional[int] = typer.Option(None, help="BeatGAN fold 0..4."),
    selection: Optional[str] = typer.Option(None, help="clean (no anomaly labels, default) or paper (val AUC)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/checkpoint.pt when present."),
    split_path: Optional[Path] = SplitPathOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
    track: bool = TrackOpt,
) -> None:
    """Train the BeatGAN teacher (checkpoint every epoch; a killed run resumes)."""
    from sibeatgan.steps.train import run_train_teacher

    t = time.perf_counter()
    conf = _config(cfg.TeacherConfig, config, set_, epochs=epochs, fold=fold, selection=selection, device=device)
    result = run_train_teacher(conf, dataset, out, _tracking(track, config), resume=resume, progress=progress, split=split_path)
    _done("train-teacher", t, result, ("best_epoch", "selection", "criterion", "best_metric"))


TeacherOpt = typer.Option(..., "--teacher", "-t", help="The teacher: its training folder or generator.pt (same dataset, split and fold).")


@app.command("train-student")
def train_student(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder (from preprocess)."),
    teacher: Path = TeacherOpt,
    out: Path = OutOpt(..., help="Folder for checkpoint.pt, generator.pt and metrics.json."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 20)."),
    fold: Optional[int] = typer.Option(None, help="BeatGAN fold 0..4 (the teacher's)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/checkpoint.pt when present."),
    split_path: Optional[Path] = SplitPathOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
    track: bool = TrackOpt,
) -> None:
    """Distil the self-improving student from a frozen teacher: L_G + alpha KD_T + beta NT-Xent_tau (`--config best.json` from tune)."""
    from sibeatgan.steps.train import run_train_student

    t = time.perf_counter()
    conf = _config(cfg.StudentConfig, config, set_, epochs=epochs, fold=fold, device=device)
    result = run_train_student(conf, dataset, teacher, out, _tracking(track, config), resume=resume, progress=progress, split=split_path)
    _done("train-student", t, result, ("best_epoch", "selection", "criterion", "best_metric", "score"))


@app.command()
def tune(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder (from preprocess)."),
    teacher: Path = TeacherOpt,
    out: Path = OutOpt(..., help="Folder for the study journal, trials, best.json, trials.csv and plots."),
    trials: Optional[int] = typer.Option(None, "--trials", help="The study's trial budget (default 24)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes on the one study (default 1)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Trials trained at once as members of one run (default 4)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: a *.journal file or a database URL (default: OUT/study.journal)."),
    split_path: Optional[Path] = SplitPathOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    track: bool = TrackOpt,
) -> None:
    """Search the student's lambda, T, tau (and alpha, beta, lr) with Optuna; live view: `optuna-dashboard OUT/study.journal`.

    --config takes a file with `tune:` and `student:` sections; --set takes tune.* and student.* keys."""
    from sibeatgan.steps.tune import run_tune

    sets = cfg.parse_overrides(set_ or [])
    unknown = sorted(k for k in sets if k.split(".", 1)[0] not in ("tune", "student"))
    if unknown:
        raise typer.BadParameter(f"--set {', '.join(unknown)}: prefix each key with tune. or student.")
    tune_sets = [f"{k.split('.', 1)[1]}={v}" for k, v in sets.items() if k.startswith("tune.")]
    student_sets = [f"{k.split('.', 1)[1]}={v}" for k, v in sets.items() if k.startswith("student.")]
    tune_conf = _config(cfg.TuneConfig, config, tune_sets, n_trials=trials, workers=workers, group_size=group_size, storage=storage)
    student_conf = _config(cfg.StudentConfig, config, student_sets)
    t = time.perf_counter()
    result = run_tune(tune_conf, student_conf, dataset, teacher, out, split=split_path, tracking=_tracking(track, config))
    _done("tune", t, result, ("trial", "value", "criterion", "params", "trials"))
    typer.echo(f"best trial {result['trial']}: {result['criterion']} {result['value']:.6g} {json.dumps(result['params'])}; "
               f"train it with: sibeatgan train-student --config {Path(out) / 'best.json'} ...")


@app.command()
def evaluate(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder."),
    model: list[Path] = typer.Option(
        ..., "--model", "-m", help="Training output folder (or generator.pt); with --folds, one per fold in that order."
    ),
    out: Path = OutOpt(..., help="Folder for evaluation.json and plots."),
    folds: Optional[str] = typer.Option(None, help="Comma-separated folds, e.g. 0,1,2,3,4 (default: the fold each model was trained on)."),
    split_path: Optional[Path] = SplitPathOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    track: bool = TrackOpt,
) -> None:
    """Score test beats with each model's anomaly score (reconstruction error unless a student chose another; --set score=... for
    a student's other scores); AUC, AP, F1, per-class AUC, bootstrap CIs and plots."""
    from sibeatgan.evaluate import format_table
    from sibeatgan.steps.evaluate import run_evaluate_step

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
    result = run_evaluate_step(conf, dataset, models, out, _tracking(track, config), split=split_path)
    typer.echo(format_table(result))
    _done("evaluate", t, result, ("overall",))


@app.command()
def demo(
    out: Path = OutOpt(Path("runs/demo"), help="Folder for every step's output."),
    epochs: Optional[int] = typer.Option(None, help="Teacher epochs (default 10: this is a smoke run of the whole chain)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Run the whole local chain on synthetic data: synth, ingest, validate, preprocess, train-teacher, evaluate.

    The synthetic data is the nested section `synth`: e.g. `--set synth.n_records=3 --set synth.seed=1`.
    """
    from sibeatgan.demo import run_demo

    conf = _config(cfg.DemoConfig, config, set_, epochs=epochs)
    t = time.perf_counter()
    result = run_demo(out, epochs=conf.epochs, progress=progress, synth=conf.synth)
    _done("demo", t, result, ("auc",))
    typer.echo(f"demo outputs in {out}: {json.dumps(result)}")


# --- MLflow: score, register, promote, track-sync (sibeatgan.score, sibeatgan.registry, sibeatgan.tracking) ---


@app.command()
def score(
    record: Path = typer.Argument(..., help="WFDB record: folder/name (with or without .hea)."),
    model: str = typer.Option(..., "--model", "-m", help="Model URI (models:/si-beatgan@production, runs:/ID/model), a logged "
                              "model folder, or a training folder / generator.pt with --dataset."),
    out: Path = OutOpt(..., help="Folder for scores.csv, scores.png and summary.json."),
    threshold: Optional[float] = typer.Option(None, help="Override the model's threshold."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Beat dataset a training folder's model was trained on "
                                           "(its preprocessing settings); not for logged models."),
) -> None:
    """Score a WFDB record's beats (annotations when present, detected R peaks otherwise): a table and a plot.
    A record at another sampling rate than the model's is resampled to it."""
    from sibeatgan.score import run_score

    t = time.perf_counter()
    result = run_score(model, record, out, threshold, dataset)
    _done("score", t, result, ("n_beats", "n_anomalous", "beats_from"))


@app.command()
def register(
    generator: Path = typer.Option(..., "--generator", "-g", help="generator.pt (or its training folder)."),
    evaluation: Path = typer.Option(..., "--evaluation", "-e", help="Folder written by `sibeatgan evaluate`."),
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Beat dataset folder the model was evaluated on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the local copy (model, scores, lineage)."),
    fold: Optional[int] = typer.Option(None, help="Which fold's evaluation (default: the model's)."),
    validation: Optional[Path] = typer.Option(None, help="validation.json of the validate gate (its status becomes a tag)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Log the model (pyfunc), its evaluation and lineage, register it and give it alias `staging`."""
    from sibeatgan.registry import run_register

    t = time.perf_counter()
    gen = generator / "generator.pt" if generator.is_dir() else generator
    result = run_register(_config(cfg.TrackingConfig, config, set_), gen, evaluation, dataset, out, fold, validation)
    _done("register", t, result, ("name", "version", "auc"))
    typer.echo(json.dumps(result))


@app.command()
def promote(
    name: Optional[str] = typer.Option(None, "--name", help="Registered model (default: tracking.model_name, si-beatgan)."),
    from_alias: str = typer.Option("staging", "--from", help="Alias of the candidate."),
    to_alias: str = typer.Option("production", "--to", help="Alias to move."),
    rollback: bool = typer.Option(False, "--rollback", help="Give --to back to the version at alias `previous` (through the gate)."),
    force: bool = typer.Option(False, "--force", help="Skip the gate; needs --reason, which the audit trail records."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why the gate is skipped (with --force)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Move an alias through the gate (non-inferiority on the same beats), or roll it back; credentials come from
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Exit 0 moved (or nothing to move), 1 refused by the gate,
    2 usage, 3 server, credentials or permission, 4 another promotion holds the lock (retry later)."""
    from sibeatgan import registry

    if force and not (reason or "").strip():
        raise typer.BadParameter("--force needs --reason (it is recorded in the audit trail)", param_hint="--reason")
    conf = _config(cfg.TrackingConfig, config, set_)
    name = name or conf.model_name
    gate = {"n_bootstrap": conf.n_bootstrap, "margin": conf.margin, "seed": conf.seed, "min_records": conf.min_records,
            "min_beats": conf.min_beats, "force": force, "reason": reason, "lock_ttl_s": conf.lock_ttl_s,
            "lock_settle_s": conf.lock_settle_s}
    try:
        if rollback:
            result = registry.rollback(name, to_alias, conf.tracking_uri, **gate)
        else:
            result = registry.promote(name, from_alias, to_alias, conf.tracking_uri, **gate)
    except registry.PromotionBusy as err:
        typer.echo(f"busy: {err}", err=True)
        sys.exit(4)
    except registry.PromotionRefused as err:
        typer.echo(str(err), err=True)
        sys.exit(1)
    except registry.RegistryUsageError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except registry.RegistryError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(3)
    typer.echo(json.dumps(result, indent=2))


@app.command("track-sync")
def track_sync(
    journal: Path = typer.Argument(..., help="A step's tracking folder (journal.jsonl + state.json)."),
    uri: Optional[str] = typer.Option(None, help="Send to this tracking URI instead of the one the step used."),
) -> None:
    """Send what a step could not send to MLflow (its server was away); safe to repeat."""
    from sibeatgan.tracking import sync

    t = sync(journal, uri)
    if t.pending:
        raise SibeatganError(f"{t.pending} record(s) of {journal} are still unsent to {t.uri}")
    typer.echo(f"{journal}: all sent (run {t.run_id})")


def main() -> None:
    """Entry point: one line instead of a traceback for bad input (exit 2) and for failures of a server, credentials or
    the disk (exit 3; `--debug` adds the traceback); SIGTERM unwinds like Ctrl-C (workers stopped, temp files removed,
    exit 143); a failed command removes the --out folder it created if nothing was written into it."""
    from sibeatgan.failures import EXIT_REFUSED, EXIT_USAGE, describe
    from sibeatgan.procs import sigterm_unwinds
    from sibeatgan.tracking import client_env

    _fresh_outs.clear()
    _track_out_args(sys.argv[1:])
    client_env()  # seconds, not minutes of MLflow's retries, before a server that is away is reported
    failed = True
    try:
        with sigterm_unwinds():
            app()
        failed = False
    except SystemExit as err:
        failed = err.code not in (0, None)
        raise
    except ValidationFailed as err:
        typer.echo(f"validation failed:\n{err.summary}", err=True)
        sys.exit(EXIT_REFUSED)
    except SibeatganError as err:
        _show_traceback()
        typer.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as err:  # noqa: BLE001 - named infrastructure failures in one line; anything else keeps its traceback
        known = describe(err)
        if known is None:
            raise
        _show_traceback()
        typer.echo(f"error: {known[0]}", err=True)
        sys.exit(known[1])
    finally:
        if failed:
            for path in _fresh_outs:
                _remove_if_empty(path)


def _show_traceback() -> None:
    if _debug or os.environ.get("SIBEATGAN_DEBUG"):
        import traceback

        traceback.print_exc()


def _track_out_args(args: list[str]) -> None:
    """Every command's --out/-o folder that does not exist yet, from the command line (whatever the command declares)."""
    for i, arg in enumerate(args):
        if arg in ("--out", "-o") and i + 1 < len(args):
            _track_out(Path(args[i + 1]))
        elif arg.startswith("--out="):
            _track_out(Path(arg.split("=", 1)[1]))



checkpoints_app = typer.Typer(help="Training checkpoints on a shared volume (the pipeline's checkpoint_root).", no_args_is_help=True)
app.add_typer(checkpoints_app, name="checkpoints")


@checkpoints_app.command("prune")
def checkpoints_prune(
    root: Path = typer.Argument(..., help="The checkpoint root (the pipeline's checkpoint_root)."),
    older_than_days: float = typer.Option(30.0, "--older-than-days", help="Remove training folders untouched this long."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
) -> None:
    """Remove old content-keyed training folders (a resubmitted run with the same config and data resumes from its own)."""
    from sibeatgan.steps.protocol import prune_checkpoints

    removed = prune_checkpoints(root, older_than_days, dry_run)
    for folder in removed:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {folder}")
    typer.echo(f"{len(removed)} training folder(s) older than {older_than_days:g} days {'found' if dry_run else 'removed'} in {root}")


@app.command()
def compare(
    a: list[Path] = typer.Option(..., "--a", help="Evaluation folder of model a (from `sibeatgan evaluate`); repeat for seeds."),
    b: list[Path] = typer.Option(..., "--b", help="Evaluation folder of model b, one per --a, paired in order."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for compare.json and table.txt."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Beat dataset both were evaluated on (checked when given)."),
    level: str = typer.Option("auto", "--level", help="Bootstrap level: auto (unit+record with several seeds/folds), unit+record, record."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    track: bool = TrackOpt,
) -> None:
    """Paired comparison b - a of AUC and AP on identical test beats; intervals resample patients, and trained pairs when several."""
    from sibeatgan.compare import format_compare_table
    from sibeatgan.steps.evaluate import run_compare_step

    t = time.perf_counter()
    result = run_compare_step(_config(cfg.EvaluateConfig, config, set_), dataset, a, b, out, _tracking(track, config), level=level)
    typer.echo(format_compare_table(result))
    _done("compare", t, {}, ())


if __name__ == "__main__":
    main()
