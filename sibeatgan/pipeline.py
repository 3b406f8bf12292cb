"""The KFP pipeline's library side: config for components, the run grid, ROC points, and the local run.

Nothing here imports kfp at module import: `run_pipeline_local` imports it (and the pipeline
definition in `pipelines/`) when called.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np

from sibeatgan.errors import ConfigError, SibeatganError

log = logging.getLogger(__name__)


class PipelineFailed(SibeatganError):
    """A task of the local pipeline run failed (a validation gate, bad input, a crash)."""
C = TypeVar("C")
ROOT = Path(__file__).resolve().parents[1]
# glibc settings bench/teacher.md recommends (the Dockerfile sets them too): 2-5x faster large batches on CPUs.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def step_config(cls: type[C], config_yaml: str = "", **overrides: Any) -> C:
    """A step's config from YAML text (as `--config` reads it: top-level fields or one section per step)
    plus typed overrides; `None` overrides are left out, so a component's unset parameter keeps the default."""
    from sibeatgan.config import load_config

    given = {k: v for k, v in overrides.items() if v is not None}
    if not config_yaml.strip():
        return load_config(cls, None, given)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml)
        try:
            return load_config(cls, path, given)
        except ConfigError as err:
            raise ConfigError(str(err).replace(str(path), "config_yaml")) from None


def _as_int(value: Any, what: str) -> int:
    """Pipeline lists reach components as JSON numbers (0.0 for 0); refuse anything that is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{what}: {value!r} is not an integer")
    return int(value)


def run_grid(folds: Sequence[Any], seeds: Sequence[Any]) -> list[dict[str, int]]:
    """Every (fold, seed) pair the teacher is trained for, seed-major, duplicates refused."""
    f = [_as_int(x, "folds") for x in folds]
    s = [_as_int(x, "seeds") for x in seeds]
    if not f or not s:
        raise ConfigError(f"the run grid needs at least one fold and one seed, got folds={f} seeds={s}")
    for name, values in (("folds", f), ("seeds", s)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{name}: {values} repeats a value")
        if min(values) < 0:
            raise ConfigError(f"{name}: {values} holds a negative value")
    return [{"fold": fold, "seed": seed} for seed in s for fold in f]


OPTUNA_STORAGE_ENV = "OPTUNA_STORAGE"  # set from the sibeatgan-optuna secret on a cluster


def check_search(trials: int, workers: int, members_per_worker: int, tune_epochs: int = 1, student_epochs: int = 1) -> None:
    """The search's sizes, refused before any task starts (trials 0 means no search, so the rest is not used then)."""
    if trials < 0:
        raise ConfigError(f"trials: {trials} is negative (0 skips the search and registers the teacher)")
    if trials > 0:
        for name, value in (("workers", workers), ("members_per_worker", members_per_worker), ("tune_epochs", tune_epochs),
                            ("student_epochs", student_epochs)):
            if value < 1:
                raise ConfigError(f"{name}: {value}; the search needs at least 1")


def tune_config(config_yaml: str, trials: int, workers: int, members_per_worker: int, storage: str, run_id: str) -> Any:
    """The search's TuneConfig in a pipeline task: the `tune` section plus the pipeline's parameters; the storage is
    the `optuna_storage` parameter (a journal file locally), else $OPTUNA_STORAGE (the cluster's database, from a
    secret); the study is named after the pipeline run so each run searches afresh and a retried worker rejoins it."""
    from sibeatgan.config import TuneConfig

    check_search(trials, workers, members_per_worker)
    url = storage or os.environ.get(OPTUNA_STORAGE_ENV, "")
    if not url:
        raise ConfigError(f"no Optuna storage: the optuna_storage parameter is empty and ${OPTUNA_STORAGE_ENV} is not set "
                          "(on a cluster it comes from the sibeatgan-optuna secret; locally give a *.journal path all tasks can see)")
    base = step_config(TuneConfig, config_yaml)
    return step_config(TuneConfig, config_yaml, n_trials=trials, workers=workers, group_size=members_per_worker, storage=url,
                       study_name=f"{base.study_name}-{run_id}")


def pick_run(artifacts: Sequence[Any], fold: int, seed: int, what: str) -> Any:
    """The artifact of one (fold, seed) among a ParallelFor's collected outputs (matched on their metadata)."""
    found = [a for a in artifacts
             if _as_int(a.metadata.get("fold", -1), "fold") == fold and _as_int(a.metadata.get("seed", -1), "seed") == seed]
    if len(found) != 1:
        raise ConfigError(f"{what}: {len(found)} artifacts of fold {fold} seed {seed} among {len(artifacts)} "
                          f"({[(a.metadata.get('fold'), a.metadata.get('seed')) for a in artifacts]})")
    return found[0]


def roc_points(scores: np.ndarray, positive: np.ndarray, max_points: int = 200) -> tuple[list[float], list[float], list[float]]:
    """(fpr, tpr, thresholds) of the ROC curve, thinned to at most `max_points` (KFP stores them as
    run metadata) and with finite thresholds only (the curve's first point has threshold +inf)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64))
    thr = np.where(np.isfinite(thr), thr, np.nanmax(np.where(np.isfinite(thr), thr, -np.inf)) + 1.0)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return fpr.tolist(), tpr.tolist(), thr.tolist()


def evaluation_markdown(result: dict[str, Any], title: str) -> str:
    """The evaluation summary the KFP UI shows: one row per fold, per-class AUC, and where the files are."""
    lines = [f"# {title}", "", "| fold | AUC | AP | F1 at the threshold | best F1 (oracle) | test beats (anomalous) | epoch | selection |",
             "|---|---|---|---|---|---|---|---|"]
    for fold, m in result["folds"].items():
        ci = m.get("auc_ci")
        auc = f"{m['auc']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        op = m.get("operating") or {}
        at = f"{op['f1']:.4f} (threshold {op['threshold']:.4g}, {op.get('rule', 'saved')})" if "f1" in op else "n/a"
        lines.append(f"| {fold} | {auc} | {m['ap']:.4f} | {at} | {m.get('f1_oracle', m.get('f1', float('nan'))):.4f} "
                     f"| {m['n']} ({m['n_anomalous']}) | {m.get('epoch')} | {m.get('selection')} |")
    for fold, m in result["folds"].items():
        per_class = ", ".join(f"{c} {v['auc']:.4f} (n={v['n']})" for c, v in m.get("per_class", {}).items())
        lines += ["", f"Per-class AUC, fold {fold}: {per_class or 'none'}"]
    lines += ["", f"Dataset {result['dataset_hash'][:12]}; evaluation.json, scores and plots are in the `evaluation` artifact.", ""]
    return "\n".join(lines)


def _source_tree() -> Path:
    """`components/` and `pipelines/` sit beside the package in a checkout; make them importable."""
    if not (ROOT / "pipelines" / "si_beatgan.py").is_file() or not (ROOT / "components").is_dir():
        raise ConfigError(f"the local pipeline run needs a source checkout: {ROOT} has no pipelines/si_beatgan.py and components/")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return ROOT


def local_mlflow_uri(out: Path) -> str:
    """The local run's MLflow store: an absolute SQLite path every task subprocess sees (artifacts go beside it)."""
    return f"sqlite:///{Path(out).expanduser().resolve() / 'mlflow.db'}"


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
) -> dict[str, Any]:
    """Run pipelines/si_beatgan.py with kfp.local's SubprocessRunner in this Python environment.

    With no `source`, the `synth` component writes a synthetic database first and the pipeline ingests
    it. Accelerators, node selectors, secrets and PVCs are cluster settings the local runner ignores;
    checkpoints go to OUT/checkpoints, the Optuna workers (one subprocess each) share the journal
    OUT/optuna/studies.journal (one study per run), and the model is registered in the MLflow store
    sqlite:///OUT/mlflow.db (artifacts beside it) unless `mlflow_uri` says otherwise. Returns a summary with
    each teacher's test metrics and the registered version.
    """
    from kfp import local

    _source_tree()
    from components import synth
    from pipelines.si_beatgan import si_beatgan

    check_search(trials, workers, members_per_worker, tune_epochs, student_epochs)
    out = Path(out).expanduser().resolve()
    config_yaml = _yaml_text(config)
    for name, value in MALLOC_ENV.items():  # as in the image; each task's subprocess inherits them at start
        os.environ.setdefault(name, value)
    for name in ("kfp", "workspace", "checkpoints", "optuna"):
        (out / name).mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(out / "kfp"),
        workspace_root=str(out / "workspace"),
    )
    with warnings.catch_warnings():  # our image has no 'python' in its name; the subprocess runner warns about that
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        if source is None:
            made = synth(config_yaml=config_yaml)
            database = made.outputs["database"]
            source, records = database.path, list(database.metadata["records"])
            log.info("pipeline: synthetic database with records %s in %s", ",".join(records), source)
        # kfp.local does not hand a ParallelFor the defaults of parameters it was not given: give them all.
        defaults = {name: spec.default for name, spec in si_beatgan.component_spec.inputs.items()}
        defaults.update(
            source=str(source), records=list(records), folds=list(folds), seeds=list(seeds), epochs=int(epochs),
            config_yaml=config_yaml, device=device, checkpoint_root=str(out / "checkpoints"), trials=int(trials),
            workers=int(workers), members_per_worker=int(members_per_worker), tune_epochs=int(tune_epochs),
            student_epochs=int(student_epochs), mlflow_uri=mlflow_uri or local_mlflow_uri(out),
            optuna_storage=str(Path(optuna_storage).expanduser().resolve()) if optuna_storage else str(out / "optuna" / "studies.journal"),
        )
        try:
            run = si_beatgan(**defaults)
        except RuntimeError as err:  # kfp.local's report of a failed task; the task's own log is above it
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
            raise PipelineFailed(f"{plain} (task outputs and logs under {out / 'kfp'})") from None
    runs = []
    for metrics in run.outputs["teachers"]:
        m = {k: (int(v) if k in ("fold", "seed", "n") else v) for k, v in metrics.metadata.items()}
        runs.append({**m, "metrics": metrics.path})
    runs.sort(key=lambda r: (r["seed"], r["fold"]))
    registered = dict(run.outputs["registered"])  # JSON numbers come back as floats
    registered.update(version=int(registered["version"]), fold=int(registered["fold"]))
    uri = defaults["mlflow_uri"]
    registered.update(tracking_uri=uri, ui=f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri)
    summary = {"source": str(source), "records": list(records), "out": str(out), "runs": runs, "registered": registered}
    from sibeatgan.files import write_json

    write_json(out / "summary.json", summary)
    return summary
