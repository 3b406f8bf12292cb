"""Data components: synth, ingest, the two validation gates, preprocess.

Each is a lightweight component on IMAGE (sibeatgan is installed there, so nothing is pip-installed
at run time); imports live in the function body because KFP ships only the body to the container.
"""


from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def synth(database: Output[Dataset], config_yaml: str = ""):
    """A synthetic MIT-BIH-like WFDB database (the `synth` section of config_yaml)."""
    from pathlib import Path

    from sibeatgan.config import SynthConfig
    from sibeatgan.data.synth import run_synth
    from sibeatgan.steps.protocol import step_config

    result = run_synth(step_config(SynthConfig, config_yaml), Path(database.path))
    database.metadata.update(records=result["records"], beats=result["beats"], seed=result["seed"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(source: str, records: Output[Dataset], record_names: List[str] = [], data_version: str = "", config_yaml: str = ""):
    """Copy the WFDB records of `source` (physionet, a folder, s3://bucket/prefix) with checksums verified. `data_version`
    is part of the task's cache key only: a new one for a source whose content changed under the same name."""
    from pathlib import Path

    from sibeatgan.config import IngestConfig
    from sibeatgan.data.sources import run_ingest
    from sibeatgan.steps.protocol import step_config

    conf = step_config(IngestConfig, config_yaml, source=source, records=list(record_names) or None)
    result = run_ingest(conf, Path(records.path))
    records.metadata.update({k: result[k] for k in ("source", "records", "n_files", "bytes", "checksums_verified")})
    records.metadata.update(data_version=data_version)
    print(f"SIBEATGAN-HEADLINE: {len(result['records'])} record(s), {result['n_files']} file(s) from {result['source']}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_records(records: Input[Dataset], report: Output[HTML], record_names: List[str] = [], config_yaml: str = "",
                     mlflow_uri: str = "", kfp_run_id: str = "", experiment: str = ""):
    """Gate 1: record-level expectations; raises (failing the run) when any fails, after writing the report."""
    import shutil
    import tempfile
    from pathlib import Path

    from sibeatgan.config import ValidateConfig
    from sibeatgan.data.validation import run_validate
    from sibeatgan.steps.protocol import pipeline_tracking, step_config
    from sibeatgan.steps.tracked import log_step

    conf = step_config(ValidateConfig, config_yaml, records=list(record_names) or None)
    with tempfile.TemporaryDirectory() as tmp:
        result = None
        try:
            result = run_validate(conf, Path(records.path), None, Path(tmp))
        finally:
            if (Path(tmp) / "validation.html").is_file():
                shutil.copyfile(Path(tmp) / "validation.html", report.path)
            log_step(pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None), "validate", conf, Path(tmp),
                     {"success": float(bool(result and result["success"]))},
                     (Path(tmp) / "validation.html", Path(tmp) / "validation.json"), run_name="validate-records")
    report.metadata.update(success=result["success"], suites=[s["suite"] for s in result["suites"]])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(records: Input[Dataset], beats: Output[Dataset], record_names: List[str] = [], config_yaml: str = "", mlflow_uri: str = "",
               kfp_run_id: str = "", experiment: str = ""):
    """Beats by the BeatGAN protocol with their folds: the versioned beat dataset."""
    import tempfile
    from pathlib import Path

    from sibeatgan.config import PreprocessConfig
    from sibeatgan.data.preprocess import run_preprocess
    from sibeatgan.steps.protocol import pipeline_tracking, step_config
    from sibeatgan.steps.tracked import log_step

    conf = step_config(PreprocessConfig, config_yaml, records=list(record_names) or None)
    manifest = run_preprocess(conf, Path(records.path), Path(beats.path))
    with tempfile.TemporaryDirectory() as tmp:  # the run's journal; the dataset folder holds the dataset only
        log_step(pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None), "preprocess", conf, Path(tmp),
                 {f"count_{c}": n for c, n in manifest["counts"].items()} | {"n_beats": manifest["n_beats"]},
                 (Path(beats.path) / "manifest.json",), manifest["content_hash"], manifest.get("default_split", {}).get("hash"))
    beats.metadata.update(n_beats=manifest["n_beats"], counts=manifest["counts"], content_hash=manifest["content_hash"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_beats(beats: Input[Dataset], report: Output[HTML], config_yaml: str = "", mlflow_uri: str = "", kfp_run_id: str = "", experiment: str = ""):
    """Gate 2: beat-level expectations (window, range, labels, class counts); raises when any fails."""
    import shutil
    import tempfile
    from pathlib import Path

    from sibeatgan.config import ValidateConfig
    from sibeatgan.data.validation import run_validate
    from sibeatgan.steps.protocol import pipeline_tracking, step_config
    from sibeatgan.steps.tracked import log_step

    conf = step_config(ValidateConfig, config_yaml)
    with tempfile.TemporaryDirectory() as tmp:
        result = None
        try:
            result = run_validate(conf, None, Path(beats.path), Path(tmp))
        finally:
            if (Path(tmp) / "validation.html").is_file():
                shutil.copyfile(Path(tmp) / "validation.html", report.path)
            log_step(pipeline_tracking(config_yaml, mlflow_uri, kfp_run_id, experiment=experiment or None), "validate", conf, Path(tmp),
                     {"success": float(bool(result and result["success"]))},
                     (Path(tmp) / "validation.html", Path(tmp) / "validation.json"), run_name="validate-beats")
    report.metadata.update(success=result["success"], suites=[s["suite"] for s in result["suites"]])
