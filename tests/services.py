"""Real services for the MLflow tests: PostgreSQL, a moto S3 server and an `mlflow server` with basic-auth.

Each is started once per session (in temp folders, on free local ports) and stopped at session end;
`stop()` waits for every process and the session checks that none is left. Use from a test module with
`pytest_plugins = ["tests.services"]` and the `mlflow_server` fixture (or `mlflow_env`, which also points
the client at it through the environment: credentials only ever travel as MLFLOW_TRACKING_USERNAME/PASSWORD).
"""

from __future__ import annotations

import glob
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ADMIN_USER = "admin"
BUCKET = "mlflow-artifacts"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path | None:
    """The PostgreSQL binaries folder (Debian's /usr/lib/postgresql/<major>/bin), or None when absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 etc.)
        except OSError:
            time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s\n{tail}")


def _stop(proc: subprocess.Popen | None, timeout: float = 5) -> None:
    """SIGTERM the process group the service runs in, then SIGKILL if it lingers; waits for it."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


@dataclass
class Postgres:
    """A throwaway cluster: initdb as the postgres user into a temp folder, listening on 127.0.0.1:port."""

    root: Path
    port: int = field(default_factory=free_port)
    bin: Path = field(default_factory=lambda: pg_bin() or Path("/nonexistent"))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        run = lambda *cmd: subprocess.run(self._as_owner(*cmd), check=True, capture_output=True, text=True)  # noqa: E731
        run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"), "-w", "start")
        for db in ("mlflow", "mlflow_auth"):
            run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", db)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
                           capture_output=True, check=False)


@dataclass
class Moto:
    """`moto_server` in its own process: the S3 artifact store."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        log = self.root / "moto.log"
        self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _wait_http(self.url, 30, self.proc, log)

    def s3(self):  # noqa: ANN201 - a boto3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **{k.lower(): v for k, v in S3_ENV.items() if k != "AWS_DEFAULT_REGION"},
                            region_name=S3_ENV["AWS_DEFAULT_REGION"])

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class MlflowServer:
    """`mlflow server` on PostgreSQL, artifacts proxied to s3://BUCKET on moto, `--app-name basic-auth`."""

    root: Path
    pg: Postgres
    moto: Moto
    admin_password: str = "admin-password-1234"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))  # CSRF key, the same across restarts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of a client of this server, as an admin."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": ADMIN_USER,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_S3_ENDPOINT_URL": self.moto.url,
            **S3_ENV,
        }

    def start(self) -> None:
        auth_ini = self.root / "basic_auth.ini"
        if not auth_ini.exists():
            auth_ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {self.pg.url('mlflow_auth')}\n"
                f"admin_username = {ADMIN_USER}\nadmin_password = {self.admin_password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "auth_cache_ttl_seconds = 60\n"  # one PBKDF2 check per user and minute, not one per request
            )
        env = {
            **os.environ,
            **S3_ENV,
            "MLFLOW_S3_ENDPOINT_URL": self.moto.url,
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
        log = self.root / "mlflow-server.log"
        self.proc = subprocess.Popen(
            [*cmd, "server", "--backend-store-uri", self.pg.url("mlflow"), "--artifacts-destination", f"s3://{BUCKET}/",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", "--app-name", "basic-auth"],
            stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True,
        )
        _wait_http(f"{self.url}/health", 120, self.proc, log)

    def stop(self) -> None:
        _stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_user(self, username: str, password: str) -> None:
        """A second user, through the auth API (as the admin)."""
        from mlflow.server.auth.client import AuthServiceClient

        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN_USER, MLFLOW_TRACKING_PASSWORD=self.admin_password)
        try:
            AuthServiceClient(self.url).create_user(username, password)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@dataclass
class Services:
    pg: Postgres
    moto: Moto
    mlflow: MlflowServer

    def stop(self) -> None:
        for svc in (self.mlflow, self.moto, self.pg):
            try:
                svc.stop()
            except Exception as err:  # noqa: BLE001 - stop the others anyway
                print(f"stopping {type(svc).__name__}: {err}", file=sys.stderr)


@pytest.fixture(scope="session")
def mlflow_services() -> Services:
    """PostgreSQL + moto + `mlflow server --app-name basic-auth`, started once, stopped at session end."""
    if pg_bin() is None or not (pg_bin() / "pg_ctl").exists():
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are absent: apt-get install postgresql")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root but there is no postgres user to run initdb as")
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("flask_wtf", reason="mlflow[auth] is not installed (basic-auth needs Flask-WTF)")
    root = Path(tempfile.mkdtemp(prefix="sibeatgan-services-"))
    os.chmod(root, 0o755)
    pg = Postgres(root / "pg")
    moto = Moto(root)
    server = MlflowServer(root, pg, moto)
    services = Services(pg, moto, server)
    try:
        pg.start()
        moto.start()
        moto.s3().create_bucket(Bucket=BUCKET)
        server.start()
        yield services
    finally:
        services.stop()
        left = [p for p in (moto.proc, server.proc) if p is not None and p.poll() is None]
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"service processes still running: {[p.args for p in left]}"
        assert not (pg.data / "postmaster.pid").exists(), "PostgreSQL is still running"


@pytest.fixture(scope="session")
def mlflow_server(mlflow_services: Services) -> MlflowServer:
    return mlflow_services.mlflow


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """Point MLflow clients at the test server (as the admin) for one test."""
    for key, value in mlflow_server.env().items():
        monkeypatch.setenv(key, value)
    return mlflow_server


@pytest.fixture(scope="session")
def small_teacher(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small teacher (4 epochs, as tests/test_teacher.py finds AUC > 0.9 with) on the synthetic dataset, and its evaluation."""
    from sibeatgan.config import EvaluateConfig, TeacherConfig
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.train.teacher import run_train_teacher

    from sibeatgan.tracking import Tracker

    root = tmp_path_factory.mktemp("small_teacher")
    conf = TeacherConfig(epochs=4, nz=16, ngf=8, ndf=8, lr=1e-3, selection="paper", device="cpu", cuda_graph=False,
                         eval_batch_size=1024)
    tracker = Tracker(root / "tracking", f"sqlite:///{root / 'mlruns.db'}", "teacher", run_name="train-teacher").start()
    run_train_teacher(conf, synth_dataset, root / "train", callbacks=[tracker])  # the training loop drives the tracker
    assert tracker.finish()
    run_evaluate(EvaluateConfig(n_bootstrap=50, device="cpu", batch_size=1024), synth_dataset, root / "train", root / "eval")
    return {"dataset": synth_dataset, "train": root / "train", "generator": root / "train" / "generator.pt", "eval": root / "eval",
            "tracking_uri": tracker.uri, "run_id": tracker.run_id}


@pytest.fixture(scope="session")
def untrained_teacher(small_teacher: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same generator architecture with its initial weights (a real, worse model) and its evaluation."""
    import torch

    from sibeatgan.config import EvaluateConfig
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.models import Generator
    from sibeatgan.modelio import load_generator, save_generator

    root = tmp_path_factory.mktemp("untrained_teacher")
    gen, meta = load_generator(small_teacher["generator"])
    torch.manual_seed(1)
    fresh = Generator(**meta["hparams"])
    save_generator(root / "generator.pt", fresh, **{k: v for k, v in meta.items() if k != "hparams"})
    run_evaluate(EvaluateConfig(n_bootstrap=50, device="cpu", batch_size=1024), small_teacher["dataset"], root / "generator.pt", root / "eval")
    return {"dataset": small_teacher["dataset"], "generator": root / "generator.pt", "eval": root / "eval"}
