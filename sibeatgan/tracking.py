"""MLflow tracking for any step, local first: every call is journaled in the step's output folder, then sent.

A `Tracker` is one MLflow run. Params, per-epoch metrics (`on_epoch_end(epoch, row)`, the training loop's
callback), tags, artifacts and dataset lineage are appended to `<local_dir>/journal.jsonl` before they are
sent, and `state.json` records how far the server has them. A server that is away (at start, or restarted
mid-run) never fails the step: what is unsent stays in the journal, is retried at each flush and at the end,
and a clear warning names the journal; `sync(local_dir)` (CLI `sibeatgan track-sync`) sends it later.
Optuna: `study_run` makes a study's parent run, `trial_run` a nested child per trial (process-safe: each
trial has its own journal and talks to the server through MlflowClient, with no global active run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from sibeatgan.errors import ConfigError, redact_url
from sibeatgan.files import write_json

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "si-beatgan"
TRIAL_STATES = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
_MAX_PARAMS, _MAX_METRICS = 100, 1000  # per log_batch request (MLflow's limits)


STORE_ENV = "MLFLOW_TRACKING_URI"


def default_store() -> str:
    """The one local store every command uses when no URI is configured: `runs/mlflow.db` under the working
    directory (artifacts beside it in `runs/mlartifacts`); the CLI exports it as $MLFLOW_TRACKING_URI, so the
    steps, the local pipeline, `promote` and `score` all find the same registry."""
    return f"sqlite:///{Path('runs').resolve() / 'mlflow.db'}"


def ensure_store(uri: str) -> str:
    """A local SQLite store's folder exists before MLflow opens it (MLflow creates the file, not its folder)."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def tracking_uri(config: Any = None) -> str:
    """The configured URI (the tracking section), else $MLFLOW_TRACKING_URI, else `default_store()`."""
    return getattr(config, "tracking_uri", None) or os.environ.get(STORE_ENV) or default_store()


def client_env(http_timeout_s: float = 15, http_retries: int = 1) -> None:
    """Telemetry off and short HTTP timeouts/retries (unless the user set them): a step learns in seconds that the
    server is away, and our own retries (with the journal) take over from MLflow's minutes of backoff."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(http_timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


_SECRET_KEY = re.compile(r"(password|passwd|secret|token|access_key|api_key)$", re.I)


def redact(key: str, value: str) -> str:
    """A param or tag value fit for MLflow: no password in a URL (`postgresql://optuna:***@host/db`), and nothing
    at all under a key that names a secret. Every user of the tracking server can read params and tags."""
    if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in ("", "None"):
        return "***"
    return redact_url(value)


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def check_credentials(uri: str) -> None:
    """An HTTP tracking server gets both basic-auth variables or neither: one alone is a broken secret, named here."""
    if not str(uri).startswith(("http://", "https://")):
        return
    have = [n for n in CREDENTIALS if os.environ.get(n)]
    if len(have) == 1:
        (missing,) = set(CREDENTIALS) - set(have)
        raise ConfigError(f"MLflow at {uri}: {missing} is not set, {have[0]} is (on a cluster: Secret sibeatgan-mlflow)")


def _auth_refused(err: Exception) -> int | None:
    """401 or 403 when the server refused who we are (which retrying cannot fix), else None."""
    status = getattr(err, "get_http_status_code", None)
    code = status() if callable(status) else None
    return code if code in (401, 403) else None


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A (nested) config or dict as flat MLflow params: `{"teacher.lr": "0.0001", "records": "100,101"}`, redacted."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    elif hasattr(data, "model_dump"):
        data = data.model_dump()
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix.rstrip(".")
    out[key] = redact(key, ",".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data))
    return out


def run_tags(device: str | None = None, protocol: str | None = None, **extra: Any) -> dict[str, str]:
    """Provenance tags: git commit, package version, container image (env SIBEATGAN_IMAGE), device, protocol."""
    from importlib.metadata import PackageNotFoundError, version

    commit = os.environ.get("SIBEATGAN_GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                    text=True, timeout=5, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    try:
        pkg = version("sibeatgan")
    except PackageNotFoundError:
        pkg = "unknown"
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit, "sibeatgan_version": pkg,
            "image": os.environ.get("SIBEATGAN_IMAGE", "unknown")}
    if device:
        tags["device"] = str(device)
    if protocol:
        tags["protocol"] = str(protocol)
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


class Tracker:
    """One MLflow run, journaled locally first and sent with retries; never raises because of the server."""

    def __init__(self, local_dir: str | Path, uri: str, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tags: dict[str, str] | None = None, parent_run_id: str | None = None, retries: int = 3,
                 backoff_s: float = 1.0, http_timeout_s: float = 15.0, artifact_location: str | None = None) -> None:
        self.dir = Path(local_dir)
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.retries, self.backoff_s, self.http_timeout_s = retries, backoff_s, http_timeout_s
        self.artifact_location = artifact_location
        self.journal, self.state_path = self.dir / "journal.jsonl", self.dir / "state.json"
        self.state: dict[str, Any] = {"uri": uri, "experiment": experiment, "run_name": run_name, "parent_run_id": parent_run_id,
                                      "run_id": None, "sent": 0}
        self._tags = dict(tags or {})
        if parent_run_id:
            self._tags["mlflow.parentRunId"] = parent_run_id
        self._ops: list[dict[str, Any]] = []
        self._warned = False
        self._client: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, local_dir: str | Path, uri: str | None = None, **kwargs: Any) -> Tracker:
        """A tracker over an existing journal (to send what is still unsent)."""
        local = Path(local_dir)
        state = json.loads((local / "state.json").read_text())
        t = cls(local, uri or state["uri"], state["experiment"], state["run_name"], parent_run_id=state.get("parent_run_id"), **kwargs)
        t.state.update({k: state[k] for k in ("run_id", "sent")})
        if uri and uri != state["uri"]:
            t.state.update(run_id=None, sent=0)  # another server: the whole journal goes to a new run
        t._ops = _read_journal(t.journal)
        return t

    @classmethod
    def attach(cls, local_dir: str | Path, uri: str, run_id: str, experiment: str = DEFAULT_EXPERIMENT) -> Tracker:
        """A started tracker that adds to an existing run (e.g. the study's run, ended after the search)."""
        t = cls(local_dir, uri, experiment)
        t.state["run_id"] = run_id
        return t.start()

    def start(self) -> Tracker:
        """Open the journal and try to create the run; a server that is away only delays sending, one that refuses
        the credentials (or half of them set) fails the step here, at its start, in one line.

        A journal already in `local_dir` (a resumed training, a rerun step) is kept and continued, sent or not: the
        same run on the same server; on another server the whole journal goes to a new run there."""
        check_credentials(self.uri)
        client_env(self.http_timeout_s)
        self.dir.mkdir(parents=True, exist_ok=True)
        old = json.loads(self.state_path.read_text()) if self.journal.exists() and self.state_path.exists() else {}
        if self.journal.exists() and old.get("parent_run_id") != self.state["parent_run_id"] and old.get("run_id"):
            # another pipeline run resumed this training (content-keyed checkpoints): its run is a new one, under the new
            # parent; the earlier run keeps its own journal (renamed) and stays under its own pipeline run
            kept = self.dir / f"journal-{old['run_id']}.jsonl"
            self.journal.rename(kept)
            log.info("tracking: %s belongs to run %s of another pipeline run (kept as %s); this one starts a new run",
                     self.journal, old["run_id"], kept.name)
        if self.journal.exists():
            self._ops = _read_journal(self.journal)
            if old.get("run_id") and old.get("uri") == self.uri:
                self.state.update(run_id=old["run_id"], sent=min(int(old.get("sent", 0)), len(self._ops)))
            if self._ops:
                log.info("tracking: continuing the journal %s (%d record(s), %d unsent)", self.journal, len(self._ops), self.pending)
        self._save_state()
        self._append({"op": "tags", "data": self._tags})
        self.flush(at_start=True)
        return self

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")

    @property
    def run_id(self) -> str | None:
        return self.state["run_id"]

    @property
    def pending(self) -> int:
        return len(self._ops) - self.state["sent"]

    # -- what a step logs ------------------------------------------------------------------------------------
    def log_params(self, params: Any) -> None:
        """A typed config or a (nested) dict, flattened to `a.b` keys."""
        self._append({"op": "params", "data": flatten(params)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._append({"op": "tags", "data": {k: redact(k, str(v)) for k, v in tags.items()}})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self._append({"op": "metrics", "data": values, "step": int(step or 0), "ts": int(time.time() * 1000)})

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """Training-loop callback: the trained config as params, the dataset and split as lineage, the protocol as a tag."""
        if info.get("config"):
            self.log_params(flatten(info["config"], "model."))
        if info.get("dataset_hash"):
            self.log_dataset(info["dataset_hash"], info.get("split_hash"), context="training")
        self.set_tags({k: info[k] for k in ("protocol", "fold", "criterion", "members") if info.get(k) is not None})
        self.flush()

    def on_epoch_end(self, epoch: int, row: dict[str, Any] | list[dict[str, Any] | None], control: Any = None) -> None:
        """Per-epoch callback: every numeric value of the row at step `epoch`, then a send. The training loop's
        form (a list of member rows, None once a member stopped) logs one member as is, several as `m<k>.<key>`."""
        rows = row if isinstance(row, list) else [row]
        if len(rows) == 1:
            if rows[0] is not None:
                self.log_metrics({k: v for k, v in rows[0].items() if k != "epoch"}, step=epoch)
        else:
            self.log_metrics({f"m{k}.{key}": v for k, r in enumerate(rows) if r is not None for key, v in r.items() if key != "epoch"},
                             step=epoch)
        self.flush()

    def on_fit_end(self, result: dict[str, Any]) -> None:
        """Training-loop callback: the selected epoch and its metric and threshold."""
        self.log_metrics({k: result[k] for k in ("best_epoch", "best_metric", "threshold") if k in result})
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or folder already written locally (the local copy is the one kept if the upload fails)."""
        self._append({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_dataset(self, content_hash: str, split_hash: str | None = None, name: str = "beats", source: str = "",
                    context: str = "training", profile: dict[str, Any] | None = None) -> None:
        """Lineage: an MLflow dataset input whose digest is the content hash (first 32 hex, the column's width;
        the full hash is in its profile and the `dataset_hash` tag) with the split hash as an input tag."""
        self._append({"op": "input", "name": name, "digest": content_hash, "split_hash": split_hash, "source": source,
                      "context": context, "profile": profile or {}})
        self.set_tags({"dataset_hash": content_hash, **({"split_hash": split_hash} if split_hash else {})})

    def finish(self, status: str = "FINISHED") -> bool:
        """End the run; True when the server has everything, else a warning names the journal (nothing is lost)."""
        self._append({"op": "end", "status": status})
        return self.flush(final=True)

    # -- journal and sending ---------------------------------------------------------------------------------
    def _append(self, op: dict[str, Any]) -> None:
        self._ops.append(op)
        try:
            with open(self.journal, "a") as fh:
                fh.write(json.dumps(op) + "\n")
        except OSError as err:
            log.warning("tracking: cannot append to %s (%s); the op is kept in memory only", self.journal, err)

    def _save_state(self) -> None:
        try:
            write_json(self.state_path, self.state)
        except OSError as err:
            log.warning("tracking: cannot write %s (%s)", self.state_path, err)

    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=ensure_store(self.uri), registry_uri=self.uri)
        return self._client

    def _experiment_id(self) -> str:
        c = self.client()
        exp = c.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = self.artifact_location
        if location is None and self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            # the UI then opens it on its runs (model training), not on the GenAI traces overview
            return c.create_experiment(self.experiment, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:  # noqa: BLE001 - created meanwhile by another process
            exp = c.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _send(self, op: dict[str, Any]) -> None:
        from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

        c, run_id = self.client(), self.state["run_id"]
        kind = op["op"]
        if kind == "params":
            items = [Param(k, v[:6000]) for k, v in op["data"].items()]
            for i in range(0, len(items), _MAX_PARAMS):
                c.log_batch(run_id, params=items[i : i + _MAX_PARAMS], synchronous=True)
        elif kind == "tags":
            items = [RunTag(k, v) for k, v in op["data"].items()]
            for i in range(0, len(items), _MAX_PARAMS):
                c.log_batch(run_id, tags=items[i : i + _MAX_PARAMS], synchronous=True)
        elif kind == "metrics":
            items = [Metric(k, v, op["ts"], op["step"]) for k, v in op["data"].items()]
            for i in range(0, len(items), _MAX_METRICS):
                c.log_batch(run_id, metrics=items[i : i + _MAX_METRICS], synchronous=True)
        elif kind == "artifact":
            path = Path(op["path"])
            if not path.exists():
                log.warning("tracking: artifact %s no longer exists; skipped", path)
            elif path.is_dir():
                c.log_artifacts(run_id, str(path), op["artifact_path"])
            else:
                c.log_artifact(run_id, str(path), op["artifact_path"])
        elif kind == "input":
            from mlflow.entities import Dataset

            profile = json.dumps({"content_hash": op["digest"], "split_hash": op["split_hash"], **op["profile"]})
            ds = Dataset(name=op["name"], digest=op["digest"][:32], source_type="local", source=json.dumps({"uri": op["source"]}),
                         profile=profile)
            tags = [InputTag("mlflow.data.context", op["context"])]
            if op["split_hash"]:
                tags.append(InputTag("split_hash", op["split_hash"]))
            c.log_inputs(run_id, datasets=[DatasetInput(ds, tags)])
        elif kind == "end":
            c.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"unknown journal op {kind!r}")

    def _send_pending(self) -> None:
        if self.state["run_id"] is None:
            run = self.client().create_run(self._experiment_id(), run_name=self.run_name, tags={})
            self.state["run_id"] = run.info.run_id
            self._save_state()
            log.info("tracking: run %s in experiment %r at %s", run.info.run_id, self.experiment, self.uri)
        from mlflow.exceptions import MlflowException

        while self.state["sent"] < len(self._ops):
            op = self._ops[self.state["sent"]]
            try:
                self._send(op)
            except MlflowException as err:  # a record the server refuses for good (e.g. a param logged twice with another value)
                if err.error_code not in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"):
                    raise
                log.warning("tracking: %s refused a %s record for good (%s); skipped", self.uri, op["op"], str(err).splitlines()[0][:200])
            self.state["sent"] += 1
            self._save_state()

    def flush(self, final: bool = False, at_start: bool = False) -> bool:
        """Send what is unsent; with `final`, retry `retries` times with backoff, then warn. True when all is sent."""
        attempts = self.retries + 1 if final else 1
        for attempt in range(attempts):
            try:
                self._send_pending()
                if self._warned:
                    log.warning("tracking: %s is reachable again; the journal is sent (run %s)", self.uri, self.run_id)
                    self._warned = False
                return True
            except Exception as err:  # noqa: BLE001 - tracking never fails the step (but for credentials, at its start)
                code = _auth_refused(err) if at_start else None
                if code is not None:
                    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
                    who = f"user {user!r} (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)" if user else \
                        "no credentials: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are not set"
                    raise ConfigError(f"MLflow at {self.uri} refused {who} with HTTP {code} "
                                      "(on a cluster: Secret sibeatgan-mlflow and the user's permissions)") from None
                error = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                if attempt + 1 < attempts:
                    time.sleep(self.backoff_s * 2**attempt)
        if final or not self._warned:
            log.warning(
                "tracking: MLflow at %s did not take %d pending record(s) (%s); they are kept in %s and the step goes on; "
                "send them later with `sibeatgan track-sync %s`", self.uri, self.pending, error, self.journal, self.dir)
            self._warned = True
        return False


def _read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's records. A last line cut short by a kill mid-append is dropped and cut from the file, so what is
    appended next starts on a line of its own."""
    data = path.read_bytes()
    ops, good = [], 0
    for line in data.splitlines(keepends=True):
        if line.strip():
            try:
                ops.append(json.loads(line))
            except ValueError:  # not JSON, or cut inside a UTF-8 character
                if not line.endswith(b"\n"):
                    log.warning("tracking: the last line of %s was cut short (a killed process?); dropped", path)
                    break
                log.warning("tracking: %s holds a line that is not JSON; skipped", path)
        good += len(line)
    if good < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    elif data and not data.endswith(b"\n"):
        with open(path, "ab") as fh:
            fh.write(b"\n")
    return ops


def sync(local_dir: str | Path, uri: str | None = None, retries: int = 3) -> Tracker:
    """Send a journal's unsent records (to `uri`, or to the server it was meant for); returns the tracker."""
    t = Tracker.resume(local_dir, uri, retries=retries)
    client_env(t.http_timeout_s)
    t.flush(final=True)
    return t


def step_tracker(config: Any, out: str | Path, step: str, run_name: str | None = None, tags: dict[str, Any] | None = None,
                 parent_run_id: str | None = None, params: Any = None) -> Tracker:
    """The tracker of a step writing into `out`: journal in `out/tracking/`; params = `params` (the step's typed
    config) when given, else `config`, as `<step>.*`; `config` also gives the URI and experiment."""
    out = Path(out)
    t = Tracker(out / "tracking", tracking_uri(config), getattr(config, "experiment", None) or DEFAULT_EXPERIMENT,
                run_name or step, tags={"step": step, **run_tags(), **{k: str(v) for k, v in (tags or {}).items()}},
                parent_run_id=parent_run_id or getattr(config, "parent_run_id", None))
    t.start()
    t.log_params(flatten(config if params is None else params, f"{step}."))
    return t


def study_run(uri: str, local_dir: str | Path, study_name: str, params: dict[str, Any] | None = None,
              experiment: str = DEFAULT_EXPERIMENT, tags: dict[str, Any] | None = None, parent_run_id: str | None = None) -> str | None:
    """The parent run of an Optuna study (create it once, in the process that creates the study, and pass its id
    to the workers, e.g. through `study.set_user_attr("mlflow_run_id", ...)`); None if the server is away."""
    t = Tracker(local_dir, uri, experiment, run_name=study_name, tags={"optuna.study": study_name, "step": "tune", **run_tags(),
                **{k: str(v) for k, v in (tags or {}).items()}}, parent_run_id=parent_run_id)
    t.start()
    if params:
        t.log_params(params)
    t.flush(final=True)
    return t.run_id


def trial_run(parent_run_id: str, uri: str, local_dir: str | Path, trial_number: int, params: dict[str, Any],
              experiment: str = DEFAULT_EXPERIMENT, tags: dict[str, Any] | None = None) -> Tracker:
    """A started tracker for one trial, nested under the study's run: call `on_epoch_end` each epoch and
    `end_trial(tracker, state)` with state complete, pruned or failed."""
    t = Tracker(local_dir, uri, experiment, run_name=f"trial-{trial_number}", parent_run_id=parent_run_id,
                tags={"optuna.trial": str(trial_number), **{k: str(v) for k, v in (tags or {}).items()}})
    t.start()
    t.log_params(params)
    return t


def end_trial(tracker: Tracker, state: str, value: float | None = None) -> bool:
    """Record a trial's state (complete -> FINISHED, pruned -> KILLED, failed -> FAILED) and its value."""
    if state not in TRIAL_STATES:
        raise ValueError(f"trial state {state!r} is not one of {', '.join(TRIAL_STATES)}")
    tracker.set_tags({"optuna.state": state})
    if value is not None:
        tracker.log_metrics({"objective": value})
    return tracker.finish(TRIAL_STATES[state])


def plot_reconstructions(generator: Any, beats: Any, labels: Any, scores: Any, path: str | Path, classes: tuple[str, ...] | None = None,
                         n: int = 3) -> Path:
    """A PNG of normal beats (median scores) and anomalous beats (highest scores), each with its reconstruction."""
    import numpy as np
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sibeatgan.data.artifact import CLASSES
    from sibeatgan.files import atomic_open

    classes = classes or CLASSES
    labels, scores = np.asarray(labels), np.asarray(scores)
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    normal = normal[np.argsort(scores[normal])][len(normal) // 2 - n // 2 :][:n]
    anomalous = anomalous[np.argsort(-scores[anomalous])][:n]
    rows = [r for r in (normal, anomalous) if len(r)]
    fig = Figure(figsize=(3.2 * n, 2.4 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), n, squeeze=False))
    for r, picks in enumerate(rows):
        x = torch.as_tensor(np.asarray(beats[picks], dtype=np.float32))
        with torch.inference_mode():
            rec = generator(x)[0].numpy()
        for c in range(n):
            ax = axes[r, c]
            if c >= len(picks):
                ax.axis("off")
                continue
            i = picks[c]
            ax.plot(x[c, 0].numpy(), color="k", lw=0.9, label="beat")
            ax.plot(rec[c, 0], color="tab:blue" if labels[i] == 0 else "tab:red", lw=0.9, label="reconstruction")
            ax.set_title(f"{classes[int(labels[i])]}: score {scores[i]:.3g}", fontsize=9)
            ax.set_xticks([])
        axes[r, 0].legend(fontsize=7, loc="lower left")
    FigureCanvasAgg(fig)
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=100)
    return Path(path)


class MemberTrials:
    """Training-loop callback for K batched members, each an Optuna trial: member k's rows go to `trackers[k]`
    (from `trial_run`); a member the loop stops is ended as pruned, the others as complete at the end."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.ended = [False] * len(trackers)

    def on_fit_start(self, info: dict[str, Any]) -> None:
        for k, t in enumerate(self.trackers):
            if info.get("member_configs"):
                t.log_params(flatten(info["member_configs"][k], "model."))
            if info.get("dataset_hash"):
                t.log_dataset(info["dataset_hash"], info.get("split_hash"), context="training")
            t.flush()

    def on_epoch_end(self, epoch: int, rows: list[dict[str, Any] | None], control: Any = None) -> None:
        for k, (t, row) in enumerate(zip(self.trackers, rows)):
            if row is not None and not self.ended[k]:
                t.on_epoch_end(epoch, row)
            stopped = control.stopped[k] if control is not None else None
            if stopped and not self.ended[k]:
                self.ended[k] = True
                end_trial(t, "pruned" if stopped == "pruned" else "failed")

    def on_fit_end(self, result: dict[str, Any]) -> None:
        members = result.get("members") or [result]
        for k, t in enumerate(self.trackers):
            if not self.ended[k]:
                self.ended[k] = True
                end_trial(t, "complete", members[k].get("best_metric") if k < len(members) else None)

    def fail(self) -> None:
        """End every member still open as failed (call when fit raises)."""
        for k, t in enumerate(self.trackers):
            if not self.ended[k]:
                self.ended[k] = True
                end_trial(t, "failed")


class TrialRuns:
    """For `sibeatgan.search.tune_worker(callbacks=...)`: each group of trials gets a MemberTrials callback whose
    trackers are child runs of the study's run. Picklable, so spawned worker processes take it along."""

    def __init__(self, uri: str, local_dir: str | Path, parent_run_id: str, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.uri, self.local_dir, self.parent_run_id, self.experiment = uri, Path(local_dir), parent_run_id, experiment

    def __call__(self, trials: list[Any]) -> list[MemberTrials]:
        return [MemberTrials([trial_run(self.parent_run_id, self.uri, self.local_dir / f"trial-{t.number}", t.number, t.params,
                                        self.experiment) for t in trials])]
