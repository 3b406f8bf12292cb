"""The compiled pipeline stays current and carries the cluster settings; the components' library helpers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "si_beatgan.yaml"


def _spec() -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(COMPILED.read_text())
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_compiled_yaml_is_current(tmp_path: Path) -> None:
    """Golden test: recompiling pipelines/si_beatgan.py gives the committed YAML byte for byte."""
    from kfp import compiler

    from pipelines.si_beatgan import si_beatgan

    fresh = tmp_path / "si_beatgan.yaml"
    compiler.Compiler().compile(si_beatgan, str(fresh))
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/si_beatgan.yaml is stale: run `python -m pipelines.si_beatgan` and commit it")


def test_kfp_compile_from_the_repository_root(tmp_path: Path) -> None:
    """`kfp dsl compile --py pipelines/si_beatgan.py`, the command KFP users type, works from the repository root and
    gives the committed YAML; `python -m pipelines.si_beatgan OUT` too. Neither touches the committed file."""
    before = COMPILED.read_bytes()
    kfp_cli = Path(sys.executable).parent / "kfp"
    out = tmp_path / "kfp.yaml"
    done = subprocess.run([str(kfp_cli), "dsl", "compile", "--py", "pipelines/si_beatgan.py", "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes() == before
    subprocess.run([sys.executable, "-m", "pipelines.si_beatgan", str(tmp_path / "m.yaml")], cwd=ROOT, check=True, timeout=180)
    assert (tmp_path / "m.yaml").read_bytes() == before
    assert COMPILED.read_bytes() == before


def test_every_component_runs_on_the_versioned_image_without_installs() -> None:
    from components.image import default_image

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    IMAGE = default_image()  # the committed YAML is compiled without SIBEATGAN_IMAGE
    assert IMAGE == f"ghcr.io/si-beatgan/sibeatgan:{version}"
    pipeline, _ = _spec()
    executors = pipeline["deploymentSpec"]["executors"]
    assert {"exec-start-run", "exec-ingest", "exec-validate-records", "exec-preprocess", "exec-validate-beats", "exec-plan-runs",
            "exec-train-teacher", "exec-evaluate", "exec-pick-teacher", "exec-create-study", "exec-tune-worker", "exec-best-config",
            "exec-train-candidates", "exec-evaluate-2", "exec-evaluate-3", "exec-compare", "exec-pick-winner", "exec-register",
            "exec-register-2"} <= set(executors)
    for name, ex in executors.items():
        assert ex["container"]["image"] == IMAGE, name
        command = " ".join(ex["container"]["command"] + ex["container"].get("args", []))
        assert "pip install" not in command, f"{name} installs packages at run time"


def test_typed_artifacts_between_steps() -> None:
    pipeline, _ = _spec()
    comps = pipeline["components"]

    def outputs(comp: str) -> dict[str, str]:
        arts = comps[comp]["outputDefinitions"].get("artifacts", {})
        return {k: v["artifactType"]["schemaTitle"] for k, v in arts.items()}

    assert outputs("comp-ingest") == {"records": "system.Dataset"}
    assert outputs("comp-validate-records") == {"report": "system.HTML"}
    assert outputs("comp-preprocess") == {"beats": "system.Dataset"}
    assert outputs("comp-train-teacher") == {"model": "system.Model", "metrics": "system.Metrics"}
    assert outputs("comp-evaluate") == {"metrics": "system.Metrics", "roc": "system.ClassificationMetrics",
                                        "summary": "system.Markdown", "evaluation": "system.Artifact"}
    assert outputs("comp-pick-teacher") == {"teacher": "system.Model", "evaluation": "system.Artifact"}
    assert outputs("comp-tune-worker") == {"trials_out": "system.Artifact"}
    assert outputs("comp-best-config") == {"best": "system.Dataset", "metrics": "system.Metrics"}
    assert outputs("comp-train-candidates") == {"student": "system.Model", "control": "system.Model"}
    assert outputs("comp-pick-winner") == {"winner": "system.Model", "evaluation": "system.Artifact", "evidence": "system.Artifact"}
    assert outputs("comp-register") == {"registration": "system.Artifact"}
    assert outputs("comp-compare") == {"comparison": "system.Artifact", "metrics": "system.Metrics", "summary": "system.Markdown"}
    pick_inputs = comps["comp-pick-teacher"]["inputDefinitions"]["artifacts"]
    assert pick_inputs["teachers"]["isArtifactList"] and pick_inputs["evaluations"]["isArtifactList"], "fan-in of the teacher loop"


def test_gates_come_before_training_and_steps_are_set_deliberately() -> None:
    pipeline, _ = _spec()
    root = pipeline["root"]["dag"]["tasks"]
    assert "validate-records" in root["preprocess"]["dependentTasks"]
    loop = pipeline["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert "validate-beats" in pipeline["root"]["dag"]["tasks"]["for-loop-1"]["dependentTasks"]
    train = loop["train-teacher"]
    assert train["retryPolicy"]["maxRetryCount"] == 3
    assert train["cachingOptions"]["enableCache"] is True, "checkpoints keyed by content: a resubmission is a cache hit or resumes"
    assert "start-run" in root["ingest"]["dependentTasks"], "the pipeline's MLflow run exists before any step logs under it"
    assert root["ingest"]["cachingOptions"]["enableCache"] is True
    assert root["ingest"]["retryPolicy"]["maxRetryCount"] == 2
    for name in ("validate-records", "validate-beats", "preprocess"):
        assert "retryPolicy" not in root[name], f"{name} fails the same way again: no retries"
    assert pipeline["root"]["dag"]["tasks"]["for-loop-1"]["parameterIterator"]["items"]["inputParameter"]
    resources = pipeline["deploymentSpec"]["executors"]["exec-train-teacher"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(resources["accelerator"]["resourceCount"]) == 1


def test_gpu_pool_secrets_and_checkpoint_volume() -> None:
    from pipelines.si_beatgan import CHECKPOINT_MOUNT, SECRETS

    pipeline, k8s = _spec()
    train = k8s["exec-train-teacher"]
    assert train["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--gpu_type"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    assert train["pvcMount"][0]["mountPath"] == CHECKPOINT_MOUNT
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert params["checkpoint_root"]["defaultValue"].startswith(CHECKPOINT_MOUNT)
    assert params["gpu_type"]["defaultValue"] == {"sibeatgan.io/node-pool": "gpu"}
    secret_name, keys = SECRETS["s3"]
    env = k8s["exec-ingest"]["secretAsEnv"][0]
    assert env["secretName"] == secret_name
    assert {k["secretKey"] for k in env["keyToEnv"]} == set(keys)
    assert not any(w in p.lower() for p in params for w in ("password", "secret", "access_key", "token")), \
        "credentials come from Kubernetes secrets, never parameters"


def test_search_student_and_registration() -> None:
    """trials > 0: study once, workers in a ParallelFor on the GPU pool with the study's storage from a secret, best config,
    student, evaluate, register; else the teacher is registered. Either way one `registered` output."""
    from pipelines.si_beatgan import SECRETS

    pipeline, k8s = _spec()
    comps = pipeline["components"]
    branches = comps["comp-condition-branches-2"]["dag"]["tasks"]
    student_branch, teacher_branch = (branches[n] for n in ("condition-4", "condition-5"))
    assert "int(inputs.parameter_values['pipelinechannel--trials']) > 0" == student_branch["triggerPolicy"]["condition"]
    assert "!(" in teacher_branch["triggerPolicy"]["condition"], "the Else branch"
    search = comps["comp-condition-4"]["dag"]["tasks"]
    assert set(search) == {"create-study", "for-loop-3", "best-config", "train-candidates", "evaluate-2", "evaluate-3", "compare",
                           "pick-winner", "register"}
    assert set(search["pick-winner"]["dependentTasks"]) >= {"compare", "train-candidates", "evaluate-2", "evaluate-3"}
    assert search["register"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "pick-winner", \
        "the winner on validation is registered, not always the student"
    assert search["register"]["inputs"]["artifacts"]["evidence"]["taskOutputArtifact"]["producerTask"] == "pick-winner"
    assert search["for-loop-3"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--create-study-Output"
    assert "for-loop-3" in search["best-config"]["dependentTasks"]
    assert set(comps["comp-condition-5"]["dag"]["tasks"]) == {"register-2"}
    gates = set(comps["comp-register"]["inputDefinitions"]["artifacts"]) & {"records_report", "beats_report"}
    assert gates == {"records_report", "beats_report"}, "the gates' verdict and reports go with the model"
    worker = comps["comp-for-loop-3"]["dag"]["tasks"]["tune-worker"]
    assert worker["retryPolicy"]["maxRetryCount"] == 2 and not worker.get("cachingOptions", {}).get("enableCache")
    assert search["train-candidates"]["retryPolicy"]["maxRetryCount"] == 3
    executors = pipeline["deploymentSpec"]["executors"]
    for name in ("exec-tune-worker", "exec-train-candidates"):
        assert executors[name]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu", name
        assert k8s[name]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--gpu_type", name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[name]["tolerations"], name
    assert k8s["exec-train-candidates"]["pvcMount"][0]["mountPath"] == "/checkpoints"
    wanted = {"exec-create-study": ("optuna", "mlflow"), "exec-tune-worker": ("optuna", "mlflow"), "exec-best-config": ("optuna", "mlflow"),
              "exec-register": ("mlflow",), "exec-register-2": ("mlflow",), "exec-train-teacher": ("mlflow",),
              "exec-train-candidates": ("mlflow",), "exec-evaluate": ("mlflow",), "exec-compare": ("mlflow",), "exec-start-run": ("mlflow",)}
    for name, which in wanted.items():
        envs = {env["secretName"]: {k["envVar"] for k in env["keyToEnv"]} for env in k8s[name]["secretAsEnv"]}
        assert envs == {SECRETS[w][0]: set(SECRETS[w][1].values()) for w in which}, name
    assert set(SECRETS["mlflow"][1].values()) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    for name in ("trials", "workers", "members_per_worker", "tune_epochs", "student_epochs", "mlflow_uri", "optuna_storage", "experiment",
                 "model_name", "data_version"):
        assert name in params, name
    assert params["optuna_storage"]["defaultValue"] == "" and params["mlflow_uri"]["defaultValue"] == \
        "http://sibeatgan-mlflow.sibeatgan.svc.cluster.local:5000"
    for name, executor in k8s.items():
        assert executor.get("activeDeadlineSeconds") or name == "exec-synth", f"{name} has no timeout"
    outputs = pipeline["root"]["outputDefinitions"]
    assert outputs["parameters"]["registered"]["parameterType"] == "STRUCT" and outputs["artifacts"]["teachers"]["isArtifactList"]


def test_tune_config_storage_and_study_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from sibeatgan.errors import ConfigError
    from sibeatgan.steps.protocol import tune_config

    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    with pytest.raises(ConfigError, match="no Optuna storage"):
        tune_config("", 4, 2, 2, "", "run-1")
    tune = tune_config("tune:\n  grace_s: 5\n", 4, 2, 3, "/shared/s.journal", "run-1")
    assert (tune.n_trials, tune.workers, tune.group_size, tune.storage, tune.grace_s) == (4, 2, 3, "/shared/s.journal", 5.0)
    assert tune.study_name == "si-beatgan-student-run-1"
    for bad in ((4, 0, 2), (4, 2, 0), (-1, 2, 2)):
        with pytest.raises(ConfigError):
            tune_config("", *bad, "/shared/s.journal", "run-1")
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://u:p@db/optuna")
    assert tune_config("", 4, 2, 2, "", "run-2").storage == "postgresql://u:p@db/optuna", "the secret's URL on a cluster"


def test_pick_run_matches_fold_and_seed() -> None:
    from kfp.dsl import Model

    from sibeatgan.errors import ConfigError
    from sibeatgan.steps.protocol import pick_run

    models = [Model(uri=f"/m{i}", metadata={"fold": float(f), "seed": 0}) for i, f in enumerate((1, 0, 2))]
    assert pick_run(models, 0, 0, "teacher").uri == "/m1"
    with pytest.raises(ConfigError, match="0 artifacts of fold 3 seed 0"):
        pick_run(models, 3, 0, "teacher")


def test_step_config_reads_sections_and_typed_overrides() -> None:
    from sibeatgan.config import EvaluateConfig, TeacherConfig
    from sibeatgan.errors import ConfigError
    from sibeatgan.steps.protocol import step_config

    text = "teacher:\n  lambda_fm: 0.5\n  epochs: 7\nevaluate:\n  n_bootstrap: 10\n"
    conf = step_config(TeacherConfig, text, epochs=3, fold=2, device=None)
    assert (conf.lambda_fm, conf.epochs, conf.fold, conf.device) == (0.5, 3, 2, "auto")
    assert step_config(EvaluateConfig, text).n_bootstrap == 10
    assert step_config(TeacherConfig, "").epochs == TeacherConfig().epochs
    with pytest.raises(ConfigError, match="config_yaml: unknown section"):
        step_config(TeacherConfig, "trainer:\n  epochs: 3\nteacher: {}\n")
    with pytest.raises(ConfigError, match="TeacherConfig.epochs"):
        step_config(TeacherConfig, "teacher:\n  epochs: many\n")


def test_run_grid() -> None:
    from sibeatgan.errors import ConfigError
    from sibeatgan.steps.protocol import run_grid

    assert run_grid([0.0, 1.0], [7]) == [{"fold": 0, "seed": 7}, {"fold": 1, "seed": 7}]
    assert len(run_grid(range(5), [0, 1, 2])) == 15
    for folds, seeds in (([], [0]), ([0, 0], [1]), ([0.5], [0]), ([0], [-1])):
        with pytest.raises(ConfigError):
            run_grid(folds, seeds)


def test_roc_points_are_finite_thinned_and_monotone() -> None:
    from sklearn.metrics import auc

    from sibeatgan.steps.protocol import roc_points

    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.2
    scores = rng.normal(size=5000) + labels
    fpr, tpr, thr = roc_points(scores, labels, max_points=100)
    assert len(fpr) == len(tpr) == len(thr) <= 100
    assert np.isfinite(thr).all() and fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    from sklearn.metrics import roc_auc_score

    assert abs(auc(fpr, tpr) - roc_auc_score(labels, scores)) < 0.01


def test_train_component_resumes_from_its_content_keyed_checkpoint(synth_dataset: Path, tmp_path: Path) -> None:
    """A retried teacher task, or the same teacher in a resubmitted run, continues from the checkpoint on the volume (its
    folder named by fold, seed and a hash of config, epochs and data); another config or epoch count gets another folder."""
    import json

    from kfp.dsl import Dataset, Metrics, Model

    from components import train_teacher
    from sibeatgan.data.artifact import load

    conf = "teacher:\n  max_train_beats: 64\n  batch_size: 64\n  cuda_graph: false\n"
    beats = Dataset(uri=str(synth_dataset), metadata={"content_hash": load(synth_dataset).content_hash()})
    args = dict(fold=0, seed=0, config_yaml=conf, device="cpu", checkpoint_root=str(tmp_path / "ckpt"))
    first = Model(uri=str(tmp_path / "attempt1" / "model"))
    train_teacher.python_func(beats=beats, model=first, metrics=Metrics(uri=str(tmp_path / "m1")), epochs=1, **args)
    (work,) = (tmp_path / "ckpt").iterdir()
    assert work.name.startswith("teacher-f0-s0-") and first.metadata["checkpoint"] == work.name
    assert (work / "checkpoint.pt").is_file() and (Path(first.path) / "generator.pt").is_file()
    assert not (Path(first.path) / "checkpoint.pt").exists(), "the model artifact holds the model, not the optimizer state"
    history1 = json.loads((work / "metrics.json").read_text())["history"]

    stamp = (work / "checkpoint.pt").stat().st_mtime_ns
    second = Model(uri=str(tmp_path / "attempt2" / "model"))
    metrics = Metrics(uri=str(tmp_path / "m2"))
    train_teacher.python_func(beats=beats, model=second, metrics=metrics, epochs=1, **args)  # the retried task, same inputs
    history2 = json.loads((Path(second.path) / "metrics.json").read_text())["history"]
    assert history2 == history1 and (work / "checkpoint.pt").stat().st_mtime_ns == stamp, "resumed: nothing trained twice"
    assert metrics.metadata["epochs"] == 1 and second.metadata["fold"] == 0 and second.metadata["kind"] == "teacher"
    assert json.loads((Path(second.path) / "model_card.json").read_text())["kind"] == "teacher"

    longer = Model(uri=str(tmp_path / "attempt4" / "model"))
    train_teacher.python_func(beats=beats, model=longer, metrics=Metrics(uri=str(tmp_path / "m4")), epochs=2, **args)
    assert len(json.loads((Path(longer.path) / "metrics.json").read_text())["history"]) == 2
    assert len(list((tmp_path / "ckpt").iterdir())) == 2, "another epoch count is another model: a folder of its own"
    other = Model(uri=str(tmp_path / "attempt3" / "model"))
    train_teacher.python_func(beats=beats, model=other, metrics=Metrics(uri=str(tmp_path / "m3")), epochs=1,
                              **{**args, "config_yaml": conf + "  lr: 0.0002\n"})
    assert len(list((tmp_path / "ckpt").iterdir())) == 3, "another config trains in a folder of its own"


def test_library_does_not_import_kfp() -> None:
    """sibeatgan (its CLI and steps layer included) never imports kfp, components/ or pipelines/."""
    code = ("import sys, sibeatgan.cli, sibeatgan.steps.protocol, sibeatgan.steps.train, sibeatgan.steps.tune, sibeatgan.steps.evaluate; "
            "sys.exit(any(m == 'kfp' or m.split('.')[0] in ('components', 'pipelines') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
    import re

    for path in (ROOT / "sibeatgan").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(components|pipelines|kfp)\b", text, re.M), f"{path} imports above the library"
    for path in (ROOT / "sibeatgan" / "train").rglob("*.py"):
        assert not re.search(r"sibeatgan\.(search|tracking)\b", path.read_text()), f"{path}: train/ imports the search or tracking"


def test_train_component_fails_loudly_without_cuda(synth_dataset: Path, tmp_path: Path) -> None:
    """The cluster default device=cuda refuses to fall back to the CPU on a node without a GPU."""
    import torch
    from kfp.dsl import Dataset, Metrics, Model

    from components import train_teacher
    from sibeatgan.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_teacher.python_func(beats=Dataset(uri=str(synth_dataset)), model=Model(uri=str(tmp_path / "model")),
                                  metrics=Metrics(uri=str(tmp_path / "m")), fold=0, seed=0, epochs=1, device="cuda")
    assert not (tmp_path / "model" / "generator.pt").exists()


def test_image_and_pull_secrets_are_compile_time_settings(tmp_path: Path) -> None:
    """SIBEATGAN_IMAGE and SIBEATGAN_IMAGE_PULL_SECRETS at compile time: every task runs on that image and pulls it with that
    secret; nothing in code or tests is edited for another registry."""
    import os

    out = tmp_path / "p.yaml"
    env = {**os.environ, "SIBEATGAN_IMAGE": "registry.example.com/ml/sibeatgan:0.1.0-abc1234", "SIBEATGAN_IMAGE_PULL_SECRETS": "regcred"}
    subprocess.run([sys.executable, "-m", "pipelines.si_beatgan", str(out)], cwd=ROOT, env=env, check=True, timeout=180)
    pipeline, platform = yaml.safe_load_all(out.read_text())
    for name, ex in pipeline["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == env["SIBEATGAN_IMAGE"], name
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(k8s) == len(pipeline["deploymentSpec"]["executors"]) and all(
        e.get("imagePullSecret", [{}])[0].get("secretName") == "regcred" for e in k8s.values()), \
        [n for n, e in k8s.items() if not e.get("imagePullSecret")]
