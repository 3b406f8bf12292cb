"""The model users get: an MLflow pyfunc that scores raw ECG or ready beat windows with a generator file.

The preprocessing of the beat dataset travels inside it (the library's own band-pass, R-peak detection,
windows, min-max scaling and int16 quantization, so a record's beats are bit for bit those `preprocess`
writes), with the generator file, its threshold and the package's code. Input: a 2-D float array, either raw
ECG (samples x leads at the dataset's rate, MLII first) or beat windows (n x leads*length). Output: one row per
beat: `beat`, `position` (sample of the beat in the signal; -1 for windows), `score` (the model's anomaly score:
mean squared reconstruction error, or for a student saved with that choice, its teacher-student discrepancy or
their combination), `anomalous` (score >= threshold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.errors import ConfigError

PREPROCESS_KEYS = ("fs", "before", "after", "bandpass_type", "bandpass_low_hz", "bandpass_high_hz", "bandpass_order",
                   "rpeak_engine", "leads", "grouping")


class BeatScorer:
    """Generator + threshold + preprocessing settings: windows of a signal, and their scores (no MLflow).
    `anomaly` (sibeatgan.metrics.AnomalyScore) scores the beats; None: the generator's reconstruction error."""

    def __init__(self, generator: Any, threshold: float, preprocess: dict[str, Any], batch_size: int = 4096, anomaly: Any = None) -> None:
        missing = [k for k in PREPROCESS_KEYS if k not in preprocess]
        if missing:
            raise ConfigError(f"preprocessing settings lack {', '.join(missing)}")
        if anomaly is None:
            from sibeatgan.metrics import AnomalyScore

            anomaly = AnomalyScore(generator)
        self.generator, self.threshold, self.batch_size, self.anomaly = generator, float(threshold), batch_size, anomaly
        self.prep = {k: preprocess[k] for k in PREPROCESS_KEYS}
        if self.prep["before"] + self.prep["after"] != generator.length:
            raise ConfigError(f"windows of {self.prep['before']} + {self.prep['after']} samples, but the model takes {generator.length}")

    @classmethod
    def from_files(cls, generator_path: str | Path, settings_path: str | Path) -> BeatScorer:
        from sibeatgan.modelio import load_score

        anomaly, _ = load_score(generator_path, "cpu")
        settings = json.loads(Path(settings_path).read_text())
        return cls(anomaly.generator, settings["threshold"], settings["preprocess"], anomaly=anomaly)

    @property
    def leads(self) -> int:
        return int(self.generator.nc)

    @property
    def length(self) -> int:
        return int(self.generator.length)

    def filtered(self, signal: np.ndarray) -> np.ndarray:
        """The model's leads (the first `leads` columns) band-passed as preprocess does."""
        from sibeatgan.data import beats

        p = self.prep
        signal = np.asarray(signal, dtype=np.float64)
        if signal.ndim != 2 or signal.shape[1] < self.leads:
            raise ConfigError(f"ECG input must be samples x leads with at least {self.leads} lead(s), got shape {signal.shape}")
        return beats.bandpass(signal[:, : self.leads], p["fs"], p["bandpass_low_hz"], p["bandpass_high_hz"], p["bandpass_order"],
                              p["bandpass_type"])

    def rpeaks(self, signal: np.ndarray) -> np.ndarray:
        """R peaks of the first column (MLII), as preprocess finds them."""
        from sibeatgan.data import rpeaks

        fs = self.prep["fs"]
        return rpeaks.detect_rpeaks(rpeaks.reference_filter(np.asarray(signal, dtype=np.float64)[:, 0], fs), fs,
                                    engine=self.prep["rpeak_engine"])

    def windows(self, signal: np.ndarray, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(beats as the dataset stores them, float32 (n, leads, length); their positions; the filtered signal).
        `positions`: beat samples (e.g. annotations); None: detected R peaks. Windows off the signal's ends are dropped."""
        from sibeatgan.data import artifact, beats

        filtered = self.filtered(signal)
        pos = self.rpeaks(signal) if positions is None else np.asarray(positions, dtype=np.int64)
        pos = pos[beats.window_fits(pos, filtered.shape[0], self.prep["before"], self.prep["after"])]
        w = beats.minmax_scale(beats.cut_windows(filtered, pos, self.prep["before"], self.prep["after"]))
        return artifact.quantize(w).astype(np.float32) / artifact.SCALE, pos, filtered

    def score(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.empty(0, dtype=np.float32)
        return self.anomaly(np.asarray(windows, dtype=np.float32), self.batch_size, "cpu")

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.generator(torch.as_tensor(np.asarray(windows, dtype=np.float32)))[0].numpy()

    def predict(self, data: np.ndarray, kind: str = "auto", threshold: float | None = None) -> Any:
        """The pyfunc's answer as a DataFrame (beat, position, score, anomalous)."""
        import pandas as pd

        x = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data, dtype=np.float64)
        if x.ndim != 2:
            raise ConfigError(f"input must be 2-D (samples x leads, or beats x {self.leads * self.length}), got shape {x.shape}")
        if kind == "auto":
            kind = "beats" if x.shape[1] == self.leads * self.length else "ecg"
        if kind == "beats":
            if x.shape[1] != self.leads * self.length:
                raise ConfigError(f"beat windows must have {self.leads * self.length} columns, got {x.shape[1]}")
            windows, positions = x.reshape(-1, self.leads, self.length).astype(np.float32), np.full(x.shape[0], -1)
        elif kind == "ecg":
            windows, positions, _ = self.windows(x)
        else:
            raise ConfigError(f"input kind {kind!r} is not one of auto, ecg, beats")
        scores = self.score(windows)
        thr = self.threshold if threshold is None else float(threshold)
        return pd.DataFrame({"beat": np.arange(len(scores), dtype=np.int64), "position": positions.astype(np.int64),
                             "score": scores.astype(np.float64), "anomalous": scores >= thr})


def _python_model_class() -> type:
    """The mlflow.pyfunc.PythonModel subclass, made when first needed (mlflow is imported then, not at import)."""
    global _PyfuncModel
    if _PyfuncModel is None:
        import mlflow.pyfunc

        class SIBeatGANModel(mlflow.pyfunc.PythonModel):
            """Scores ECG or beat windows; see sibeatgan.pyfunc."""

            def load_context(self, context):  # noqa: ANN001, ANN202 - MLflow reads type hints as a schema
                self.scorer = BeatScorer.from_files(context.artifacts["generator"], context.artifacts["settings"])

            def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN202
                params = params or {}
                return self.scorer.predict(model_input, params.get("input", "auto"), params.get("threshold"))

        SIBeatGANModel.__module__ = __name__
        SIBeatGANModel.__qualname__ = "SIBeatGANModel"
        globals()["SIBeatGANModel"] = SIBeatGANModel
        _PyfuncModel = SIBeatGANModel
    return _PyfuncModel


_PyfuncModel: type | None = None


def __getattr__(name: str) -> Any:  # cloudpickle finds the class by name when a saved model is loaded
    if name == "SIBeatGANModel":
        return _python_model_class()
    raise AttributeError(name)


def preprocess_settings(dataset_or_config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The preprocessing settings from a dataset folder (its manifest's config) or a PreprocessConfig dict."""
    if isinstance(dataset_or_config, dict):
        conf = dataset_or_config
    else:
        from sibeatgan.data.artifact import read_manifest

        conf = read_manifest(dataset_or_config).get("config") or {}
    missing = [k for k in PREPROCESS_KEYS if k not in conf]
    if missing:
        raise ConfigError(f"{dataset_or_config}: preprocessing config lacks {', '.join(missing)}")
    return {k: (list(conf[k]) if isinstance(conf[k], tuple) else conf[k]) for k in PREPROCESS_KEYS}


def save_model(path: str | Path, generator_path: str | Path, preprocess: dict[str, Any], threshold: float | None = None) -> Path:
    """Write the pyfunc model folder at `path` (signature, input example, the generator and its settings, the code)."""
    import tempfile

    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    import sibeatgan
    from sibeatgan.modelio import load_score

    anomaly, meta = load_score(generator_path, "cpu")
    gen = anomaly.generator
    threshold = meta.get("threshold") if threshold is None else threshold
    if threshold is None:
        raise ConfigError(f"{generator_path} carries no threshold; give one (chosen on validation beats)")
    settings = {"threshold": float(threshold), "preprocess": preprocess_settings(preprocess),
                "model": {"kind": meta.get("kind", "teacher"), "epoch": meta.get("epoch"), "dataset_hash": meta.get("dataset_hash"),
                          "leads": gen.nc, "length": gen.length, "score": anomaly.kind}}
    BeatScorer(gen, threshold, settings["preprocess"], anomaly=anomaly)  # refuse inconsistent settings before writing anything
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, -1))]),
        outputs=Schema([ColSpec("long", "beat"), ColSpec("long", "position"), ColSpec("double", "score"), ColSpec("boolean", "anomalous")]),
        params=ParamSchema([ParamSpec("input", "string", "auto"), ParamSpec("threshold", "double", float(threshold))]),
    )
    example = np.tanh(np.sin(np.linspace(0, 6 * np.pi, gen.nc * gen.length)))[None].repeat(2, 0)
    with tempfile.TemporaryDirectory() as tmp:
        settings_path = Path(tmp) / "settings.json"
        settings_path.write_text(json.dumps(settings, indent=2))
        mlflow.pyfunc.save_model(
            str(path), python_model=_python_model_class()(), artifacts={"generator": str(generator_path), "settings": str(settings_path)},
            code_paths=[str(Path(sibeatgan.__file__).parent)], signature=signature, input_example=example,
            pip_requirements=_requirements(),
        )
    return Path(path)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "numpy", "scipy", "pandas", "wfdb"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return out


def load_scorer(model_uri: str) -> BeatScorer:
    """The BeatScorer inside a logged or registered model (e.g. models:/si-beatgan@production)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    return model.unwrap_python_model().scorer


def log_model(tracker: Any, generator_path: str | Path, preprocess: dict[str, Any] | str | Path, local_dir: str | Path,
              threshold: float | None = None, artifact_path: str = "model") -> str:
    """Save the model at `local_dir` (the local copy), log it to the tracker's run; returns its runs:/ URI once
    sent (the tracker sends on its next flush; call `tracker.flush(final=True)` to be sure)."""
    import shutil

    local_dir = Path(local_dir)
    if local_dir.exists():
        shutil.rmtree(local_dir)
    save_model(local_dir, generator_path, preprocess if isinstance(preprocess, dict) else preprocess_settings(preprocess), threshold)
    tracker.log_artifact(local_dir, artifact_path)
    tracker.flush()
    return f"runs:/{tracker.run_id}/{artifact_path}"
