"""`sibeatgan pipeline run`: the real pipeline on kfp's local runner, end to end on tiny settings, and its gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("kfp")

TINY = """\
synth: {n_records: 4, duration_s: 120}
teacher: {max_train_beats: 64, cuda_graph: false}
evaluate: {n_bootstrap: 20, plots: false}
"""


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


@pytest.mark.slow
def test_pipeline_run_end_to_end(tmp_path: Path) -> None:
    """synth -> ingest -> gate -> preprocess -> gate -> teacher (ParallelFor) -> evaluate, through the CLI."""
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
