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
        "[split] -> train-teacher -> evaluate -> compare. `sibeatgan demo` runs them all on synthetic data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("sibeatgan")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config: top-level fields, or a section per step.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config field: key=value (repeatable).", metavar="KEY=VALUE")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
TrackOpt = typer.Option(True, "--track/--no-track", help="Log to MLflow: the tracking section's URI, $MLFLOW_TRACKING_URI, or OUT/../mlruns.db.")


def _log_outputs(track: bool, config_path: Optional[Path], step: str, conf: Any, out: Path, metrics: dict[str, Any] | None = None,
                 files: tuple[Path, ...] = (), dataset_hash: str | None = None, split_hash: str | None = None, **tags: Any) -> None:
    """A finished step's MLflow run: its typed config, its figures, the files a person opens, and the dataset (and
    split) it read or wrote."""
    if not track:
        return
    from sibeatgan.tracking import step_tracker

    tracker = step_tracker(_tracking_config(config_path), out, step, tags={k: v for k, v in tags.items() if v is not None},
                           params=cfg.to_dict(conf))
    if dataset_hash:
        tracker.log_dataset(dataset_hash, split_hash, context=step)
    if metrics:
        tracker.log_metrics(metrics)
    for path in files:
        if Path(path).exists():
            tracker.log_artifact(path)
    tracker.finish()

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
) -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


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

    if raw is None and dataset is None:
        raise typer.BadParameter("give --raw, --dataset or both")
    t = time.perf_counter()
    conf = _config(cfg.ValidateConfig, config, set_, records=records)
    result = run_validate(conf, raw, dataset, out)
    _log_outputs(track, config, "validate", conf, out, {"success": float(bool(result.get("success")))},
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

    t = time.perf_counter()
    conf = _config(cfg.PreprocessConfig, config, set_, records=records, leads=leads, grouping=grouping)
    result = run_preprocess(conf, source, out, progress=progress)
    _log_outputs(track, config, "preprocess", conf, out, {f"count_{c}": n for c, n in result["counts"].items()} | {"n_beats": result["n_beats"]},
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


class _StepTracker:
    """The step's MLflow run, started when training starts (a step that fails before that leaves no run and no
    folder behind); journaled in OUT/tracking first, so a server that is away never fails the step."""

    def __init__(self, config_path: Optional[Path], step: str, out: Path, tags: dict[str, Any]):
        self.config_path, self.step, self.out, self.tags = config_path, step, out, tags
        self.tracker: Any = None

    def on_fit_start(self, info: dict[str, Any]) -> None:
        from sibeatgan.tracking import step_tracker

        tracking = _tracking_config(self.config_path)
        self.tracker = step_tracker(tracking, self.out, self.step, tags={k: v for k, v in self.tags.items() if v is not None})
        self.tracker.on_fit_start(info)

    def on_epoch_end(self, epoch: int, rows: Any, control: Any) -> None:
        self.tracker.on_epoch_end(epoch, rows, control)

    def on_fit_end(self, result: dict[str, Any]) -> None:
        self.tracker.on_fit_end(result)

    def finish(self, files: tuple[str, ...] = (), status: str = "FINISHED") -> None:
        if self.tracker is None:
            return
        for name in files:
            if (self.out / name).exists():
                self.tracker.log_artifact(self.out / name)
        self.tracker.finish(status)


def _tracking_config(path: Optional[Path]) -> Any:
    """The `tracking:` section of a file of sections; a file of one step's top-level fields says nothing of tracking."""
    import yaml

    if path is not None and Path(path).is_file():
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(loaded, dict) and "tracking" in loaded:
            return cfg.load_config(cfg.TrackingConfig, path)
    return cfg.TrackingConfig()


def _tracker(track: bool, config_path: Optional[Path], step: str, out: Path, **tags: Any) -> list[Any]:
    """The step's tracking callbacks: one _StepTracker, or none with --no-track. The training loop logs the step's
    config (`model.*` params), every epoch's values and the dataset lineage through it."""
    return [_StepTracker(config_path, step, out, tags)] if track else []


def _tracked(callbacks: list[Any], train: Any, files: tuple[str, ...] = ("metrics.json",)) -> dict[str, Any]:
    """train(callbacks), then each step tracker ended with `files` logged: FINISHED, or FAILED if training raised."""
    try:
        result = train(callbacks)
    except BaseException:
        for cb in callbacks:
            cb.finish(files, "FAILED")
        raise
    for cb in callbacks:
        cb.finish(files)
    return result


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
    from sibeatgan.train.teacher import run_train_teacher

    t = time.perf_counter()
    conf = _config(cfg.TeacherConfig, config, set_, epochs=epochs, fold=fold, selection=selection, device=device)
    tracking = _tracker(track, config, "train-teacher", out, protocol=conf.split, device=conf.device)
    result = _tracked(tracking, lambda cbs: run_train_teacher(conf, dataset, out, resume=resume, progress=progress, split=split_path,
                                                              callbacks=cbs))
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
    from sibeatgan.train.distill import run_train_student

    t = time.perf_counter()
    conf = _config(cfg.StudentConfig, config, set_, epochs=epochs, fold=fold, device=device)
    tracking = _tracker(track, config, "train-student", out, protocol=conf.split, device=conf.device)
    result = _tracked(tracking, lambda cbs: run_train_student(conf, dataset, teacher, out, resume=resume, progress=progress,
                                                              split=split_path, callbacks=cbs), ("metrics.json", "score.json"))
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
    from sibeatgan.train.distill import run_tune

    sets = cfg.parse_overrides(set_ or [])
    unknown = sorted(k for k in sets if k.split(".", 1)[0] not in ("tune", "student"))
    if unknown:
        raise typer.BadParameter(f"--set {', '.join(unknown)}: prefix each key with tune. or student.")
    tune_sets = [f"{k.split('.', 1)[1]}={v}" for k, v in sets.items() if k.startswith("tune.")]
    student_sets = [f"{k.split('.', 1)[1]}={v}" for k, v in sets.items() if k.startswith("student.")]
    tune_conf = _config(cfg.TuneConfig, config, tune_sets, n_trials=trials, workers=workers, group_size=group_size, storage=storage)
    student_conf = _config(cfg.StudentConfig, config, student_sets)
    t = time.perf_counter()
    tracking = _tracking_config(config) if track else None
    result = run_tune(tune_conf, student_conf, dataset, teacher, out, split=split_path, tracking=tracking)
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
    result = run_evaluate(conf, dataset, models, out, split=split_path)
    typer.echo(format_table(result))
    figures = {f"fold{k}_{m}": f[m] for k, f in result["folds"].items() for m in ("auc", "ap", "f1_oracle") if f.get(m) is not None}
    figures.update({f"fold{k}_f1_at_threshold": f["operating"]["f1"] for k, f in result["folds"].items() if f.get("operating")})
    plots = tuple(Path(p) for f in result["folds"].values() for p in f.get("plots", []))
    _log_outputs(track, config, "evaluate", conf, out, figures, (out / "evaluation.json", out / "table.txt", *plots),
                 result["dataset_hash"], result.get("split_hash"))
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
    model: str = typer.Option(..., "--model", "-m", help="Model URI, e.g. models:/si-beatgan@production, runs:/ID/model or a folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for scores.csv, scores.png and summary.json."),
    threshold: Optional[float] = typer.Option(None, help="Override the model's threshold."),
) -> None:
    """Score a WFDB record's beats (annotations when present, detected R peaks otherwise): a table and a plot."""
    from sibeatgan.score import run_score

    t = time.perf_counter()
    result = run_score(model, record, out, threshold)
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
    """Entry point: clear one-line errors for bad input instead of tracebacks; a failed command
    removes the --out folder it created if nothing was written into it."""
    _fresh_outs.clear()
    failed = True
    try:
        app()
        failed = False
    except SystemExit as err:
        failed = err.code not in (0, None)
        raise
    except ValidationFailed as err:
        typer.echo(f"validation failed:\n{err.summary}", err=True)
        sys.exit(1)
    except SibeatganError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    finally:
        if failed:
            for path in _fresh_outs:
                _remove_if_empty(path)



# --- kfp helper: `sibeatgan pipeline run` (the Kubeflow pipeline on kfp's local runner) ---
pipeline_app = typer.Typer(help="The Kubeflow pipeline (pipelines/si_beatgan.py) run on this machine.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("run")
def pipeline_run(
    source: Optional[str] = typer.Option(None, "--source", help="physionet, a WFDB folder or s3://bucket/prefix (default: synthetic data from the synth step)."),
    out: Path = typer.Option(Path("runs/pipeline"), "--out", "-o", help="Folder for the run's artifacts, checkpoints and summary.json."),
    folds: str = typer.Option("0", help="Comma-separated folds to train the teacher on."),
    seeds: str = typer.Option("0", help="Comma-separated teacher seeds."),
    epochs: int = typer.Option(10, help="Teacher epochs."),
    records: Optional[str] = typer.Option(None, help="Comma-separated records (default: the protocol's, or all the synthetic ones)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    trials: int = typer.Option(2, help="Optuna trial budget of the student search (0: no search and no student; the teacher is registered)."),
    workers: int = typer.Option(2, help="Optuna workers (ParallelFor items, one process each) on the one study."),
    members_per_worker: int = typer.Option(1, help="Trials each worker trains at once as one batched group."),
    tune_epochs: int = typer.Option(1, help="Epochs of each trial."),
    student_epochs: int = typer.Option(2, help="Epochs of the final student."),
    mlflow_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: sqlite:///OUT/mlflow.db)."),
    optuna_storage: Optional[str] = typer.Option(None, help="Optuna storage: a *.journal path or a database URL (default: OUT/optuna/studies.journal)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Run the whole pipeline with kfp's local runner (SubprocessRunner, this Python): same components as on a cluster,
    ending with a model registered under alias `staging` in a local MLflow registry."""
    from sibeatgan.pipeline import run_pipeline_local

    def ints(text: str, name: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter(f"--{name}: {text!r} is not a comma-separated list of integers") from None

    t = time.perf_counter()
    result = run_pipeline_local(
        out, source=source, folds=ints(folds, "folds"), seeds=ints(seeds, "seeds"), epochs=epochs, config=config,
        records=tuple(r.strip() for r in (records or "").split(",") if r.strip()), device=device, trials=trials, workers=workers,
        members_per_worker=members_per_worker, tune_epochs=tune_epochs, student_epochs=student_epochs, mlflow_uri=mlflow_uri,
        optuna_storage=optuna_storage,
    )
    _done("pipeline", t, result, ())
    for r in result["runs"]:
        typer.echo(f"fold {r['fold']} seed {r['seed']}: test AUC {r['auc']:.4f}  AP {r['ap']:.4f}  F1 {r['f1_at_threshold']:.4f} at the "
                   f"validation threshold  ({r['n']} beats)")
    reg = result["registered"]
    typer.echo(f"registered {reg['name']} version {reg['version']} ({reg['kind']}, fold {reg['fold']}, test AUC {reg['auc']:.4f}) "
               f"as {reg['model_uri']} (alias {reg['alias']}) in {reg['tracking_uri']}")
    typer.echo(f"artifacts in {result['out']}/kfp, summary in {result['out']}/summary.json")
    typer.echo(f"MLflow UI: {reg['ui']}")



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


if __name__ == "__main__":
    main()
