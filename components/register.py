"""The register component: log the model with its evaluation to MLflow and give the new version alias `staging`.

The tracking URI is a parameter (a server is no secret); its credentials come from the `sibeatgan-mlflow`
secret as MLFLOW_TRACKING_USERNAME/PASSWORD, which MLflow's client reads from the environment.
"""


from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(beats: Input[Dataset], model: Input[Model], evaluation: Input[Artifact], records_report: Input[HTML],
             beats_report: Input[HTML], registration: Output[Artifact], mlflow_uri: str = "", config_yaml: str = "") -> dict:
    """Register the model (pyfunc, test scores, lineage, the two gates' reports) as a new version with alias `staging`;
    returns the version."""
    import shutil
    import tempfile
    from pathlib import Path

    from sibeatgan.config import TrackingConfig
    from sibeatgan.files import write_json
    from sibeatgan.pipeline import step_config
    from sibeatgan.registry import run_register

    conf = step_config(TrackingConfig, config_yaml, tracking_uri=mlflow_uri or None)
    generator = Path(model.path) / "generator.pt" if Path(model.path).is_dir() else Path(model.path)
    with tempfile.TemporaryDirectory() as tmp:  # the gates' verdict and reports, as run_register reads them
        gates = {"records": records_report, "beats": beats_report}
        write_json(Path(tmp) / "validation.json", {"success": all(bool(r.metadata.get("success")) for r in gates.values()),
                                                   "suites": {k: r.metadata.get("suites", []) for k, r in gates.items()}})
        for name, report in gates.items():
            shutil.copyfile(report.path, Path(tmp) / f"validation.{name}.html")
        result = run_register(conf, generator, Path(evaluation.path), Path(beats.path), Path(registration.path),
                              validation=Path(tmp) / "validation.json")
    summary = {"name": result["name"], "version": int(result["version"]), "alias": "staging", "model_uri": result["model_uri"],
               "run_id": result["run_id"], "kind": str(model.metadata.get("kind", "teacher")), "fold": int(result["fold"]),
               "auc": float(result["auc"]), "validation": result["validation"], "tracking_uri": conf.tracking_uri or ""}
    registration.metadata.update(summary)
    return summary
