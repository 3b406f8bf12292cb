"""The pipeline of pipelines/si_beatgan.py run on this machine with kfp's local runner: the same components as on a
cluster, each task a subprocess of this Python (SubprocessRunner), ending with the winner registered under alias
`staging` in the local MLflow store the `sibeatgan` commands use (runs/mlflow.db under the working directory, unless
MLFLOW_TRACKING_URI or --mlflow-uri says otherwise).

    python -m pipelines.local [--out runs/pipeline] [--source DIR] [--epochs 10] [--trials 2] ...

The console gets one line per task (its name, time and headline figure); kfp's full executor output goes to
OUT/pipeline.log.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python pipelines/local.py` and imports from tests: components/ beside it
    sys.path.insert(0, str(ROOT))

from sibeatgan.errors import ConfigError, SibeatganError  # noqa: E402
from sibeatgan.steps.tracked import LOCAL_RUN_ENV  # noqa: E402

log = logging.getLogger("pipelines.local")
# glibc settings bench/teacher.md recommends (the Dockerfile sets them too): 2-5x faster large batches on CPUs.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
HEADLINE = "SIBEATGAN-HEADLINE:"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '?([\w.-]+)'?")
_END = re.compile(r"Task '?([\w.-]+)'? (?:finished with status (\w+)|cache hit)")


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value for the block (the tasks, subprocesses of this Python, inherit it)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _end_failed_run(uri: str, experiment: str, local_run: str, error: str, workspace: Path) -> str:
    """A failed pipeline leaves its MLflow run RUNNING (only `register` ends it): end it FAILED, tagged with the task that
    failed and kfp's report. What was done, for the log; never raises (the pipeline's own failure is what matters)."""
    from sibeatgan.config import TrackingConfig
    from sibeatgan.steps.tracked import close_pipeline_run, find_local_pipeline_run

    tracking = TrackingConfig(tracking_uri=uri, experiment=experiment)
    try:
        run_id = find_local_pipeline_run(tracking, local_run)
    except Exception as err:  # noqa: BLE001
        return f"the pipeline's MLflow run cannot be looked up ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if run_id is None:
        return "the pipeline made no MLflow run (it failed before start-run, or tracking is off)"
    task = re.search(r"Inner task failed: '([^']+)'", error)
    return close_pipeline_run(tracking, workspace / "pipeline-run-tracking", run_id, "FAILED", task.group(1) if task else "", error)


class PipelineFailed(SibeatganError):
    """A task of the local pipeline run failed (a validation gate, bad input, a crash)."""


class QuietConsole(io.TextIOBase):
    """sys.stdout during the run: every line goes to the log file; the console gets one line per finished task
    (`name  12.3 s  headline`), where the headline is the last `SIBEATGAN-HEADLINE:` line the task printed."""

    def __init__(self, log_file: TextIO, console: TextIO) -> None:
        self.log_file, self.console = log_file, console
        self._buffer, self._started, self._headline = "", {}, {}
        self._current: str | None = None
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.log_file.write(text)
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()
        self.console.flush()

    def _line(self, line: str) -> None:
        # tasks of one name may run at once (a ParallelFor's items): their starts and headlines queue up in order
        if (m := _START.search(line)) is not None:
            self._current = m.group(1)
            self._started.setdefault(self._current, []).append(time.perf_counter())
        elif HEADLINE in line and self._current is not None:
            self._headline.setdefault(self._current, []).append(line.split(HEADLINE, 1)[1].strip())
        elif (m := _END.search(line)) is not None:
            name, status = m.group(1), m.group(2) or "CACHED"
            starts, heads = self._started.get(name) or [time.perf_counter()], self._headline.get(name) or [""]
            took, head = time.perf_counter() - starts.pop(0), heads.pop(0)
            mark = "" if status in ("SUCCESS", "CACHED") else f" {status}"
            self.console.write(f"  {name:<28} {took:7.1f} s{mark}  {head}\n".rstrip() + "\n")
            self.console.flush()


@contextlib.contextmanager
def _no_retries(spec: Any) -> Iterator[None]:
    """The pipeline's tasks without their retry policies for the duration of a local run: a cluster's retries wait out
    a preempted node with minutes of backoff, while a failure here is the same failure each time."""
    saved = []
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            if task.HasField("retry_policy"):
                saved.append((task, type(task.retry_policy)()))
                saved[-1][1].CopyFrom(task.retry_policy)
                task.ClearField("retry_policy")
    try:
        yield
    finally:
        for task, policy in saved:
            task.retry_policy.CopyFrom(policy)


def _yaml_text(config: Path | None) -> str:
    if config is None:
        return ""
    try:
        return Path(config).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {config} does not exist") from None


def run_pipeline_local(
    out: Path = Path("runs/pipeline"),
    source: str | Path | None = None,
    folds: Sequence[int] = (0,),
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    config: Path | None = None,
    records: Sequence[str] = (),
    device: str = "auto",
    trials: int = 2,
    workers: int = 2,
    members_per_worker: int = 1,
    tune_epochs: int = 1,
    student_epochs: int = 2,
    mlflow_uri: str | None = None,
    optuna_storage: str | Path | None = None,
    experiment: str = "si-beatgan",
    model_name: str = "si-beatgan",
    quiet: bool = True,
    runner: Any = None,
) -> dict[str, Any]:
    """Run pipelines/si_beatgan.py with kfp.local's SubprocessRunner in this Python environment.

    With no `source`, the `synth` component writes a synthetic database first and the pipeline ingests it.
    Accelerators, node selectors, secrets, timeouts and PVCs are cluster settings the local runner ignores; checkpoints
    go to OUT/checkpoints, the Optuna workers (one subprocess each) share the journal OUT/optuna/studies.journal (one
    study per run), and runs and the registered model go to `mlflow_uri` (default: the store every `sibeatgan` command
    uses, sibeatgan.tracking.default_store()). With `quiet`, kfp's output goes to OUT/pipeline.log and the console gets
    one line per task. `runner`: kfp.local's runner (default SubprocessRunner(use_venv=False); a DockerRunner runs every
    task in the image, scripts/pipeline-in-image.sh). Returns a summary with each teacher's test metrics, the registered
    version and the MLflow run.
    """
    from kfp import local

    from components import synth
    from pipelines.si_beatgan import si_beatgan
    from sibeatgan.files import write_json
    from sibeatgan.steps.protocol import check_search
    from sibeatgan.tracking import default_store

    check_search(trials, workers, members_per_worker, tune_epochs, student_epochs)
    out = Path(out).expanduser().resolve()
    config_yaml = _yaml_text(config)
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store()
    for name, value in MALLOC_ENV.items():  # as in the image; each task's subprocess inherits them at start
        os.environ.setdefault(name, value)
    for name in ("kfp", "workspace", "checkpoints", "optuna"):
        (out / name).mkdir(parents=True, exist_ok=True)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"),
               workspace_root=str(out / "workspace"))
    log_path = out / "pipeline.log"
    console = sys.stdout
    started = time.perf_counter()
    local_run = uuid.uuid4().hex  # start-run tags the pipeline's MLflow run with it, so a failed run can be ended here
    with open(log_path, "a") as log_file, warnings.catch_warnings(), _no_retries(si_beatgan.pipeline_spec), \
            _env(LOCAL_RUN_ENV, local_run):
        # our image has no 'python' in its name, and cluster settings (resources, accelerators) do nothing here
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
        if quiet:
            sys.stdout = QuietConsole(log_file, console)
        try:
            if source is None:
                made = synth(config_yaml=config_yaml)
                database = made.outputs["database"]
                source, records = database.path, list(database.metadata["records"])
            # kfp.local does not hand a ParallelFor the defaults of parameters it was not given: give them all.
            defaults = {name: spec.default for name, spec in si_beatgan.component_spec.inputs.items()}
            defaults.update(
                source=str(source), records=list(records), folds=list(folds), seeds=list(seeds), epochs=int(epochs),
                config_yaml=config_yaml, device=device, checkpoint_root=str(out / "checkpoints"), trials=int(trials),
                workers=int(workers), members_per_worker=int(members_per_worker), tune_epochs=int(tune_epochs),
                student_epochs=int(student_epochs), mlflow_uri=uri, experiment=experiment, model_name=model_name,
                optuna_storage=str(Path(optuna_storage).expanduser().resolve()) if optuna_storage else str(out / "optuna" / "studies.journal"),
            )
            run = si_beatgan(**defaults)
        except RuntimeError as err:  # kfp.local's report of a failed task; the task's own log is in the log file
            plain = _ANSI.sub("", str(err))
            print(_end_failed_run(uri, experiment, local_run, plain, out / "workspace"), file=log_file, flush=True)
            raise PipelineFailed(f"{plain} (task outputs under {out / 'kfp'}, the full log in {log_path})") from None
        finally:
            sys.stdout = console
    runs = []
    for metrics in run.outputs["teachers"]:
        m = {k: (int(v) if k in ("fold", "seed", "n") else v) for k, v in metrics.metadata.items()}
        runs.append({**m, "metrics": metrics.path})
    runs.sort(key=lambda r: (r["seed"], r["fold"]))
    registered = dict(run.outputs["registered"])  # JSON numbers come back as floats
    registered.update(version=int(registered["version"]), fold=int(registered["fold"]), tracking_uri=uri,
                      ui=f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri)
    summary = {"source": str(source), "records": list(records), "out": str(out), "runs": runs, "registered": registered,
               "log": str(log_path), "seconds": round(time.perf_counter() - started, 1)}
    write_json(out / "summary.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.local", description=__doc__.splitlines()[0])
    p.add_argument("--out", "-o", type=Path, default=Path("runs/pipeline"), help="folder for artifacts, checkpoints, the log, summary.json")
    p.add_argument("--source", help="physionet, a WFDB folder or s3://bucket/prefix (default: synthetic data from the synth step)")
    p.add_argument("--folds", default="0", help="comma-separated folds to train the teacher on")
    p.add_argument("--seeds", default="0", help="comma-separated teacher seeds")
    p.add_argument("--epochs", type=int, default=10, help="teacher epochs")
    p.add_argument("--records", default="", help="comma-separated records (default: the protocol's, or all the synthetic ones)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trials", type=int, default=2, help="Optuna trials (0: no search; the teacher is registered)")
    p.add_argument("--workers", type=int, default=2, help="Optuna workers (one process each) on the one study")
    p.add_argument("--members-per-worker", type=int, default=1, help="trials each worker trains at once as one batched group")
    p.add_argument("--tune-epochs", type=int, default=1, help="epochs of each trial")
    p.add_argument("--student-epochs", type=int, default=2, help="epochs of the student and its control")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    p.add_argument("--optuna-storage", default=None, help="a *.journal path or a database URL (default: OUT/optuna/studies.journal)")
    p.add_argument("--experiment", default="si-beatgan", help="MLflow experiment")
    p.add_argument("--model-name", default="si-beatgan", help="registered model name")
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML config: a section per step")
    p.add_argument("--verbose", action="store_true", help="kfp's full executor output on the console too")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def ints(text: str, name: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            p.error(f"--{name}: {text!r} is not a comma-separated list of integers")
            raise

    print(f"pipeline: running si-beatgan locally; the full log goes to {args.out / 'pipeline.log'}")
    try:
        result = run_pipeline_local(
            args.out, source=args.source, folds=ints(args.folds, "folds"), seeds=ints(args.seeds, "seeds"), epochs=args.epochs,
            config=args.config, records=tuple(r.strip() for r in args.records.split(",") if r.strip()), device=args.device,
            trials=args.trials, workers=args.workers, members_per_worker=args.members_per_worker, tune_epochs=args.tune_epochs,
            student_epochs=args.student_epochs, mlflow_uri=args.mlflow_uri, optuna_storage=args.optuna_storage,
            experiment=args.experiment, model_name=args.model_name, quiet=not args.verbose,
        )
    except SibeatganError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in result["runs"]:
        print(f"teacher fold {r['fold']} seed {r['seed']}: test AUC {r['auc']:.4f}  AP {r['ap']:.4f}  F1 {r['f1_at_threshold']:.4f} "
              f"at the validation threshold  ({r['n']} beats)")
    reg = result["registered"]
    print(f"registered {reg['name']} version {reg['version']} ({reg['kind']}, fold {reg['fold']}, test AUC {reg['auc']:.4f}) as "
          f"{reg['model_uri']} (alias {reg['alias']}) in {reg['tracking_uri']}")
    print(f"  {reg['verdict']}")
    print(f"done in {result['seconds']:.0f} s; artifacts in {result['out']}/kfp, summary in {result['out']}/summary.json")
    print(f"MLflow UI: {reg['ui']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
