"""The `sibeatgan` command as a user runs it: exit codes, messages and outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def sib(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, "-m", "sibeatgan.cli", "--log-level", "INFO", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


def test_help_lists_every_step():
    r = sib("--help")
    assert r.returncode == 0
    for step in ("synth", "ingest", "validate", "preprocess", "train-teacher", "evaluate", "demo"):
        assert step in r.stdout


def test_synth_then_ingest_logs_what_it_did(tmp_path):
    r = sib("synth", "--out", str(tmp_path / "src"), "--set", "n_records=2", "--set", "duration_s=60")
    assert r.returncode == 0, r.stderr
    assert "synth done" in r.stderr
    r = sib("ingest", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "raw"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "ingest done" in r.stderr and '"n_records": 2' in r.stderr
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.hea")) == ["100.hea", "101.hea"]


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = sib("ingest", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "raw"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "empty" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "raw").exists()
    r = sib("synth", "--out", str(tmp_path / "s"), "--set", "n_recordz=2")
    assert r.returncode == 2 and "unknown field(s) n_recordz" in r.stderr
    r = sib("synth", "--out", str(tmp_path / "s"), "--set", "duration_s=long")
    assert r.returncode == 2 and "SynthConfig.duration_s" in r.stderr


def test_train_teacher_then_evaluate(synth_dataset, tmp_path):
    small = ["--set", "ngf=8", "--set", "ndf=8", "--set", "nz=16", "--set", "max_train_beats=256"]
    r = sib("train-teacher", "-d", str(synth_dataset), "-o", str(tmp_path / "t"), "--epochs", "2", "--device", "cpu",
            "--no-progress", *small, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "train-teacher done" in r.stderr and '"criterion": "val_normal_mse"' in r.stderr and "best_metric" in r.stderr
    # Tracked by default in the one local store every command uses, runs/mlflow.db: config, every epoch, lineage.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("si-beatgan").experiment_id])
    assert run.data.tags["step"] == "train-teacher" and run.data.params["model.ngf"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_normal_mse")] == [1, 2]
    assert run.data.tags["split_hash"] and run.data.tags["dataset_hash"]
    # Five folds asked for, one model given: refused, not quietly evaluated on one fold.
    r = sib("evaluate", "-d", str(synth_dataset), "-m", str(tmp_path / "t"), "-o", str(tmp_path / "e"), "--folds", "0,1,2,3,4")
    assert r.returncode == 2 and "give one --model per fold" in r.stderr
    assert not (tmp_path / "e").exists()
    r = sib("evaluate", "-d", str(synth_dataset), "-m", str(tmp_path / "t"), "-o", str(tmp_path / "e"), "--set", "n_bootstrap=20",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert list(result["folds"]) == ["0"] and 0.0 <= result["folds"]["0"]["auc"] <= 1.0
    (ev,) = [r for r in client.search_runs([client.get_experiment_by_name("si-beatgan").experiment_id]) if r.data.tags["step"] == "evaluate"]
    assert ev.data.metrics["fold0_auc"] == result["folds"]["0"]["auc"] and ev.data.tags["split_hash"] == result["split_hash"]
    assert ev.data.params["evaluate.n_bootstrap"] == "20"
    assert "roc.png" in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(ev.info.run_id, "fold_0")} or \
        "evaluation.json" in {a.path for a in client.list_artifacts(ev.info.run_id)}
    # The model of fold 0 offered as fold 3's: refused by name.
    r = sib("evaluate", "-d", str(synth_dataset), "-m", str(tmp_path / "t"), "-o", str(tmp_path / "e3"), "--folds", "3")
    assert r.returncode == 2 and "trained on fold 0" in r.stderr


def test_a_failed_command_leaves_no_empty_output_folder(tmp_path):
    # train-teacher creates its --out before it reads the dataset: the failure must not leave it (or its parents).
    r = sib("train-teacher", "-d", str(tmp_path / "nowhere"), "-o", str(tmp_path / "new" / "teacher"), "--no-progress")
    assert r.returncode == 2 and "nowhere" in r.stderr
    assert not (tmp_path / "new").exists()
    # A folder that was there before the command is the user's: kept, even empty.
    (tmp_path / "mine").mkdir()
    r = sib("train-teacher", "-d", str(tmp_path / "nowhere"), "-o", str(tmp_path / "mine"), "--no-progress")
    assert r.returncode == 2 and (tmp_path / "mine").is_dir()


def test_demo_takes_its_synthetic_data_as_a_nested_section(tmp_path):
    r = sib("demo", "-o", str(tmp_path / "d"), "--set", "synth.seed=x")
    assert r.returncode == 2 and "error: DemoConfig.synth.seed: expected an integer, got 'x'" in r.stderr
    # The nested value reaches the synth step (which refuses it), and the failed demo leaves no folder.
    r = sib("demo", "-o", str(tmp_path / "d"), "--set", "synth.duration_s=1", "--no-progress")
    assert r.returncode == 2 and "SynthConfig.duration_s: must be at least 10 s, got 1.0" in r.stderr
    assert not (tmp_path / "d").exists()


def test_validate_raw_on_a_beat_dataset_says_what_the_folder_is(synth_dataset, tmp_path):
    r = sib("validate", "--raw", str(synth_dataset), "-o", str(tmp_path / "v"))
    assert r.returncode == 1
    assert f"{synth_dataset} is a beat dataset (manifest.json, beats.npz), not a WFDB folder: use --dataset" in r.stderr
    assert "record 100" not in r.stderr and len(r.stderr.strip().splitlines()) < 6
    assert (tmp_path / "v" / "validation.json").is_file()  # a failed gate still writes its report, which is kept


def test_train_student_with_a_chosen_score_then_evaluate_its_other_scores(synth_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from sibeatgan.config import TeacherConfig
    from sibeatgan.train.teacher import run_train_teacher

    small = ["--set", "ngf=8", "--set", "ndf=8", "--set", "nz=16", "--set", "max_train_beats=256"]
    run_train_teacher(TeacherConfig(ngf=8, ndf=8, nz=16, max_train_beats=256, epochs=1, device="cpu"), synth_dataset, tmp_path / "t")
    r = sib("train-student", "-d", str(synth_dataset), "-t", str(tmp_path / "t"), "-o", str(tmp_path / "s"), "--epochs", "1",
            "--device", "cpu", "--no-progress", *small, "--set", "score=combined", "--set", "score_weight=0.75", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"kind": "combined"' in r.stderr and json.loads((tmp_path / "s" / "score.json").read_text())["weight"] == 0.75
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("si-beatgan").experiment_id]) if r.data.tags["step"] == "train-student"]
    assert {"metrics.json", "score.json", "model_card.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    r = sib("evaluate", "-d", str(synth_dataset), "-m", str(tmp_path / "s"), "-o", str(tmp_path / "e"), "--set", "n_bootstrap=0",
            "--set", "score=discrepancy", "--no-track")
    assert r.returncode == 0, r.stderr
    assert "discrepancy score" in (tmp_path / "e" / "table.txt").read_text()
    r = sib("evaluate", "-d", str(synth_dataset), "-m", str(tmp_path / "t"), "-o", str(tmp_path / "e2"), "--set", "score=discrepancy",
            "--no-track")
    assert r.returncode == 2 and "teacher's encoder" in r.stderr and not (tmp_path / "e2").exists()
