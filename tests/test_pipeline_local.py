"""`sibeatgan pipeline run`: the real pipeline on kfp's local runner, end to end on tiny settings, and its gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("kfp")

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


@pytest.mark.slow
def test_pipeline_run_end_to_end(tmp_path: Path) -> None:
    """synth -> ingest -> gate -> preprocess -> gate -> teacher (ParallelFor) -> evaluate -> study -> two Optuna workers
    (ParallelFor, one journal) -> best config -> student -> evaluate -> compare -> register (staging), through the CLI; then a
    run with --trials 0 registers the teacher as the next version in the same registry."""
    from typer.testing import CliRunner

    from sibeatgan.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["pipeline", "run", "--out", str(out), "--epochs", "1", "--device", "cpu", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "fold 0 seed 0: test AUC" in result.output

    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == ["101", "100", "106", "103"]
    (run,) = summary["runs"]
    assert (run["fold"], run["seed"]) == (0, 0) and 0.0 <= run["auc"] <= 1.0 and run["n"] > 0

    kfp_root = out / "kfp"
    for gate in ("validate-records", "validate-beats"):
        assert "<html" in _one(kfp_root, f"si-beatgan-*/{gate}/report").read_text().lower()
    model = _one(kfp_root, "si-beatgan-*/for-loop-*/train-teacher/model")
    assert (model / "generator.pt").is_file() and (model / "checkpoint.pt").is_file()
    assert _one(out / "checkpoints", "*/fold0-seed0/checkpoint.pt").is_file(), "the teacher trained under checkpoint_root"
    evaluate = _one(kfp_root, "si-beatgan-*/for-loop-*/evaluate")
    assert (evaluate / "evaluation" / "evaluation.json").is_file()
    assert "| 0 |" in (evaluate / "summary").read_text()
    outputs = json.loads((evaluate / "executor_output.json").read_text())["artifacts"]
    roc = outputs["roc"]["artifacts"][0]["metadata"]["confidenceMetrics"]
    assert len(roc) >= 2 and {"falsePositiveRate", "recall", "confidenceThreshold"} <= set(roc[0])
    assert outputs["metrics"]["artifacts"][0]["metadata"]["auc"] == pytest.approx(run["auc"])

    # The search: two workers (separate subprocesses) on one study in the run's journal, one trial each.
    told = [json.loads((w / "executor_output.json").read_text())["artifacts"]["trials_out"]["artifacts"][0]["metadata"]
            for w in sorted(kfp_root.glob("si-beatgan-*/for-loop-*/tune-worker"))]
    assert sorted(t["worker"] for t in told) == [0, 1] and sum(t["told"] for t in told) == 2
    assert len({t["study"] for t in told}) == 1 and (out / "optuna" / "studies.journal").is_file()
    best = _one(kfp_root, "si-beatgan-*/best-config/best")
    assert json.loads((best / "summary.json").read_text())["trials"]["complete"] == 2
    assert "student" in json.loads((best / "best.json").read_text())
    student = _one(kfp_root, "si-beatgan-*/train-student/model")
    assert (student / "generator.pt").is_file()
    assert json.loads((student / "metrics.json").read_text())["history"][-1]["epoch"] == 2, "student_epochs, not tune_epochs"

    # The student against its teacher on the same test beats (record-level paired bootstrap).
    versus = _one(kfp_root, "si-beatgan-*/compare")
    compared = json.loads((versus / "comparison" / "compare.json").read_text())
    assert compared["pooled"]["auc_a"] == pytest.approx(run["auc"]) and "delta_auc_ci" in compared["pooled"]
    assert "student against teacher" in (versus / "summary").read_text()

    # Registered: the student, under alias staging, in the run's own SQLite registry.
    reg = summary["registered"]
    assert (reg["kind"], reg["version"], reg["alias"]) == ("student", 1, "staging")
    assert f"mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db" in result.output
    assert f"registered si-beatgan version 1 (student" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db", registry_uri=f"sqlite:///{out}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("si-beatgan").experiment_id])
    (study,) = [r for r in runs if "optuna.study" in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in trials) == ["0", "1"], "each trial a child run, logged by its worker"
    assert all(r.info.status == "FINISHED" and "val_normal_mse" in r.data.metrics for r in trials)
    staging = client.get_model_version_by_alias("si-beatgan", "staging")
    assert str(staging.version) == "1" and staging.tags["kind"] == "student" and staging.tags["validation"] == "passed"
    logged = {a.path for a in client.list_artifacts(staging.run_id, "validation")}
    assert logged == {"validation/validation.json", "validation/validation.beats.html", "validation/validation.records.html"}

    # No search: the teacher is registered and staging moves to it.
    again = CliRunner().invoke(app, ["pipeline", "run", "--out", str(out), "--epochs", "1", "--device", "cpu", "-c", str(config),
                                     "--trials", "0"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["registered"]["kind"] == "teacher"
    staging = client.get_model_version_by_alias("si-beatgan", "staging")
    assert str(staging.version) == "2" and staging.tags["kind"] == "teacher"


def test_failing_gate_stops_the_run_before_training(tmp_path: Path) -> None:
    """Records at 250 Hz fail the record-level gate: the run fails there and no teacher task starts."""
    from sibeatgan.pipeline import PipelineFailed, run_pipeline_local

    config = tmp_path / "bad.yaml"
    config.write_text("synth: {n_records: 2, duration_s: 90, fs: 250}\n")
    with pytest.raises(PipelineFailed, match="validate-records"):
        run_pipeline_local(tmp_path / "run", epochs=1, config=config, device="cpu")
    assert list((tmp_path / "run" / "kfp").glob("si-beatgan-*/validate-records")), "the gate ran"
    assert not list((tmp_path / "run" / "kfp").rglob("train-teacher")), "no training after a failed gate"
    assert not list((tmp_path / "run" / "kfp").rglob("preprocess"))
