"""The Optuna search over the student's lambda, T and tau (and alpha, beta, lr, init).

One study, created once, on a storage several processes share: an Optuna journal file on one machine
(SQLite locks under concurrent writers), PostgreSQL on a cluster. Each worker asks `group_size` trials
at once and trains them as one group of members in one process (`sibeatgan.train.loop.fit`); a
callback reports each member's validation criterion every epoch and stops the members the pruner
prunes; at the end each trial is told its best value (or pruned, or failed). The objective never sees
the test split: `clean` selection (label-free, the default) minimises the normal validation beats'
reconstruction error, `paper` maximises validation AUC, `synthetic` (label-free) maximises the AUC of the
validation beats against shifted copies of them (sibeatgan.shifts); the study records which.

Crashed workers: every running trial carries a heartbeat (a user attribute a thread refreshes);
before asking, a worker fails the running trials whose heartbeat is older than `grace_s` and enqueues
each again (up to `max_retry` times), so a worker killed with SIGKILL has its trials retried by another.
Re-running the command resumes the study up to its trial budget.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sibeatgan.config import replace, to_dict
from sibeatgan.errors import ConfigError, SibeatganError, redact_url
from sibeatgan.train.loop import CRITERIA, Callback, Control

if TYPE_CHECKING:
    import optuna

    from sibeatgan.config import StudentConfig, TuneConfig

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat"
SEARCHED = ("lambda_fm", "T", "tau", "alpha", "beta", "lr")
FINISHED = ("COMPLETE", "PRUNED")


def suggest(trial: optuna.trial.BaseTrial, tune: TuneConfig, base: StudentConfig) -> StudentConfig:
    """The search space, in one place: a trial's parameters on top of the base student config."""
    values: dict[str, Any] = {}
    for name in SEARCHED:
        low, high = getattr(tune, name)
        if low == high:
            values[name] = float(low)
            continue
        values[name] = trial.suggest_float(name, low, high, log=name not in ("T",))
    if len(tune.init) > 1:
        values["init"] = trial.suggest_categorical("init", list(tune.init))
    elif tune.init:
        values["init"] = tune.init[0]
    values["seed"] = base.seed + trial.number  # every member its own seed and data order
    return replace(base, **values)


def storage_for(tune: TuneConfig, out: Path) -> Any:
    """The study's storage: the configured URL, or a journal file in `out` that worker processes share."""
    import optuna

    if tune.storage is None or tune.storage.endswith(".journal") or tune.storage.startswith("journal:"):
        path = Path(tune.storage.removeprefix("journal:")) if tune.storage else Path(out) / "study.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    if tune.storage.startswith(("postgresql", "mysql", "sqlite")):
        try:
            return optuna.storages.RDBStorage(tune.storage, engine_kwargs={"pool_pre_ping": True})
        except Exception as err:  # sqlalchemy's OperationalError and friends: name the storage, not the stack
            raise SibeatganError(f"Optuna storage {redact_url(tune.storage)} cannot be reached ({type(err).__name__}: {redact_url(str(err).splitlines()[0])})") from None
    raise ConfigError(f"TuneConfig.storage: {redact_url(str(tune.storage))!r} is neither a journal file (*.journal) nor a database URL")


def open_study(tune: TuneConfig, selection: str, out: Path, worker: int = 0) -> optuna.Study:
    """Create the study, or attach to it; TPE (multivariate, constant liar for parallel workers), median pruner."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=tune.seed + worker, multivariate=True, constant_liar=True,
                                         n_startup_trials=max(tune.group_size, 4))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=tune.group_size, n_warmup_steps=tune.pruner_warmup_epochs)
    if selection not in CRITERIA:
        raise ConfigError(f"selection: {selection!r} is not one of {', '.join(CRITERIA)}")
    criterion, higher = CRITERIA[selection]
    direction = "maximize" if higher else "minimize"
    study = optuna.create_study(study_name=tune.study_name, storage=storage_for(tune, out), sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {tune.study_name!r} exists with direction {study.direction.name.lower()}, but selection "
                          f"{selection!r} needs {direction}: use another study name or storage")
    study.set_user_attr("selection", selection)
    study.set_user_attr("criterion", criterion)
    return study


class _Heartbeat:
    """Refreshes the heartbeat of this worker's running trials from a thread, so others can tell it is alive."""

    def __init__(self, study: optuna.Study, interval: float):
        self.study, self.interval = study, interval
        self.trials: list[optuna.Trial] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def beat(self) -> None:
        now = time.time()
        for trial in list(self.trials):
            try:
                trial.set_user_attr(HEARTBEAT, now)
            except Exception as err:  # noqa: BLE001 - a finished or reaped trial: nothing to keep alive
                log.debug("heartbeat of trial %d: %s", trial.number, err)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def reap_stale(study: optuna.Study, grace_s: float, max_retry: int) -> list[int]:
    """Fail running trials whose heartbeat is older than `grace_s` (their worker died) and enqueue each again."""
    from optuna.trial import TrialState

    now, reaped = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.user_attrs.get(HEARTBEAT, t.datetime_start.timestamp() if t.datetime_start else now)
        if now - last <= grace_s:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another worker reaped it first
            continue
        reaped.append(t.number)
        retries = int(t.user_attrs.get("retries", 0))
        if retries < max_retry and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "retries": retries + 1}, skip_if_exists=False)
            log.warning("trial %d: no heartbeat for %.0f s (its worker died?); failed and enqueued again (retry %d of %d)",
                        t.number, now - last, retries + 1, max_retry)
        else:
            log.warning("trial %d: no heartbeat for %.0f s; failed (no retries left)", t.number, now - last)
    return reaped


class OptunaReporter(Callback):
    """Reports each member's criterion to its trial every epoch and stops the members the pruner prunes."""

    def __init__(self, trials: list[optuna.Trial], criterion: str, heartbeat: _Heartbeat | None = None):
        self.trials, self.criterion, self.heartbeat = trials, criterion, heartbeat

    def on_epoch_end(self, epoch: int, rows: list[dict[str, Any] | None], control: Control) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()
        for k, (trial, row) in enumerate(zip(self.trials, rows)):
            if row is None:
                continue
            value = row.get(self.criterion)
            if value is None or not math.isfinite(value):
                control.stop(k, "diverged")
                continue
            try:
                trial.report(float(value), epoch)
            except Exception as err:  # noqa: BLE001 - another worker reaped it (this one looked dead): stop training it
                log.warning("trial %d was finished by another worker (%s); its member stops", trial.number, err)
                control.stop(k, "reaped")
                continue
            if trial.should_prune():
                control.stop(k, "pruned")


def _finished(study: optuna.Study) -> tuple[int, int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(t.state.name in FINISHED for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    return done, running, failed


def tune_worker(tune: TuneConfig, base: StudentConfig, out: Path, train_group: Callable[..., list[dict[str, Any]]], worker: int = 0,
                callbacks: Callable[[list[optuna.Trial]], list[Callback]] | None = None) -> dict[str, Any]:
    """One worker: ask groups of trials, train each group as members of one run, tell each trial, until the budget is met.

    `train_group(configs, out, callbacks) -> [member result]` trains the members (sibeatgan.train.student's
    group trainer in production); `callbacks(trials)` adds per-run callbacks (e.g. MLflow child runs).
    """
    from optuna.trial import TrialState

    out = Path(out)
    study = open_study(tune, base.selection, out, worker)
    criterion = study.user_attrs["criterion"]
    told = 0
    with _Heartbeat(study, tune.heartbeat_s) as heartbeat:
        while True:
            reap_stale(study, tune.grace_s, tune.max_retry)
            done, running, failed = _finished(study)
            room = tune.n_trials - done - running
            if room <= 0:
                break
            if failed >= 2 * tune.n_trials:
                raise SibeatganError(f"study {tune.study_name!r}: {failed} trials failed; stopping instead of trying forever (see the log)")
            trials = [study.ask() for _ in range(min(tune.group_size, room))]
            heartbeat.trials = trials
            heartbeat.beat()
            configs = [suggest(t, tune, base) for t in trials]
            for t, c in zip(trials, configs):
                t.set_user_attr("config", to_dict(c))
                t.set_user_attr("worker", worker)
            group_out = out / "trials" / tune.study_name / "-".join(str(t.number) for t in trials)
            log.info("worker %d: trials %s as one group of %d", worker, [t.number for t in trials], len(trials))
            extra = callbacks(trials) if callbacks is not None else []
            try:
                results = train_group(configs, group_out, [OptunaReporter(trials, criterion, heartbeat), *extra])
            except Exception as err:  # noqa: BLE001 - a crashed group fails its trials; the study goes on
                log.error("worker %d: trials %s failed: %s: %s", worker, [t.number for t in trials], type(err).__name__, err)
                for cb in extra:
                    if hasattr(cb, "fail"):
                        cb.fail()
                for t in trials:
                    try:
                        t.set_user_attr("error", f"{type(err).__name__}: {err}")
                    except Exception:  # noqa: BLE001 - a trial another worker reaped meanwhile is finished already
                        pass
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                heartbeat.trials = []
                continue
            for t, r in zip(trials, results):
                for key in ("generator", "best_epoch", "threshold", "stopped"):
                    try:
                        t.set_user_attr(key, r.get(key))
                    except Exception:  # noqa: BLE001 - reaped meanwhile (its worker looked dead): it stays failed
                        break
                if r.get("stopped") == "pruned":
                    study.tell(t, state=TrialState.PRUNED, skip_if_finished=True)
                elif r.get("best_metric") is None or r.get("stopped") in ("diverged", "reaped"):
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                else:
                    study.tell(t, r["best_metric"], skip_if_finished=True)
                told += 1
            heartbeat.trials = []
    return {"worker": worker, "told": told}


def write_outputs(tune: TuneConfig, base: StudentConfig, out: Path) -> dict[str, Any]:
    """best.json (the best trial's student config, a file `train-student --config` reads), summary.json (the best
    trial, its value and criterion, trial counts), trials.csv, and the plots a person looks at."""
    import optuna
    from optuna.trial import TrialState

    from sibeatgan.files import atomic_open, write_json

    out = Path(out)
    study = optuna.load_study(study_name=tune.study_name, storage=storage_for(tune, out))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    if not complete:
        raise SibeatganError(f"study {tune.study_name!r} has no complete trial ({counts}); nothing to choose from")
    best = study.best_trial
    best_config = replace(base, **{k: v for k, v in best.user_attrs["config"].items() if k in type(base).model_fields})
    summary = {
        "student": to_dict(best_config), "trial": best.number, "value": best.value,
        "criterion": study.user_attrs.get("criterion"), "selection": study.user_attrs.get("selection"),
        "generator": best.user_attrs.get("generator"), "params": best.params, "trials": counts, "study": tune.study_name,
    }
    write_json(out / "best.json", {"student": summary["student"]})
    write_json(out / "summary.json", summary)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    frame = frame[[c for c in frame.columns if c not in ("user_attrs_config", f"user_attrs_{HEARTBEAT}")]]
    with atomic_open(out / "trials.csv", "w") as fh:
        frame.to_csv(fh, index=False)
    summary["plots"] = _plots(study, out)
    return summary


def _plots(study: optuna.Study, out: Path) -> list[str]:
    """Optimization history, parameter importances and slices as PNGs (matplotlib Agg); a plot Optuna cannot draw yet
    (too few trials for importances) is skipped with a log line."""
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    from sibeatgan.files import atomic_open

    import warnings

    written = []
    for name, draw in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances), ("slices", ovm.plot_slice)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = draw(study)
            except Exception as err:  # noqa: BLE001 - e.g. importances need two or more complete trials with varied params
                log.info("plot %s skipped: %s", name, err)
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(max(fig.get_figwidth(), 7), max(fig.get_figheight(), 4.5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        path = out / f"{name}.png"
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def _worker_main(tune: TuneConfig, base: StudentConfig, out: Path, train_group: Callable[..., list[dict[str, Any]]], worker: int,
                 log_level: int, callbacks: Any = None, parent_pid: int | None = None) -> None:
    from sibeatgan.procs import die_with_parent

    if parent_pid is not None:
        die_with_parent(parent_pid)  # a killed `tune` takes its workers with it; their trials are retried on the next run
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker{worker} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    tune_worker(tune, base, out, train_group, worker, callbacks)


def run_workers(tune: TuneConfig, base: StudentConfig, out: Path, train_group: Callable[..., list[dict[str, Any]]],
                callbacks: Callable[[list[Any]], list[Callback]] | None = None) -> dict[str, Any]:
    """`tune.workers` processes on the one study (one in this process when it is 1), then the study's outputs.

    A worker that dies leaves running trials behind; once every worker has ended, those are reaped after
    `grace_s` and the budget is finished here, so the command's outputs are whole either way."""
    import multiprocessing

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(tune, base.selection, out)  # created once, before the workers attach
    if tune.workers <= 1:
        tune_worker(tune, base, out, train_group, 0, callbacks)
    else:
        ctx = multiprocessing.get_context("spawn")
        from sibeatgan.procs import stop_processes

        procs = [ctx.Process(target=_worker_main, args=(tune, base, out, train_group, i, logging.getLogger().level, callbacks, os.getpid()),
                             name=f"tune-worker-{i}")
                 for i in range(tune.workers)]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        except BaseException:  # SIGTERM (sibeatgan.procs.Terminated), Ctrl-C or an error here: the workers stop too
            stop_processes([p for p in procs if p.pid is not None])
            raise
        dead = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
        if dead:
            log.warning("workers that did not end cleanly: %s", ", ".join(f"{n} (exit {c})" for n, c in dead))
    done, running, _ = _finished(study)
    if running or done < tune.n_trials:
        if running:
            log.warning("%d trial(s) still marked running by a dead worker: retrying them after the %.0f s grace", running, tune.grace_s)
            time.sleep(tune.grace_s)
        tune_worker(tune, base, out, train_group, tune.workers, callbacks)
    return write_outputs(tune, base, out)

