"""The steps layer's own logic: the model card and its one compatibility check, the one threshold policy, the winner on
validation, content-keyed checkpoints and their pruning, and the local run's quiet console."""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from sibeatgan.card import ModelCard, ThresholdPolicy, card_of, read_card
from sibeatgan.errors import ConfigError, DatasetError


def card(kind: str = "student", metric: float | None = 0.5, criterion: str = "val_auc", **extra) -> ModelCard:
    return ModelCard(kind=kind, protocol="beatgan", fold=0, seed=0, dataset_hash="d" * 64, split_hash="s" * 64, criterion=criterion,
                     validation_metric=metric, **extra)


def test_the_card_of_a_generator_file_is_saved_beside_it_and_inside_it(tmp_path: Path) -> None:
    from sibeatgan.modelio import load_generator, save_generator
    from sibeatgan.models import Generator

    meta = dict(kind="student", selection="paper", criterion="val_auc", metric=0.91, epoch=3, config={"fold": 2, "seed": 5, "alpha": 0.0,
                "beta": 0.0, "split": "beatgan", "lr": 1e-4, "teacher": "/t/generator.pt", "teacher_sha256": "ab"},
                dataset_hash="d" * 64, split_hash="s" * 64, protocol="beatgan", fold=2, threshold=0.3, threshold_rule="f1", threshold_far=None)
    save_generator(tmp_path / "generator.pt", Generator(nc=1, length=320, nz=8, ngf=8), **meta)
    saved = read_card(tmp_path)
    assert saved.kind == "control", "a student without distillation and contrastive terms is the no-KD control"
    assert (saved.fold, saved.seed, saved.validation_metric, saved.epoch) == (2, 5, 0.91, 3)
    assert saved.threshold_policy == ThresholdPolicy(rule="f1", far=None) and saved.threshold == 0.3
    assert saved.teacher.path == "/t/generator.pt" and saved.teacher.sha256 == "ab" and "teacher" not in saved.hyperparameters
    _, loaded = load_generator(tmp_path / "generator.pt")
    assert card_of(loaded) == saved == read_card(tmp_path / "generator.pt")


def test_card_check_is_the_one_compatibility_check() -> None:
    c = card()
    c.check("d" * 64, "s" * 64, 0, "beatgan")
    with pytest.raises(DatasetError, match="dataset"):
        c.check("x" * 64, "s" * 64, 0)
    with pytest.raises(DatasetError, match="split"):
        c.check("d" * 64, "x" * 64, 0)
    with pytest.raises(DatasetError, match="fold 0, refused for fold 1"):
        c.check("d" * 64, "s" * 64, 1)
    with pytest.raises(DatasetError, match="'interpatient'"):
        c.check("d" * 64, "s" * 64, 0, "interpatient")


def test_threshold_policy_decides_the_rule_in_one_place() -> None:
    assert ThresholdPolicy.for_selection("paper") == ThresholdPolicy(rule="f1", far=None)
    assert ThresholdPolicy.for_selection("clean") == ThresholdPolicy(rule="far", far=0.01)
    assert ThresholdPolicy.resolve("auto", "paper").rule == "f1" and ThresholdPolicy.resolve("far", "paper", 0.05).far == 0.05
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=1000), np.zeros(1000, int)
    far = ThresholdPolicy(rule="far", far=0.05).choose(scores, labels)
    assert abs((scores > far).mean() - 0.05) < 0.01, "5% false alarms on normal validation beats"
    assert ThresholdPolicy(rule="f1").choose(scores, labels) is None, "no anomalies: the F1 rule cannot apply"
    labels[:50] = 1
    scores[:50] += 4
    f1 = ThresholdPolicy(rule="f1").choose(scores, labels)
    assert f1 is not None and (scores[:50] >= f1).mean() > 0.9


def test_the_student_must_beat_its_control_on_validation() -> None:
    from sibeatgan.steps.protocol import choose_winner

    won = choose_winner({"student": card(metric=0.93), "control": card("control", 0.90)})
    assert won["winner"] == "student" and won["margin"] == pytest.approx(0.03) and won["criterion"] == "val_auc"
    lost = choose_winner({"student": card(metric=0.2, criterion="val_normal_mse"), "control": card("control", 0.1, "val_normal_mse")})
    assert lost["winner"] == "control" and lost["margin"] == pytest.approx(0.1), "a lower reconstruction error wins under clean"
    assert "did not beat its no-KD control" in lost["reason"]
    assert choose_winner({"student": card(metric=0.9), "control": card("control", 0.9)})["winner"] == "control", "a tie is no win"
    diverged = choose_winner({"student": card(metric=math.nan), "control": card("control", 0.5)})
    assert diverged["winner"] == "control" and diverged["margin"] is None
    seeds = choose_winner({"student": [card(metric=0.95), card(metric=0.85)], "control": [card("control", 0.92), card("control", 0.92)]})
    assert seeds["winner"] == "control" and seeds["validation"]["student"] == pytest.approx(0.90), "the mean over seeds"
    assert seeds["validation_per_seed"]["student"] == [0.95, 0.85]
    with pytest.raises(ConfigError, match="different criteria"):
        choose_winner({"student": card(criterion="val_auc"), "control": card("control", criterion="val_normal_mse")})
    comparison = {"pooled": {"delta_auc": 0.01, "delta_auc_ci": [-0.01, 0.03], "p_auc": 0.4}}
    evidence = choose_winner({"student": card(metric=0.93), "control": card("control", 0.90)}, comparison, "table.txt")
    assert evidence["test_comparison"]["delta"] == "student - control" and evidence["table"] == "table.txt"

    from sibeatgan.registry import _verdict

    text = _verdict("student", evidence)
    assert text.startswith("The student won over the control by 0.03 on validation (val_auc).") and "p 0.400" in text
    assert _verdict("teacher", None) == "The teacher is registered (no comparison was made)."


def test_checkpoints_are_keyed_by_content_and_pruned_by_age(tmp_path: Path) -> None:
    from sibeatgan.config import StudentConfig, TeacherConfig, replace
    from sibeatgan.steps.protocol import checkpoint_key, prune_checkpoints

    conf = TeacherConfig(fold=1, seed=2)
    key = checkpoint_key("teacher", conf, "abc")
    assert key.startswith("teacher-f1-s2-") and key == checkpoint_key("teacher", conf, "abc")
    assert key == checkpoint_key("teacher", replace(conf, device="cpu"), "abc"), "the device does not change the model"
    assert key != checkpoint_key("teacher", replace(conf, epochs=7), "abc"), "a shorter run never takes a longer one's model"
    assert key != checkpoint_key("teacher", replace(conf, lr=1e-3), "abc") != checkpoint_key("teacher", conf, "abd")
    assert checkpoint_key("candidates", StudentConfig(), "abc", "t1") != checkpoint_key("candidates", StudentConfig(), "abc", "t2")
    for name, age_days in (("old", 40), ("new", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_bytes(b"x")
        stamp = time.time() - age_days * 86400
        os.utime(tmp_path / name / "checkpoint.pt", (stamp, stamp))
    (tmp_path / "not-a-training").mkdir()
    assert prune_checkpoints(tmp_path, 30, dry_run=True) == [tmp_path / "old"] and (tmp_path / "old").exists()
    assert prune_checkpoints(tmp_path, 30) == [tmp_path / "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "not-a-training"]
    with pytest.raises(ConfigError):
        prune_checkpoints(tmp_path / "missing", 30)


def test_the_local_run_prints_one_line_per_task() -> None:
    from pipelines.local import QuietConsole

    log, console = io.StringIO(), io.StringIO()
    quiet = QuietConsole(log, console)
    quiet.write("\x1b[1mExecuting task 'train-teacher'\x1b[0m\n{\"executorInput\": 1}\nSIBEATGAN-HEADLINE: teacher AUC 0.9\n")
    quiet.write("lots of output\nTask 'train-teacher' finished with status \x1b[92mSUCCESS\x1b[0m\n")
    quiet.write("Executing task 'register'\nTask 'register' finished with status FAILURE\n")
    quiet.write("Executing task 'tune-worker'\nExecuting task 'tune-worker'\nSIBEATGAN-HEADLINE: worker 0\n")  # a ParallelFor's two
    quiet.write("SIBEATGAN-HEADLINE: worker 1\nTask 'tune-worker' finished with status SUCCESS\n")
    quiet.write("Task 'tune-worker' finished with status SUCCESS\n")
    lines = console.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "train-teacher" and lines[0].endswith("teacher AUC 0.9")
    assert lines[2].endswith("worker 0") and lines[3].endswith("worker 1"), lines
    assert "FAILURE" in lines[1] and "executorInput" in log.getvalue() and "executorInput" not in console.getvalue()


def test_the_study_params_never_carry_the_storage_password() -> None:
    from sibeatgan.config import StudentConfig, TuneConfig
    from sibeatgan.steps.tune import study_params

    params = study_params(TuneConfig(storage="postgresql://optuna:s3cr3t-sentinel@db:5432/optuna"), StudentConfig())
    assert params["tune.storage"] == "postgresql://optuna:***@db:5432/optuna"
    assert not any("s3cr3t-sentinel" in v for v in params.values()) and json.dumps(params).count("***") == 1


def test_a_resubmitted_pipeline_run_gets_a_new_training_run(tmp_path: Path) -> None:
    """Checkpoints (and so a training's journal) are keyed by content and outlive a pipeline run: when another pipeline
    run resumes that folder, its training is a new MLflow run under the new parent; the old run stays where it was."""
    from mlflow import MlflowClient

    from sibeatgan.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parents = [Tracker(tmp_path / f"p{i}", uri, run_name=f"pipeline-{i}").start() for i in range(2)]
    for p in parents:
        p.finish()
    first = Tracker(tmp_path / "work" / "tracking", uri, run_name="teacher", parent_run_id=parents[0].run_id).start()
    first.log_metrics({"val": 1.0}, step=1)
    first.finish()
    again = Tracker(tmp_path / "work" / "tracking", uri, run_name="teacher", parent_run_id=parents[0].run_id).start()
    assert again.run_id == first.run_id, "a retried task of the same pipeline run continues its run"
    again.finish()
    other = Tracker(tmp_path / "work" / "tracking", uri, run_name="teacher", parent_run_id=parents[1].run_id).start()
    other.finish()
    assert other.run_id != first.run_id
    assert client.get_run(first.run_id).data.tags["mlflow.parentRunId"] == parents[0].run_id
    assert client.get_run(other.run_id).data.tags["mlflow.parentRunId"] == parents[1].run_id
    assert (tmp_path / "work" / "tracking" / f"journal-{first.run_id}.jsonl").is_file()


def test_a_candidate_without_a_model_loses_and_the_pipeline_goes_on(tmp_path: Path) -> None:
    """A student whose validation criterion was never finite has no generator: it gets a stand-in card (no model, no
    value), its evaluation and the comparison say so instead of failing the run, and the control is registered."""
    from kfp.dsl import Artifact, Markdown, Metrics, Model

    from components import compare, pick_winner
    from sibeatgan.steps.protocol import choose_winner
    from sibeatgan.steps.train import _stand_in_cards

    card("control", 0.3, "val_normal_mse").write(tmp_path / "control")
    _stand_in_cards(tmp_path, ["control"], ["student"])
    stand_in = read_card(tmp_path / "student")
    assert stand_in.kind == "student" and not stand_in.has_model and stand_in.validation_metric is None
    assert choose_winner({"student": stand_in, "control": read_card(tmp_path / "control")})["winner"] == "control"

    ev_s = Artifact(uri=str(tmp_path / "ev_s"), metadata={"kind": "student", "no_model": True})
    ev_c = Artifact(uri=str(tmp_path / "ev_c"), metadata={"kind": "control"})
    out = Artifact(uri=str(tmp_path / "cmp"))
    compare.python_func(beats=Artifact(uri=str(tmp_path / "beats")), evaluation_a=ev_c, evaluation_b=ev_s, comparison=out,
                        metrics=Metrics(uri=str(tmp_path / "m")), summary=Markdown(uri=str(tmp_path / "s.md")))
    assert "no model" in json.loads((tmp_path / "cmp" / "compare.json").read_text())["skipped"]
    (tmp_path / "ev_c").mkdir()
    (tmp_path / "ev_s").mkdir(exist_ok=True)
    won = Model(uri=str(tmp_path / "winner"))
    pick_winner.python_func(student=Model(uri=str(tmp_path / "student")), control=Model(uri=str(tmp_path / "control")),
                            student_evaluation=ev_s, control_evaluation=ev_c, comparison=out, winner=won,
                            evaluation=Artifact(uri=str(tmp_path / "w_ev")), evidence=Artifact(uri=str(tmp_path / "evid")))
    assert read_card(tmp_path / "winner").kind == "control"
    assert json.loads((tmp_path / "evid" / "evidence.json").read_text())["winner"] == "control"


def test_a_failed_pipeline_s_run_and_its_running_step_runs_are_ended(tmp_path: Path) -> None:
    """close_pipeline_run (what pipelines.local does when a task fails): the parent run and a step run still RUNNING
    under it (the study's) end FAILED, a finished step run is left alone, and a second call changes nothing."""
    from mlflow import MlflowClient

    from sibeatgan.config import TrackingConfig
    from sibeatgan.steps.tracked import close_pipeline_run
    from sibeatgan.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingConfig(tracking_uri=uri)
    parent = Tracker(tmp_path / "p", uri, tracking.experiment, run_name="pipeline").start()
    parent.flush(final=True)
    study = Tracker(tmp_path / "s", uri, tracking.experiment, run_name="study", parent_run_id=parent.run_id).start()
    study.flush(final=True)
    done = Tracker(tmp_path / "d", uri, tracking.experiment, run_name="preprocess", parent_run_id=parent.run_id).start()
    done.finish()
    said = close_pipeline_run(tracking, tmp_path / "c", parent.run_id, "FAILED", "tune-worker", "boom")
    assert "ended FAILED" in said and "1 step run(s)" in said
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(parent.run_id).info.status == "FAILED" and client.get_run(parent.run_id).data.tags["failed_task"] == "tune-worker"
    assert client.get_run(study.run_id).info.status == "FAILED" and client.get_run(done.run_id).info.status == "FINISHED"
    assert "already FAILED" in close_pipeline_run(tracking, tmp_path / "c", parent.run_id, "FAILED")
    assert "could not be ended" in close_pipeline_run(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'none' / 'x.db'}"),
                                                      tmp_path / "c", parent.run_id, "FAILED")
