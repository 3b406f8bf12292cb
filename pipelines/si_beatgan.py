"""The SI-BeatGAN Kubeflow pipeline: ingest -> validate (gate) -> preprocess -> validate (gate)
-> teacher per (fold, seed) in a ParallelFor -> evaluate.

`python -m pipelines.si_beatgan` (from the repository root) compiles it to pipelines/si_beatgan.yaml,
which is committed; tests/test_pipeline.py recompiles and fails on any difference.

Per step, deliberately:
- caching: on for every step but the teacher (see there); each is a pure function of its inputs and
  config. Ingest's input is a source *name*: PhysioNet's mitdb is versioned and checksummed, but an
  s3:// prefix can change under the same name, so submit such a run with caching disabled.
- retries: ingest twice (network sources), the teacher three times with backoff (GPU nodes are
  often preemptible; it resumes from its checkpoint on the PVC), none elsewhere (a failed gate or
  bad config fails the same way again).
- credentials: Kubernetes secrets as environment variables, never parameters (SECRETS below).
"""


from typing import List

from kfp import compiler, dsl, kubernetes

from components import evaluate, ingest, plan_runs, preprocess, train_teacher, validate_beats, validate_records

GPU_RESOURCE, GPUS_PER_TASK = "nvidia.com/gpu", 1  # static: kfp 2.17 drops pipeline parameters used here inside a ParallelFor
CHECKPOINT_MOUNT = "/checkpoints"  # where the teacher's PVC is mounted; checkpoint_root lives under it
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}  # the GPU pool's taint (infra/)
# secret name -> {secret key: environment variable}; the secrets are created by infra/ (see README).
SECRETS = {
    "s3": ("sibeatgan-s3", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}),
}


def _gpu(task: dsl.PipelineTask, node_selector: dict) -> dsl.PipelineTask:
    """Ask for a GPU and land on the GPU node pool (its label and taint come from infra/)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(GPUS_PER_TASK)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


@dsl.pipeline(
    name="si-beatgan",
    description="SI-BeatGAN: MIT-BIH ingest, validation gates, BeatGAN beats, teacher per fold and seed, evaluation.",
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
) -> List[dsl.Metrics]:
    """source: physionet, a folder or s3://bucket/prefix; records: empty for the protocol's 44 (ingest copies
    all); config_yaml: a config file's text (sections per step, as `sibeatgan --config` reads);
    device: cuda fails loudly without a GPU; gpu_type: the node labels of the GPU pool to run the teacher
    on, e.g. add {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"} to pick a model; checkpoint_root: under
    /checkpoints, where checkpoint_pvc is mounted. Returns each run's test metrics."""
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
    return dsl.Collected(scored.outputs["metrics"])


if __name__ == "__main__":
    from pathlib import Path

    compiler.Compiler().compile(si_beatgan, str(Path(__file__).with_suffix(".yaml")))
