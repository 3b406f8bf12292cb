"""The SI-BeatGAN Kubeflow pipeline: ingest -> validate (gate) -> preprocess (beats and their split) -> validate (gate)
-> teacher per (fold, seed) in a ParallelFor -> evaluate -> [trials > 0: Optuna study -> workers in a ParallelFor on
one storage -> best config -> student -> evaluate -> compare with its teacher] -> register (alias `staging`: the student if one was trained,
else the teacher).

`python -m pipelines.si_beatgan` (from the repository root) compiles it to pipelines/si_beatgan.yaml,
which is committed; tests/test_pipeline.py recompiles and fails on any difference.

Per step, deliberately:
- caching: on for every step but the teacher (see there); each is a pure function of its inputs and
  config. Ingest's input is a source *name*: PhysioNet's mitdb is versioned and checksummed, but an
  s3:// prefix can change under the same name, so submit such a run with caching disabled.
- retries: ingest twice (network sources), the teacher and the student three times with backoff (GPU
  nodes are often preemptible; they resume from their checkpoints on the PVC), each Optuna worker twice
  (it rejoins the study; the trials a dead worker held are retried once their heartbeat is stale),
  registration twice (the tracking server may blink), none elsewhere (a failed gate or bad config
  fails the same way again).
- the search, the student and registration are not cached: the study is named after the run (a
  cache hit would point at another run's study) and a registration must happen each time.
- credentials: Kubernetes secrets as environment variables, never parameters (SECRETS below).
"""


from typing import List, NamedTuple

from kfp import compiler, dsl, kubernetes

from components import (best_config, compare, create_study, evaluate, ingest, pick_teacher, plan_runs, preprocess, register, train_student,
                        train_teacher, tune_worker, validate_beats, validate_records)

GPU_RESOURCE, GPUS_PER_TASK = "nvidia.com/gpu", 1  # static: kfp 2.17 drops pipeline parameters used here inside a ParallelFor
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


def _resumable(task: dsl.PipelineTask, pvc: str, gpu_type: dict) -> dsl.PipelineTask:
    """A GPU training task: not cached (its checkpoint key is the run id), retried on preemption, resumed from the PVC."""
    task.set_caching_options(False).set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2, backoff_max_duration="600s")
    task.set_memory_request("16G")
    _gpu(task, gpu_type)
    kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=CHECKPOINT_MOUNT)
    return task


@dsl.pipeline(
    name="si-beatgan",
    description="SI-BeatGAN: MIT-BIH ingest, validation gates, BeatGAN beats, teacher per fold and seed, evaluation, "
                "Optuna search of the distilled student, student, evaluation, MLflow registration (alias staging).",
)
def si_beatgan(
    source: str = "physionet",
    records: List[str] = [],
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
    optuna_storage: str = "",
) -> NamedTuple("Outputs", teachers=List[dsl.Metrics], registered=dict):
    """source: physionet, a folder or s3://bucket/prefix; records: empty for the protocol's 44 (ingest copies
    all); config_yaml: a config file's text (sections per step, as `sibeatgan --config` reads);
    device: cuda fails loudly without a GPU; gpu_type: the node labels of the GPU pool to run the teacher
    on, e.g. add {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"} to pick a model; checkpoint_root: under
    /checkpoints, where checkpoint_pvc is mounted. trials: the study's budget (0: no search, no student; the teacher
    is registered); workers: ParallelFor items on the one study; members_per_worker: trials each worker trains at
    once as one batched group; optuna_storage: empty on a cluster (the sibeatgan-optuna secret's database), a
    *.journal path on a shared filesystem locally; mlflow_uri: the tracking server (credentials from the
    sibeatgan-mlflow secret). The student is distilled from the teacher of the first fold and first seed.
    Returns each teacher's test metrics and the registered version."""
    raw = ingest(source=source, record_names=records, config_yaml=config_yaml)
    raw.set_caching_options(True).set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)
    name, keys = SECRETS["s3"]
    kubernetes.use_secret_as_env(raw, secret_name=name, secret_key_to_env=keys, optional=True)

    gate_records = validate_records(records=raw.outputs["records"], record_names=records, config_yaml=config_yaml)
    gate_records.set_caching_options(True)
    beats = preprocess(records=raw.outputs["records"], record_names=records, config_yaml=config_yaml).after(gate_records)
    beats.set_caching_options(True).set_cpu_request("4").set_memory_request("8G")
    gate_beats = validate_beats(beats=beats.outputs["beats"], config_yaml=config_yaml)
    gate_beats.set_caching_options(True)

    grid = plan_runs(folds=folds, seeds=seeds)
    grid.set_caching_options(True)
    with dsl.ParallelFor(grid.output) as run:
        teacher = train_teacher(
            beats=beats.outputs["beats"], fold=run.fold, seed=run.seed, epochs=epochs, config_yaml=config_yaml,
            device=device, checkpoint_root=checkpoint_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).after(gate_beats)
        # Not cached: its run_id input (the key of its checkpoint folder) differs in every run, so a cache
        # entry could never be hit; a resubmitted run trains afresh, a retried task resumes.
        teacher.set_caching_options(False).set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2,
                                                     backoff_max_duration="600s")
        teacher.set_memory_request("16G")
        _gpu(teacher, gpu_type)
        kubernetes.mount_pvc(teacher, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
        scored = evaluate(beats=beats.outputs["beats"], model=teacher.outputs["model"], config_yaml=config_yaml)
        scored.set_caching_options(True).set_memory_request("8G")

    picked = pick_teacher(teachers=dsl.Collected(teacher.outputs["model"]), evaluations=dsl.Collected(scored.outputs["evaluation"]),
                          folds=folds, seeds=seeds)
    picked.set_caching_options(False)
    tune_args = dict(trials=trials, workers=workers, members_per_worker=members_per_worker, optuna_storage=optuna_storage,
                     config_yaml=config_yaml, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    with dsl.If(trials > 0, name="search-and-student"):
        study = create_study(teacher=picked.outputs["teacher"], mlflow_uri=mlflow_uri, **tune_args)
        _secret(_secret(study.set_caching_options(False), "optuna", optional=True), "mlflow", optional=True)
        with dsl.ParallelFor(study.output) as worker:
            search = tune_worker(beats=beats.outputs["beats"], teacher=picked.outputs["teacher"], worker=worker, tune_epochs=tune_epochs,
                                 device=device, mlflow_uri=mlflow_uri, **tune_args)
            search.set_caching_options(False).set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2)
            search.set_memory_request("16G")
            _secret(_secret(_gpu(search, gpu_type), "optuna", optional=True), "mlflow", optional=True)
        best = best_config(workers_done=dsl.Collected(search.outputs["trials_out"]), teacher=picked.outputs["teacher"],
                           tune_epochs=tune_epochs, device=device, **tune_args)
        _secret(best.set_caching_options(False), "optuna", optional=True)
        student = train_student(beats=beats.outputs["beats"], teacher=picked.outputs["teacher"], best=best.outputs["best"],
                                epochs=student_epochs, device=device, checkpoint_root=checkpoint_root,
                                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        _resumable(student, checkpoint_pvc, gpu_type)
        student_scored = evaluate(beats=beats.outputs["beats"], model=student.outputs["model"], config_yaml=config_yaml)
        student_scored.set_caching_options(True).set_memory_request("8G")
        versus = compare(beats=beats.outputs["beats"], evaluation_a=picked.outputs["evaluation"],
                         evaluation_b=student_scored.outputs["evaluation"], config_yaml=config_yaml)
        versus.set_caching_options(True)
        student_registered = register(beats=beats.outputs["beats"], model=student.outputs["model"],
                                      evaluation=student_scored.outputs["evaluation"], records_report=gate_records.outputs["report"],
                                      beats_report=gate_beats.outputs["report"], mlflow_uri=mlflow_uri, config_yaml=config_yaml)
    with dsl.Else(name="teacher-only"):
        teacher_registered = register(beats=beats.outputs["beats"], model=picked.outputs["teacher"],
                                      evaluation=picked.outputs["evaluation"], records_report=gate_records.outputs["report"],
                                      beats_report=gate_beats.outputs["report"], mlflow_uri=mlflow_uri, config_yaml=config_yaml)
    for task in (student_registered, teacher_registered):
        task.set_caching_options(False).set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)
        _secret(task, "mlflow", optional=True)
    Outputs = NamedTuple("Outputs", teachers=List[dsl.Metrics], registered=dict)
    return Outputs(teachers=dsl.Collected(scored.outputs["metrics"]),
                   registered=dsl.OneOf(student_registered.outputs["Output"], teacher_registered.outputs["Output"]))


if __name__ == "__main__":
    from pathlib import Path

    compiler.Compiler().compile(si_beatgan, str(Path(__file__).with_suffix(".yaml")))
