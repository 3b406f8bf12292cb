"""The check before a cluster: the whole pipeline in the project's image, through kfp's DockerRunner, to a model
registered under alias `staging` on an MLflow server that also runs from the image (basic-auth, NO_PERMISSIONS).

    python scripts/pipeline_in_image.py --image localhost/sibeatgan:0.1.0-abc --out runs/pipeline-in-image

What it does, in order (each step timed into OUT/timings.json):
1. `podman system service` on OUT/podman.sock: the Docker API kfp's DockerRunner talks to (DOCKER_HOST).
2. MLflow from the image (`mlflow server --app-name basic-auth`, default permission NO_PERMISSIONS, SQLite store
   and artifacts in OUT/mlflow) on 127.0.0.1, host network.
3. infra/base/mlflow-users.py in the image, as the admin: the pipeline's own user, EDIT on the experiment and
   model only; then, as that user, a run is logged and another experiment is checked to be out of its reach.
4. The pipeline on synthetic data, every task a container of the image (kfp.local.DockerRunner), logging in
   as the pipeline user; then the `staging` alias is read back.
Everything it started is stopped at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN, PIPELINE_USER = "admin", "sibeatgan-pipeline"
# the image's user; 0 for an image built before podman-base.sh made its / world-readable
USER = os.environ.get("SIBEATGAN_CONTAINER_USER", "10001")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ok, timeout: float, proc: subprocess.Popen | None = None) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"pipeline-in-image: {what} exited with {proc.returncode} before it answered")
        try:
            if ok():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise SystemExit(f"pipeline-in-image: {what} did not answer within {timeout:.0f} s")


class Stack:
    """What this script starts, stopped in reverse order."""

    def __init__(self) -> None:
        self.stops: list = []

    def close(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as err:  # noqa: BLE001 - stop the others anyway
                print(f"pipeline-in-image: stopping: {err}", file=sys.stderr)


def podman(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, text=True, **kw)


def start_podman_service(out: Path, stack: Stack) -> str:
    sock = out / "podman.sock"
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=(out / "podman-service.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

    stack.stops.append(stop)
    host = f"unix://{sock}"
    import docker

    wait_for("podman system service", lambda: docker.DockerClient(base_url=host).ping(), 60, proc)
    return host


def start_mlflow(image: str, out: Path, port: int, admin_password: str, stack: Stack) -> str:
    data = out / "mlflow"
    # a fresh store: an old basic_auth.db keeps the admin password of an earlier run (then every call is 401)
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    os.chown(data, 10001, 10001)  # the image's user owns the store
    (data / "basic_auth.ini").write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                                         "database_uri = sqlite:////mlflow/basic_auth.db\nadmin_username = admin\n")
    name = f"sibeatgan-mlflow-{port}"
    podman("run", "-d", "--rm", "--name", name, "--network", "host", "--user", USER, "-v", f"{data}:/mlflow",
           "-e", "MLFLOW_AUTH_CONFIG_PATH=/mlflow/basic_auth.ini", "-e", f"MLFLOW_AUTH_ADMIN_PASSWORD={admin_password}",
           "-e", f"MLFLOW_FLASK_SERVER_SECRET_KEY={secrets.token_hex(16)}",
           image, "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", "sqlite:////mlflow/mlflow.db", "--serve-artifacts", "--artifacts-destination", "/mlflow/artifacts",
           stdout=subprocess.DEVNULL)

    def stop() -> None:
        with (out / "mlflow-server.log").open("w") as log:
            podman("logs", name, check=False, stdout=log, stderr=subprocess.STDOUT)
        podman("rm", "-f", "-t", "10", name, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    stack.stops.append(stop)
    url = f"http://127.0.0.1:{port}"
    wait_for("the MLflow server", lambda: urllib.request.urlopen(f"{url}/health", timeout=5).status == 200, 300)
    return url


def create_pipeline_user(image: str, url: str, admin_password: str, password: str, experiment: str, model: str) -> str:
    script = ROOT / "infra" / "base" / "mlflow-users.py"
    proc = podman("run", "--rm", "--network", "host", "--user", USER, "-v", f"{script}:/scripts/mlflow-users.py:ro",
                  "-e", f"MLFLOW_TRACKING_URI={url}", "-e", f"MLFLOW_TRACKING_USERNAME={ADMIN}",
                  "-e", f"MLFLOW_TRACKING_PASSWORD={admin_password}", "-e", f"PIPELINE_USERNAME={PIPELINE_USER}",
                  "-e", f"PIPELINE_PASSWORD={password}", "-e", f"MLFLOW_EXPERIMENT_NAME={experiment}",
                  "-e", f"SIBEATGAN_MODEL_NAME={model}", image, "python", "/scripts/mlflow-users.py", capture_output=True,
                  check=False)
    if proc.returncode != 0:  # its own message, not the command line (which holds both passwords)
        raise SystemExit(f"pipeline-in-image: mlflow-users.py failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def check_permissions(url: str, admin_password: str, password: str, experiment: str) -> dict:
    """As the pipeline user: a run in the project's experiment works; another experiment is refused (403)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=admin_password)
        admin = MlflowClient(url)
        other = admin.get_experiment_by_name("admin-only") or admin.get_experiment(admin.create_experiment("admin-only"))
        os.environ.update(MLFLOW_TRACKING_USERNAME=PIPELINE_USER, MLFLOW_TRACKING_PASSWORD=password)
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(experiment)
        run = client.create_run(exp.experiment_id, run_name="pipeline-user-check")
        client.log_param(run.info.run_id, "check", "pipeline user can log")
        client.log_metric(run.info.run_id, "ok", 1.0)
        client.set_terminated(run.info.run_id)
        try:
            client.create_run(other.experiment_id)
            refused = False
        except MlflowException as err:
            refused = err.get_http_status_code() == 403
        listed = sorted(e.name for e in client.search_experiments())
        from mlflow.server import get_app_client

        try:
            get_app_client("basic-auth", tracking_uri=url).create_user("intruder", "intruder-password-1")
            can_admin = True
        except MlflowException:
            can_admin = False
        return {"logged_run": run.info.run_id, "other_experiment_refused": refused, "experiments_visible": listed,
                "pipeline_user_can_create_users": can_admin}
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def run_pipeline(image: str, docker_host: str, url: str, password: str, out: Path, args: argparse.Namespace) -> dict:
    os.environ["SIBEATGAN_IMAGE"] = image  # compile-time: every component's base_image
    os.environ["DOCKER_HOST"] = docker_host
    sys.path.insert(0, str(ROOT))
    import docker
    import docker.client
    from kfp import local

    # kfp's task handler calls docker.from_env() with the SDK's 60 s timeout; on vfs storage creating a container
    # copies the whole image (minutes on a busy machine), so the create call needs longer.
    docker.client.DEFAULT_TIMEOUT_SECONDS = int(os.environ.get("DOCKER_CLIENT_TIMEOUT", "1200"))
    from components import IMAGE

    assert IMAGE == image, (IMAGE, image)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    runner = local.DockerRunner(
        network_mode="host",  # the MLflow server on 127.0.0.1
        user=f"{os.getuid()}:{os.getgid()}",  # kfp.local writes the task folders as this user; the tasks write into them
        environment={"MLFLOW_TRACKING_USERNAME": PIPELINE_USER, "MLFLOW_TRACKING_PASSWORD": password, "HOME": "/tmp",
                     "OMP_NUM_THREADS": str(args.threads), "SIBEATGAN_GIT_COMMIT": commit},
        # kfp mounts only the pipeline root; checkpoints and the Optuna journal are beside it, under OUT
        mounts=[docker.types.Mount(target=str(out), source=str(out), type="bind")],
    )
    exit_codes = exact_exit_codes()
    from pipelines.local import run_pipeline_local

    summary = run_pipeline_local(out=out / "run", folds=(0,), seeds=(0,), epochs=args.epochs, device="cpu", trials=args.trials,
                              workers=args.workers, members_per_worker=1, tune_epochs=1, student_epochs=args.student_epochs,
                              mlflow_uri=url, runner=runner)
    failed = [c for c in exit_codes if c["exit_code"] != 0]
    if failed:  # kfp would have raised already; a belt to its braces
        raise SystemExit(f"pipeline-in-image: {len(failed)} task container(s) exited non-zero: {failed}")
    summary["containers"] = exit_codes
    return summary


def exact_exit_codes() -> list[dict]:
    """Make kfp's DockerRunner report each task's real exit code; returns the list it appends to.

    kfp 2.17's run_docker_container starts the container with auto_remove=True, so a container that exits before
    wait() is already gone, and kfp then returns 0: a failed task read as SUCCESS (seen here: `synth` failed with
    ModuleNotFoundError and the run stopped one task later on its missing output). This one keeps the container
    until wait() has its exit code, then removes it.
    """
    import docker
    from kfp.local import docker_task_handler as handler

    codes: list[dict] = []

    def run_docker_container(client, image: str, command: list, volumes: dict, **run_args) -> int:
        image = handler.add_latest_tag_if_not_present(image=image)
        if not any(image in (i.tags + i.attrs["RepoDigests"]) for i in client.images.list()):
            raise SystemExit(f"pipeline-in-image: image {image} is not in podman's store")
        start = time.monotonic()
        container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                          volumes=volumes, **{k: v for k, v in run_args.items() if k != "auto_remove"})
        created = time.monotonic() - start
        try:
            for line in container.logs(stream=True):
                print(line.decode(errors="replace"), end="")
            code = container.wait()["StatusCode"]
        finally:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        fn = command[command.index("--function_to_execute") + 1] if "--function_to_execute" in command else image
        codes.append({"task": fn, "exit_code": code, "create_s": round(created, 1),
                      "total_s": round(time.monotonic() - start, 1)})
        print(f"pipeline-in-image: task {fn}: exit code {code}, container created in {created:.1f} s, "
              f"{time.monotonic() - start:.1f} s in all", file=sys.stderr, flush=True)
        return code

    handler.run_docker_container = run_docker_container
    return codes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/pipeline-in-image"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--student-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS in each task (bench/pipeline.md: 1 on a busy CPU)")
    ap.add_argument("--server-only", action="store_true", help="steps 1-3 only: the server, its users and a logged run")
    args = ap.parse_args()
    for tool in ("podman",):
        if shutil.which(tool) is None:
            raise SystemExit(f"pipeline-in-image: {tool} is not installed (scripts/podman-base.sh installs it)")
    if podman("image", "exists", args.image, check=False).returncode != 0:
        raise SystemExit(f"pipeline-in-image: no image {args.image} here (scripts/build-image.sh --cpu builds one)")
    # The components ship only their bodies; they import sibeatgan from the image: it must be this checkout's.
    rev = podman("image", "inspect", args.image, "--format", '{{index .Labels "org.opencontainers.image.revision"}}',
                 capture_output=True).stdout.strip()
    if rev and subprocess.run(["git", "diff", "--quiet", rev, "--", "sibeatgan", "pyproject.toml", "requirements.lock"],
                              cwd=ROOT).returncode != 0:
        raise SystemExit(f"pipeline-in-image: {args.image} was built from {rev[:12]}, and sibeatgan/ has changed since: "
                         "rebuild it (scripts/build-image.sh --cpu)")
    out = args.out.expanduser().resolve()
    if (out / "run").exists():
        shutil.rmtree(out / "run")
    out.mkdir(parents=True, exist_ok=True)
    admin_password, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    experiment, model = "si-beatgan", "si-beatgan"
    timings: dict[str, float] = {}
    report: dict = {"image": args.image, "timings_s": timings}
    stack = Stack()
    t0 = time.monotonic()

    def lap(name: str, start: float) -> float:
        timings[name] = round(time.monotonic() - start, 1)
        print(f"pipeline-in-image: {name}: {timings[name]} s", flush=True)
        return time.monotonic()

    try:
        t = time.monotonic()
        docker_host = start_podman_service(out, stack)
        t = lap("podman service", t)
        url = start_mlflow(args.image, out, free_port(), admin_password, stack)
        t = lap("mlflow server from the image (basic-auth) answers", t)
        report["mlflow_users"] = create_pipeline_user(args.image, url, admin_password, password, experiment, model)
        print(report["mlflow_users"], end="")
        t = lap("pipeline user created (in the image)", t)
        report["permissions"] = check_permissions(url, admin_password, password, experiment)
        print(f"pipeline-in-image: as {PIPELINE_USER}: {report['permissions']}")
        t = lap("run logged as the pipeline user", t)
        if not args.server_only:
            summary = run_pipeline(args.image, docker_host, url, password, out, args)
            t = lap("pipeline in the image (DockerRunner)", t)
            os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=admin_password)
            from mlflow import MlflowClient

            staged = MlflowClient(url).get_model_version_by_alias(model, "staging")
            report["registered"] = {"name": model, "version": staged.version, "run_id": staged.run_id,
                                    "image_tag": MlflowClient(url).get_run(staged.run_id).data.tags.get("image")}
            report["teachers"] = summary.get("runs")
            report["containers"] = summary.get("containers")
            print(f"pipeline-in-image: {model} version {staged.version} has alias staging")
        timings["total"] = round(time.monotonic() - t0, 1)
        report["ok"] = True
    finally:
        stack.close()
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"pipeline-in-image: report in {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
