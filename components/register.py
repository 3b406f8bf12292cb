"""The register component: log the winning model with its evaluation, model card and evidence to MLflow and give the
new version alias `staging`; then end the pipeline's MLflow run. And `start_run`: that run, made first.

The tracking URI is a parameter (a server is no secret); its credentials come from the `sibeatgan-mlflow` secret as
MLFLOW_TRACKING_USERNAME/PASSWORD, which MLflow's client reads from the environment.
"""


from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_run(mlflow_uri: str, kfp_run_id: str, kfp_run_name: str = "", config_yaml: str = "", experiment: str = "",
              parameters: dict = {}) -> str:
    """The pipeline run's own MLflow run (tagged with the KFP run id); every step's run nests under it. Returns its id
    ("" when tracking is off or the server is away: the steps then log top-level runs, or none)."""
    from pathlib import Path
    import tempfile

    from sibeatgan.steps.protocol import pipeline_tracking
    from sibeatgan.steps.tracked import start_pipeline_run

    tracking = pipeline_tracking(config_yaml, mlflow_uri, experiment=experiment or None)
    with tempfile.TemporaryDirectory() as tmp:
        run_id = start_pipeline_run(tracking, Path(tmp), kfp_run_id, kfp_run_name, parameters) if tracking else None
    print(f"SIBEATGAN-HEADLINE: MLflow run {run_id} at {mlflow_uri}" if run_id else "SIBEATGAN-HEADLINE: not tracked")
    return run_id or ""


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(beats: Input[Dataset], model: Input[Model], evaluation: Input[Artifact], records_report: Input[HTML],
             beats_report: Input[HTML], registration: Output[Artifact], evidence: Input[Artifact] = None, mlflow_uri: str = "",
             config_yaml: str = "", kfp_run_id: str = "", model_name: str = "", experiment: str = "") -> dict:
    """Register the model (pyfunc, test scores, model card, lineage, the two gates' reports, the evidence of how it won)
    as a new version with alias `staging`; end the pipeline's MLflow run; returns the version."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from sibeatgan.files import write_json
    from sibeatgan.registry import run_register
    from sibeatgan.steps.protocol import pipeline_tracking
    from sibeatgan.steps.tracked import end_pipeline_run
    from sibeatgan.config import TrackingConfig

    conf = pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, model_name=model_name or None, experiment=experiment or None) \
        or TrackingConfig(model_name=model_name or "si-beatgan")
    parent_run_id = conf.parent_run_id or ""
    proof = None
    if evidence is not None:  # the comparison table beside it, at this task's copy of the artifact
        proof = json.loads((Path(evidence.path) / "evidence.json").read_text())
        proof["table"] = str(Path(evidence.path) / "comparison.txt")
    generator = Path(model.path) / "generator.pt" if Path(model.path).is_dir() else Path(model.path)
    with tempfile.TemporaryDirectory() as tmp:  # the gates' verdict and reports, as run_register reads them
        gates = {"records": records_report, "beats": beats_report}
        write_json(Path(tmp) / "validation.json", {"success": all(bool(r.metadata.get("success")) for r in gates.values()),
                                                   "suites": {k: r.metadata.get("suites", []) for k, r in gates.items()}})
        for name, report in gates.items():
            shutil.copyfile(report.path, Path(tmp) / f"validation.{name}.html")
        try:
            result = run_register(conf, generator, Path(evaluation.path), Path(beats.path), Path(registration.path),
                                  validation=Path(tmp) / "validation.json", evidence=proof)
        except BaseException:
            end_pipeline_run(conf, Path(registration.path), parent_run_id, "FAILED")
            raise
    end_pipeline_run(conf, Path(registration.path), parent_run_id, "FINISHED", registered=result)
    summary = {"name": result["name"], "version": int(result["version"]), "alias": "staging", "model_uri": result["model_uri"],
               "run_id": result["run_id"], "kind": result["kind"], "fold": int(result["fold"]), "auc": float(result["auc"]),
               "f1_at_threshold": float(result.get("f1", float("nan"))), "validation": result["validation"], "verdict": result["verdict"],
               "tracking_uri": conf.tracking_uri or "", "parent_run_id": parent_run_id}
    registration.metadata.update(summary)
    print(f"SIBEATGAN-HEADLINE: registered {result['name']} version {result['version']} ({result['kind']}) as staging: {result['verdict']}")
    return summary
