"""The SI-BeatGAN Kubeflow pipeline: start the MLflow run -> ingest -> validate (gate) -> preprocess (beats and their
split) -> validate (gate) -> teacher per (fold, seed) in a ParallelFor -> evaluate -> [trials > 0: Optuna study ->
workers in a ParallelFor on one storage -> best config -> the best student and its no-KD control, trained together ->
evaluate both -> compare them -> the winner on validation] -> register (alias `staging`: the winner, with its evidence;
the teacher when there is no search) -> end the MLflow run.

`python -m pipelines.si_beatgan` or `kfp dsl compile --py pipelines/si_beatgan.py --output FILE` (from the repository
root) compiles it; pipelines/si_beatgan.yaml is committed and tests/test_pipeline.py fails when it is stale.
`python -m pipelines.local` runs it on this machine (kfp's local runner).

Per step, deliberately:
- caching: on for every step but the search and registration; each is a pure function of its inputs and config.
  Ingest's input is a source *name* plus `data_version`: PhysioNet's mitdb is versioned and checksummed, but an
  s3:// prefix can change under the same name, so give such a source a new data_version when its content changes.
- checkpoints: keyed by content (fold, seed, config and dataset hashes; sibeatgan.steps.protocol.checkpoint_key), so a
  retried pod and a resubmitted run resume; `sibeatgan checkpoints prune` removes old ones.
- retries: ingest twice (network sources), the teacher and the candidates three times with backoff (GPU nodes are
  often preemptible; they resume from their checkpoints on the PVC), each Optuna worker twice (it rejoins the study;
  the trials a dead worker held are retried once their heartbeat is stale), registration twice (the tracking server
  may blink), none elsewhere (a failed gate or bad config fails the same way again).
- timeouts: every task has one (TIMEOUTS), so a hung pod is ended and retried instead of holding a GPU for good.
- the search and registration are not cached: the study is named after the run (a cache hit would point at another
  run's study) and a registration must happen each time.
- credentials: Kubernetes secrets as environment variables, never parameters (SECRETS below).
"""

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `kfp dsl compile --py pipelines/si_beatgan.py` loads this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import List, NamedTuple

from kfp import compiler, dsl, kubernetes

from components import (best_config, compare, create_study, evaluate, ingest, pick_teacher, pick_winner, plan_runs, preprocess, register,
                        start_run, train_candidates, train_teacher, tune_worker, validate_beats, validate_records)
from components.image import with_image_settings

# Compile-time settings (environment variables at compile time; kfp 2.17 drops pipeline parameters used for these
# inside a ParallelFor): GPUs per training task, and how many teachers / Optuna workers run at once.
GPU_RESOURCE = "nvidia.com/gpu"
GPUS_PER_TASK = int(os.environ.get("SIBEATGAN_GPUS_PER_TASK", "1"))
TEACHER_PARALLELISM = int(os.environ.get("SIBEATGAN_TEACHER_PARALLELISM", "4"))
WORKER_PARALLELISM = int(os.environ.get("SIBEATGAN_WORKER_PARALLELISM", "4"))
# Per-task timeouts in seconds (activeDeadlineSeconds of the pod): generous for 100 GPU epochs of a full fold.
TIMEOUTS = {"ingest": 3600, "gate": 1800, "preprocess": 3600, "teacher": 6 * 3600, "evaluate": 1800, "search": 6 * 3600,
            "candidates": 6 * 3600, "small": 900}
CHECKPOINT_MOUNT = "/checkpoints"  # where the teacher's PVC is mounted; checkpoint_root lives under it
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}  # the GPU pool's taint (infra/)
# secret name -> {secret key: environment variable}; the secrets are created by infra/ (see README).
SECRETS = {
    "s3": ("sibeatgan-s3", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}),
    "mlflow": ("sibeatgan-mlflow", {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}),
    "optuna": ("sibeatgan-optuna", {"OPTUNA_STORAGE": "OPTUNA_STORAGE"}),  # postgresql://user:password@host/db
}


def _gpu(task: dsl.PipelineTask, node_selector: dict) -> dsl.PipelineTask:
    """Ask for a GPU and land on the GPU node pool (its label and taint come from infra/)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(GPUS_PER_TASK)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


def _secret(task: dsl.PipelineTask, which: str, optional: bool = False) -> dsl.PipelineTask:
    name, keys = SECRETS[which]
    kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=optional)
    return task


def _resumable(task: dsl.PipelineTask, pvc: str, gpu_type: dict, timeout: str) -> dsl.PipelineTask:
    """A GPU training task: cached (its checkpoints are keyed by content), retried on preemption, resumed from the PVC."""
    task.set_caching_options(True).set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2, backoff_max_duration="600s")
    task.set_memory_request("16G")
    _gpu(task, gpu_type)
    kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=CHECKPOINT_MOUNT)
    return _timeout(task, timeout)


def _timeout(task: dsl.PipelineTask, which: str) -> dsl.PipelineTask:
    """Every task's deadline, and the registry's imagePullSecrets (SIBEATGAN_IMAGE_PULL_SECRETS at compile time)."""
    kubernetes.set_timeout(task, TIMEOUTS[which])
    return with_image_settings(task)


@dsl.pipeline(
    name="si-beatgan",
    description="SI-BeatGAN: MIT-BIH ingest, validation gates, BeatGAN beats, teacher per fold and seed, evaluation, Optuna search "
                "of the distilled student, the student and its no-KD control, the winner on validation registered in MLflow "
                "(alias staging) with its evidence; every step an MLflow run under the pipeline's.",
)
def si_beatgan(
    source: str = "physionet",
    records: List[str] = [],
    data_version: str = "",
    folds: List[int] = [0, 1, 2, 3, 4],
    seeds: List[int] = [0],
    epochs: int = 100,
    config_yaml: str = "",
    device: str = "cuda",
    gpu_type: dict = {"sibeatgan.io/node-pool": "gpu"},
    checkpoint_pvc: str = "sibeatgan-checkpoints",
    checkpoint_root: str = CHECKPOINT_MOUNT,
    trials: int = 24,
    workers: int = 2,
    members_per_worker: int = 4,
    tune_epochs: int = 10,
    student_epochs: int = 50,
    mlflow_uri: str = "http://sibeatgan-mlflow.sibeatgan.svc.cluster.local:5000",
    experiment: str = "si-beatgan",
    model_name: str = "si-beatgan",
    optuna_storage: str = "",
) -> NamedTuple("Outputs", teachers=List[dsl.Metrics], registered=dict):
    """source: physionet, a folder or s3://bucket/prefix; records: empty for the protocol's 44 (ingest copies all);
    data_version: a key of the source's content (e.g. the S3 prefix's version): a new one re-runs cached steps;
    config_yaml: a config file's text (sections per step, as `sibeatgan --config` reads); device: cuda fails loudly
    without a GPU; gpu_type: the node labels of the GPU pool, e.g. add {"nvidia.com/gpu.product":
    "NVIDIA-H100-80GB-HBM3"}; checkpoint_root: under /checkpoints, where checkpoint_pvc is mounted. trials: the study's
    budget (0: no search, no student; the teacher is registered); workers: ParallelFor items on the one study;
    members_per_worker: trials each worker trains at once as one batched group; optuna_storage: empty on a cluster (the
    sibeatgan-optuna secret's database), a *.journal path on a shared filesystem locally; mlflow_uri: the tracking
    server (credentials from the sibeatgan-mlflow secret; empty: no tracking); experiment, model_name: where runs and
    the registered model go. The student and its control are distilled from the teacher of the first fold and seed.
    Returns each teacher's test metrics and the registered version."""
    run = start_run(mlflow_uri=mlflow_uri, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    config_yaml=config_yaml, experiment=experiment,
                    parameters={"source": source, "data_version": data_version, "folds": folds, "seeds": seeds, "epochs": epochs,
                                "trials": trials, "workers": workers, "tune_epochs": tune_epochs, "student_epochs": student_epochs})
    _secret(_timeout(run.set_caching_options(False), "small"), "mlflow", optional=True)
    # every step's MLflow run nests under the pipeline's, which it finds by the KFP run id (start_run's tag)
    tracked = dict(mlflow_uri=mlflow_uri, experiment=experiment, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    raw = ingest(source=source, record_names=records, data_version=data_version, config_yaml=config_yaml).after(run)
    _timeout(raw.set_caching_options(True).set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2), "ingest")
    name, keys = SECRETS["s3"]
    kubernetes.use_secret_as_env(raw, secret_name=name, secret_key_to_env=keys, optional=True)

    gate_records = validate_records(records=raw.outputs["records"], record_names=records, config_yaml=config_yaml, **tracked)
    _secret(_timeout(gate_records.set_caching_options(True), "gate"), "mlflow", optional=True)
    beats = preprocess(records=raw.outputs["records"], record_names=records, config_yaml=config_yaml, **tracked).after(gate_records)
    _secret(_timeout(beats.set_caching_options(True).set_cpu_request("4").set_memory_request("8G"), "preprocess"), "mlflow", optional=True)
    gate_beats = validate_beats(beats=beats.outputs["beats"], config_yaml=config_yaml, **tracked)
    _secret(_timeout(gate_beats.set_caching_options(True), "gate"), "mlflow", optional=True)

    grid = plan_runs(folds=folds, seeds=seeds)
    _timeout(grid.set_caching_options(True), "small")
    with dsl.ParallelFor(grid.output, parallelism=TEACHER_PARALLELISM) as item:
        teacher = train_teacher(beats=beats.outputs["beats"], fold=item.fold, seed=item.seed, epochs=epochs, config_yaml=config_yaml, device=device,
                                checkpoint_root=checkpoint_root, **tracked).after(gate_beats)
        _secret(_resumable(teacher, checkpoint_pvc, gpu_type, "teacher"), "mlflow", optional=True)
        scored = evaluate(beats=beats.outputs["beats"], model=teacher.outputs["model"], config_yaml=config_yaml, **tracked)
        _secret(_timeout(scored.set_caching_options(True).set_memory_request("8G"), "evaluate"), "mlflow", optional=True)

    picked = pick_teacher(teachers=dsl.Collected(teacher.outputs["model"]), evaluations=dsl.Collected(scored.outputs["evaluation"]),
                          folds=folds, seeds=seeds)
    _timeout(picked.set_caching_options(False), "small")
    tune_args = dict(trials=trials, workers=workers, members_per_worker=members_per_worker, optuna_storage=optuna_storage,
                     config_yaml=config_yaml, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    gates = dict(records_report=gate_records.outputs["report"], beats_report=gate_beats.outputs["report"])
    registry = dict(mlflow_uri=mlflow_uri, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, model_name=model_name, experiment=experiment,
                    config_yaml=config_yaml)
    with dsl.If(trials > 0, name="search-and-candidates"):
        study = create_study(teacher=picked.outputs["teacher"], **tracked, **tune_args)
        _secret(_secret(_timeout(study.set_caching_options(False), "small"), "optuna", optional=True), "mlflow", optional=True)
        with dsl.ParallelFor(study.output, parallelism=WORKER_PARALLELISM) as worker:
            search = tune_worker(beats=beats.outputs["beats"], teacher=picked.outputs["teacher"], worker=worker, tune_epochs=tune_epochs,
                                 device=device, mlflow_uri=mlflow_uri, experiment=experiment, **tune_args)
            search.set_caching_options(False).set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2)
            search.set_memory_request("16G")
            _secret(_secret(_timeout(_gpu(search, gpu_type), "search"), "optuna", optional=True), "mlflow", optional=True)
        best = best_config(workers_done=dsl.Collected(search.outputs["trials_out"]), teacher=picked.outputs["teacher"],
                           tune_epochs=tune_epochs, device=device, mlflow_uri=mlflow_uri, experiment=experiment, **tune_args)
        _secret(_secret(_timeout(best.set_caching_options(False), "small"), "optuna", optional=True), "mlflow", optional=True)
        candidates = train_candidates(beats=beats.outputs["beats"], teacher=picked.outputs["teacher"], best=best.outputs["best"],
                                      epochs=student_epochs, device=device, checkpoint_root=checkpoint_root, config_yaml=config_yaml, **tracked)
        _secret(_resumable(candidates, checkpoint_pvc, gpu_type, "candidates"), "mlflow", optional=True)
        student_scored = evaluate(beats=beats.outputs["beats"], model=candidates.outputs["student"], config_yaml=config_yaml, **tracked)
        control_scored = evaluate(beats=beats.outputs["beats"], model=candidates.outputs["control"], config_yaml=config_yaml, **tracked)
        for task in (student_scored, control_scored):
            _secret(_timeout(task.set_caching_options(True).set_memory_request("8G"), "evaluate"), "mlflow", optional=True)
        versus = compare(beats=beats.outputs["beats"], evaluation_a=control_scored.outputs["evaluation"],
                         evaluation_b=student_scored.outputs["evaluation"], config_yaml=config_yaml, **tracked)
        _secret(_timeout(versus.set_caching_options(True), "evaluate"), "mlflow", optional=True)
        won = pick_winner(student=candidates.outputs["student"], control=candidates.outputs["control"],
                          student_evaluation=student_scored.outputs["evaluation"], control_evaluation=control_scored.outputs["evaluation"],
                          comparison=versus.outputs["comparison"])
        _timeout(won.set_caching_options(True), "small")
        winner_registered = register(beats=beats.outputs["beats"], model=won.outputs["winner"], evaluation=won.outputs["evaluation"],
                                     evidence=won.outputs["evidence"], **gates, **registry)
    with dsl.Else(name="teacher-only"):
        teacher_registered = register(beats=beats.outputs["beats"], model=picked.outputs["teacher"], evaluation=picked.outputs["evaluation"],
                                      **gates, **registry)
    for task in (winner_registered, teacher_registered):
        task.set_caching_options(False).set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)
        _secret(_timeout(task, "evaluate"), "mlflow", optional=True)
    Outputs = NamedTuple("Outputs", teachers=List[dsl.Metrics], registered=dict)
    return Outputs(teachers=dsl.Collected(scored.outputs["metrics"]),
                   registered=dsl.OneOf(winner_registered.outputs["Output"], teacher_registered.outputs["Output"]))


if __name__ == "__main__":  # python -m pipelines.si_beatgan [OUT.yaml] (default: the committed pipelines/si_beatgan.yaml)
    compiler.Compiler().compile(si_beatgan, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_suffix(".yaml")))
