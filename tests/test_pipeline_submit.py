"""The cluster edge: the real `kfp run submit` against a loopback stand-in of the KFP v2beta1 REST API.

No Kubeflow backend runs here. The stand-in answers the calls kfp 2.17's CLI makes (healthz,
experiment lookup and creation, run creation, run read-back: kfp/client/client.py) and records them;
the test asserts the create-run request carries our compiled pipeline spec and the parameters given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
API = "/apis/v2beta1"
# What the `kfp` console script runs (kfp/cli/__main__.py has no __main__ guard, so `python -m kfp.cli` does nothing).
KFP = [sys.executable, "-c", "import sys; from kfp.cli.__main__ import main; sys.argv[0] = 'kfp'; main()"]


class StandIn(BaseHTTPRequestHandler):
    """Just enough of the KFP API server for `kfp run submit`; every request lands in `server.calls`."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        url = urlparse(self.path)
        call = {"method": self.command, "path": url.path, "query": parse_qs(url.query), "body": body}
        self.server.calls.append(call)  # type: ignore[attr-defined]
        return call

    def do_GET(self) -> None:
        call = self._record()
        runs = self.server.runs  # type: ignore[attr-defined]
        if call["path"] == f"{API}/healthz":
            self._send(200, {"multi_user": False})
        elif call["path"] == f"{API}/experiments":
            self._send(200, {"experiments": [], "total_size": 0})
        elif call["path"].startswith(f"{API}/runs/") and call["path"].rsplit("/", 1)[1] in runs:
            self._send(200, runs[call["path"].rsplit("/", 1)[1]])
        else:
            self._send(404, {"error": f"not in the stand-in: GET {call['path']}", "code": 5})

    def do_POST(self) -> None:
        call = self._record()
        body = call["body"] or {}
        if call["path"] == f"{API}/experiments":
            self._send(200, {**body, "experiment_id": "exp-1", "created_at": "2026-11-27T00:00:00Z", "storage_state": "AVAILABLE"})
        elif call["path"] == f"{API}/runs":
            run = {**body, "run_id": "run-1", "state": "PENDING", "created_at": "2026-11-27T00:00:00Z"}
            self.server.runs["run-1"] = run  # type: ignore[attr-defined]
            self._send(200, run)
        else:
            self._send(404, {"error": f"not in the stand-in: POST {call['path']}", "code": 5})


@pytest.fixture()
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.calls, server.runs = [], {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_kfp_run_submit_sends_our_spec_and_parameters(api: ThreadingHTTPServer, tmp_path: Path) -> None:
    package = ROOT / "pipelines" / "si_beatgan.yaml"
    selector = {"sibeatgan.io/node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    env = {**os.environ, "HOME": str(tmp_path)}  # the CLI keeps a context file under ~/.config/kfp
    env.pop("KUBECONFIG", None)
    proc = subprocess.run(
        [*KFP, "--endpoint", f"http://127.0.0.1:{api.server_port}", "run", "submit",
         "-e", "si-beatgan", "-r", "mitdb-folds-0-1", "-f", str(package),
         "source=s3://ecg/mitdb", "folds=[0, 1]", "seeds=[0, 1, 2]", "epochs=3", f"gpu_type={json.dumps(selector)}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = api.calls  # type: ignore[attr-defined]
    paths = [(c["method"], c["path"]) for c in calls]
    assert ("POST", f"{API}/experiments") in paths and ("GET", f"{API}/runs/run-1") in paths
    (create,) = [c for c in calls if (c["method"], c["path"]) == ("POST", f"{API}/runs")]
    body = create["body"]
    assert body["display_name"] == "mitdb-folds-0-1" and body["experiment_id"] == "exp-1"

    pipeline, platform = yaml.safe_load_all(package.read_text())
    assert body["pipeline_spec"] == {"pipeline_spec": pipeline, "platform_spec": platform}
    (lookup,) = [c for c in calls if (c["method"], c["path"]) == ("GET", f"{API}/experiments")]
    assert '"stringValue": "si-beatgan"' in lookup["query"]["filter"][0]
    assert body["runtime_config"]["parameters"] == {
        "source": "s3://ecg/mitdb", "folds": [0, 1], "seeds": [0, 1, 2], "epochs": 3, "gpu_type": selector}
    assert "run-1" in proc.stdout


def test_kfp_run_submit_refuses_a_bad_argument(api: ThreadingHTTPServer, tmp_path: Path) -> None:
    """A parameter without '=' stops the CLI before anything reaches the server's run endpoint."""
    proc = subprocess.run(
        [*KFP, "--endpoint", f"http://127.0.0.1:{api.server_port}", "run", "submit",
         "-e", "si-beatgan", "-f", str(ROOT / "pipelines" / "si_beatgan.yaml"), "epochs"],
        capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=120,
    )
    assert proc.returncode != 0 and "key=value" in proc.stderr
    assert not [c for c in api.calls if c["path"] == f"{API}/runs"]  # type: ignore[attr-defined]
