"""`python -m pipelines.local` (what scripts/run.sh runs): the real pipeline on kfp's local runner, end to end on tiny
settings; what it leaves in MLflow; the winner on validation; and its gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
TINY = """\
synth: {n_records: 4, duration_s: 120}
teacher: {max_train_beats: 64, cuda_graph: false}
student: {max_train_beats: 64, cuda_graph: false}
evaluate: {n_bootstrap: 20, plots: false}
"""


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


def _run(tmp_path: Path, config: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    (tmp_path / "tiny.yaml").write_text(config)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-m", "pipelines.local", "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu",
                           "-c", str(tmp_path / "tiny.yaml"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    return done, uri


@pytest.mark.slow
def test_pipeline_run_end_to_end_and_what_mlflow_shows(tmp_path: Path) -> None:
    """synth -> start-run -> ingest -> gates -> preprocess -> teacher (ParallelFor) -> evaluate -> study -> two Optuna workers
    (one journal) -> best config -> student and control -> evaluate both -> compare -> winner -> register (staging). A quiet
    console (one line per task, the rest in pipeline.log), and in MLflow: one parent run with every step's run under it, the
    training runs with per-epoch curves, the trials under the study (FINISHED, with its best value and plots), the comparison
    table, and the registered version linked to its run with the winner and margin in its tags."""
    done, uri = _run(tmp_path, TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "run"
    lines = done.stdout.splitlines()
    assert len(lines) < 40, f"a quiet console: {len(lines)} lines"
    for task in ("train-teacher", "tune-worker", "train-candidates", "pick-winner", "register"):
        assert any(line.strip().startswith(task) for line in lines), task
    assert "test AUC" in done.stdout and "registered si-beatgan version 1" in done.stdout
    leaked = [line for line in lines if "KFP Executor" in line or "Streamed logs" in line]
    assert not leaked and "[KFP Executor" in (out / "pipeline.log").read_text(), leaked[:3]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == ["101", "100", "106", "103"]
    (teacher_run,) = summary["runs"]
    assert (teacher_run["fold"], teacher_run["seed"]) == (0, 0) and 0.0 <= teacher_run["auc"] <= 1.0
    reg = summary["registered"]
    assert reg["kind"] in ("student", "control") and (reg["version"], reg["alias"]) == (1, "staging")

    kfp_root = out / "kfp"
    for gate in ("validate-records", "validate-beats"):
        assert "<html" in _one(kfp_root, f"si-beatgan-*/{gate}/report").read_text().lower()
    assert _one(out / "checkpoints", "teacher-f0-s0-*/checkpoint.pt").is_file(), "the teacher trained under checkpoint_root"
    evidence = json.loads((_one(kfp_root, "si-beatgan-*/pick-winner/evidence") / "evidence.json").read_text())
    assert evidence["winner"] == reg["kind"] and evidence["candidates"] == ["student", "control"]
    seeds = set()
    for name in ("student", "control"):
        model = _one(kfp_root, f"si-beatgan-*/train-candidates/{name}")
        card = json.loads((model / "model_card.json").read_text())
        seeds.add(card["seed"])
        assert card["kind"] == name and card["validation_metric"] == evidence["validation"][name]
        assert json.loads((model / "metrics.json").read_text())["history"][-1]["epoch"] == 2, "student_epochs, not tune_epochs"

    (seed,) = seeds  # the best trial's seed (each trial has its own), shared by the student and its control
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("si-beatgan")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development", "opens as model training, not GenAI"
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=200)}
    (parent,) = [r for r in runs.values() if r.data.tags.get("step") == "pipeline"]
    assert parent.info.status == "FINISHED" and parent.data.tags["registered_version"] == "1"
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    names = sorted(r.info.run_name for r in children)
    for wanted in ("teacher-f0-s0", f"student-f0-s{seed}", f"control-f0-s{seed}", "evaluate-teacher-s0", f"evaluate-student-s{seed}",
                   f"evaluate-control-s{seed}",
                   "compare-student-vs-control", "preprocess", "validate-records", "validate-beats"):
        assert wanted in names, f"{wanted} not among {names}"
    by_name = {r.info.run_name: r for r in children}
    for name in ("teacher-f0-s0", f"student-f0-s{seed}", f"control-f0-s{seed}"):
        history = client.get_metric_history(by_name[name].info.run_id, "val_normal_mse")
        assert len(history) >= 1 and by_name[name].info.status == "FINISHED", name
    assert len(client.get_metric_history(by_name[f"student-f0-s{seed}"].info.run_id, "val_normal_mse")) == 2, "one point per epoch"
    (study,) = [r for r in children if "optuna.study" in r.data.tags]
    assert study.info.status == "FINISHED" and "best_value" in study.data.metrics
    assert {a.path for a in client.list_artifacts(study.info.run_id, "plots")} >= {"plots/history.png"}
    trials = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in trials) == ["0", "1"], "each trial a child run of the study"
    assert all(r.info.status == "FINISHED" and "val_normal_mse" in r.data.metrics for r in trials)
    compare = by_name["compare-student-vs-control"]
    assert "table.txt" in {a.path for a in client.list_artifacts(compare.info.run_id)}

    staging = client.get_model_version_by_alias("si-beatgan", "staging")
    assert staging.run_id in runs and runs[staging.run_id].data.tags.get("mlflow.parentRunId") == parent.info.run_id
    assert staging.tags["winner"] == reg["kind"] and staging.tags["candidates"] == "student,control"
    assert float(staging.tags["margin"]) >= 0 and staging.tags["validation"] == "passed"
    assert staging.description.startswith(f"The {reg['kind']} won over the ") and "validation" in staging.description
    assert float(staging.tags["f1"]) == pytest.approx(json.loads((_one(kfp_root, "si-beatgan-*/pick-winner/evaluation") /
                                                                 "evaluation.json").read_text())["folds"]["0"]["operating"]["f1"], abs=1e-4)
    logged = {a.path for a in client.list_artifacts(staging.run_id, "evaluation")}
    assert {"evaluation/model_card.json", "evaluation/evidence.json", "evaluation/comparison.txt"} <= logged

    _ui_shows_the_runs(uri, tmp_path, experiment.experiment_id, parent.info.run_id, staging.version, seed)

    # No search: the teacher is registered and staging moves to it, in the same store.
    again, _ = _run(tmp_path, TINY, "--trials", "0")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["registered"]["kind"] == "teacher"
    staging = client.get_model_version_by_alias("si-beatgan", "staging")
    assert str(staging.version) == "2" and staging.tags["kind"] == "teacher"


def test_failing_gate_stops_the_run_before_training(tmp_path: Path) -> None:
    """Records at 250 Hz fail the record-level gate: the run fails there and no teacher task starts."""
    from pipelines.local import PipelineFailed, run_pipeline_local

    config = tmp_path / "bad.yaml"
    config.write_text("synth: {n_records: 2, duration_s: 90, fs: 250}\n")
    with pytest.raises(PipelineFailed, match="validate-records"):
        run_pipeline_local(tmp_path / "run", epochs=1, config=config, device="cpu", mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert list((tmp_path / "run" / "kfp").glob("si-beatgan-*/validate-records")), "the gate ran"
    assert not list((tmp_path / "run" / "kfp").rglob("train-teacher")), "no training after a failed gate"
    assert not list((tmp_path / "run" / "kfp").rglob("preprocess"))
    # the pipeline's MLflow run is not left RUNNING: FAILED, naming the task that failed
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("si-beatgan").experiment_id], filter_string="tags.step = 'pipeline'")
    assert parent.info.status == "FAILED" and parent.data.tags["failed_task"] == "validate-records", parent.data.tags
    assert "validate-records" in parent.data.tags["error"]


def _ui_shows_the_runs(uri: str, tmp_path: Path, experiment_id: str, parent_id: str, version: str, seed: int) -> None:
    """`mlflow ui` on the store the run wrote, in headless Chromium: the parent run with its step runs nested under it, and
    the registered version with its winner tag."""
    import shutil

    from tests.services import _stop, _wait_http, free_port

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if chromium is None:
        pytest.skip("no Chromium binary (apt-get install chromium)")
    port, log = free_port(), tmp_path / "ui.log"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, 120, proc, log)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(90_000)
                body = page.locator("body")
                page.goto(f"{url}/#/experiments/{experiment_id}/runs/{parent_id}")  # its child runs are listed on it
                for text in ("registered_version", "teacher-f0-s0", f"student-f0-s{seed}", f"control-f0-s{seed}", "compare-student-vs-control"):
                    sync_api.expect(body).to_contain_text(text, timeout=90_000)
                page.screenshot(path=str(tmp_path / "parent.png"), full_page=True)
                page.goto(f"{url}/#/experiments/{experiment_id}/runs")
                for text in ("Training runs", "matching runs"):  # opened as a model-training experiment, not a GenAI one
                    sync_api.expect(body).to_contain_text(text, timeout=90_000)
                page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)
                page.goto(f"{url}/#/models/si-beatgan/versions/{version}")
                for text in ("winner", "margin", "staging"):
                    sync_api.expect(body).to_contain_text(text, timeout=90_000)
                page.screenshot(path=str(tmp_path / "version.png"), full_page=True)
            finally:
                browser.close()
    finally:
        _stop(proc)
    for shot in ("parent.png", "runs.png", "version.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
