"""The model users get: an MLflow pyfunc that scores raw ECG or ready beat windows with a generator file.

The preprocessing of the beat dataset travels inside it (the library's own band-pass, R-peak detection,
windows, min-max scaling and int16 quantization), with the generator file, its threshold and the package's code.

Input: a float array (float64 or float32) or a DataFrame of numeric columns, 2-D: either raw ECG (samples x
leads, one column per lead, MLII first) or beat windows (n x leads*length, as the dataset stores them). Anything
else is refused in one line naming the column or shape; so are NaN or inf samples, a non-finite threshold and an
ECG too short or flat to hold a beat. Params: `threshold`; `input` (auto, ecg, beats); `fs`, the ECG's sampling
rate (default the model's, 360 Hz; another rate is resampled to the model's as `preprocess` does,
scipy.signal.resample_poly); `positions`, the samples of the beats when the user has them (annotations).

Where the beats are: training and evaluation centre windows on *annotated* beats. Given `positions`, the model
scores exactly those windows (bit for bit the beats `preprocess` writes for the same record and positions).
Without them it centres windows on the R peaks it detects, which coincide with the annotation for only part of the
beats (mostly within a few samples): the scores then differ from the evaluated ones, and so does the AUC
(bench/served.md measures both on the same records).

Output: one row per beat: `beat`, `position` (sample of the beat in the input signal, at its own rate; -1 for
windows), `score` (the model's anomaly score: mean squared reconstruction error, or for a student saved with that
choice, its teacher-student discrepancy or their combination), `anomalous` (score >= threshold).
"""

from __future__ import annotations

import json
import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

PREPROCESS_KEYS = ("fs", "before", "after", "bandpass_type", "bandpass_low_hz", "bandpass_high_hz", "bandpass_order",
                   "rpeak_engine", "leads", "grouping")


def finite_threshold(value: Any, what: str = "threshold") -> float:
    """`value` as a float; a threshold that is not a finite number (NaN, inf, text) is refused."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(out):
        why = f": every beat would be {'anomalous' if out == -math.inf else 'normal'}" if "threshold" in what else ""
        raise ConfigError(f"{what} {value!r} is not a finite number{why}")
    return out


def resample_ratio(fs_from: float, fs_to: float) -> Fraction:
    """fs_to / fs_from as the fraction `preprocess` resamples by (scipy.signal.resample_poly up/down)."""
    return Fraction(fs_to).limit_denominator(1000) / Fraction(fs_from).limit_denominator(1000)


def as_matrix(data: Any) -> np.ndarray:
    """The pyfunc's input as a 2-D float64 array: a numeric array (float, int) or a DataFrame of numeric columns."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        for name in data.columns:
            dt = data[name].dtype
            if dt.kind not in "fiu":
                raise ConfigError(f"input column {name!r} holds {dt}, not numbers: give samples (or window values) as floats")
        return data.to_numpy(dtype=np.float64)
    if not isinstance(data, (np.ndarray, list, tuple)):
        raise ConfigError(f"input must be a float array or a DataFrame of numeric columns, got {type(data).__name__}")
    x = np.asarray(data)
    if x.dtype.kind not in "fiu":
        raise ConfigError(f"input array of dtype {x.dtype} and shape {x.shape}: expected numbers (float64 or float32)")
    if x.ndim != 2:
        return x  # predict names the shape it expects
    return x.astype(np.float64, copy=False)


def check_finite(x: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ConfigError(f"{what} holds {int(bad.sum())} NaN or inf value(s), the first at row {row}, column {col}: "
                          f"cut or repair that stretch before scoring")


class EcgBeats:
    """Beats of one raw ECG: `windows` (n, leads, length) as the dataset stores them; `positions` in the input's
    samples; `at_model` the same positions at the model's rate, in `filtered` (the model's leads band-passed at
    that rate); `ratio` model rate / input rate (1 when equal); `kept`: which given positions were scored (None:
    detected beats), the others lie too near an end for a window."""

    def __init__(self, windows: np.ndarray, positions: np.ndarray, at_model: np.ndarray, filtered: np.ndarray, ratio: Fraction,
                 kept: np.ndarray | None) -> None:
        self.windows, self.positions, self.at_model, self.filtered, self.ratio, self.kept = \
            windows, positions, at_model, filtered, ratio, kept

    @property
    def dropped(self) -> int:
        return 0 if self.kept is None else int((~self.kept).sum())


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
        self.generator, self.batch_size, self.anomaly = generator, batch_size, anomaly
        self.threshold = finite_threshold(threshold, "the model's threshold")
        self.prep = {k: preprocess[k] for k in PREPROCESS_KEYS}
        if self.prep["before"] + self.prep["after"] != generator.length:
            raise ConfigError(f"windows of {self.prep['before']} + {self.prep['after']} samples, but the model takes {generator.length}")

    @classmethod
    def from_files(cls, generator_path: str | Path, settings_path: str | Path) -> BeatScorer:
        settings = json.loads(Path(settings_path).read_text())
        return cls.from_generator(generator_path, settings["preprocess"], settings["threshold"])

    @classmethod
    def from_generator(cls, generator_path: str | Path, preprocess: dict[str, Any], threshold: float | None = None) -> BeatScorer:
        """A generator file with preprocessing settings; `threshold` None: the one saved in the file."""
        from sibeatgan.modelio import load_score

        anomaly, meta = load_score(generator_path, "cpu")
        threshold = meta.get("threshold") if threshold is None else threshold
        if threshold is None:
            raise ConfigError(f"{generator_path} carries no threshold; give one (chosen on validation beats)")
        return cls(anomaly.generator, threshold, preprocess, anomaly=anomaly)

    @property
    def leads(self) -> int:
        return int(self.generator.nc)

    @property
    def length(self) -> int:
        return int(self.generator.length)

    @property
    def min_samples(self) -> int:
        """The shortest ECG (at the model's rate) the filters take and a window fits in."""
        from sibeatgan.data import rpeaks

        p, fs = self.prep, float(self.prep["fs"])
        pads = [3 * len(rpeaks.fir_taps(fs, *rpeaks.REFERENCE_BAND_HZ, int(0.3 * fs)))]
        if p["bandpass_type"] == "fir":
            pads.append(3 * len(rpeaks.fir_taps(fs, p["bandpass_low_hz"], p["bandpass_high_hz"], p["bandpass_order"])))
        elif p["bandpass_type"] == "butter":
            pads.append(3 * (4 * p["bandpass_order"] + 1))
        return max(*pads, self.prep["before"] + self.prep["after"]) + 1

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
        """(beats as the dataset stores them, float32 (n, leads, length); their positions; the filtered signal) of an
        ECG at the model's rate. `positions`: beat samples (e.g. annotations); None: detected R peaks. Windows off the
        signal's ends are dropped; none left is an error that says why."""
        from sibeatgan.data import artifact, beats

        signal = np.asarray(signal, dtype=np.float64)
        fs, n = float(self.prep["fs"]), signal.shape[0]
        if signal.ndim != 2 or signal.shape[1] < self.leads:
            raise ConfigError(f"ECG input must be samples x leads with at least {self.leads} lead(s), got shape {signal.shape}")
        if n < self.min_samples:
            raise ConfigError(f"ECG of {n} samples ({n / fs:.2f} s at {fs:g} Hz) is too short to hold a beat: the model needs at "
                              f"least {self.min_samples} ({self.min_samples / fs:.2f} s)")
        filtered = self.filtered(signal)
        pos = self.rpeaks(signal) if positions is None else np.asarray(positions, dtype=np.int64)
        pos = pos[beats.window_fits(pos, filtered.shape[0], self.prep["before"], self.prep["after"])]
        if not len(pos):
            if positions is not None:
                raise ConfigError(f"none of the {len(positions)} beat position(s) lies {self.prep['before']} samples from the start "
                                  f"and {self.prep['after']} from the end of the {n}-sample ECG: no window to score")
            span = float(np.ptp(signal[:, 0]))
            raise ConfigError(f"no beat detected in {n} samples ({n / fs:.2f} s at {fs:g} Hz) of ECG"
                              + (" (flat: every sample of lead 1 is equal)" if span == 0 else "")
                              + ": too short or too flat to hold a beat whose window fits")
        w = beats.minmax_scale(beats.cut_windows(filtered, pos, self.prep["before"], self.prep["after"]))
        return artifact.quantize(w).astype(np.float32) / artifact.SCALE, pos, filtered

    def ecg_beats(self, signal: np.ndarray, fs: float | None = None, positions: Any = None) -> EcgBeats:
        """The beats of raw ECG `signal` (samples x leads at `fs` Hz, default the model's): NaN or inf in the model's
        leads refused; another rate resampled to the model's as preprocess does; `positions` (beat samples in the
        input, e.g. annotations) or, when None or empty, the detected R peaks."""
        x = np.asarray(signal)
        if x.ndim != 2 or x.shape[1] < self.leads:
            raise ConfigError(f"ECG input must be samples x leads with at least {self.leads} lead(s), got shape {x.shape}")
        x = x.astype(np.float64, copy=False)
        check_finite(x[:, : self.leads], "ECG input")
        model_fs = float(self.prep["fs"])
        fs = model_fs if fs is None else finite_threshold(fs, "sampling rate fs")
        if fs <= 0:
            raise ConfigError(f"sampling rate fs {fs:g} Hz is not positive")
        ratio = Fraction(1) if fs == model_fs else resample_ratio(fs, model_fs)
        given = None
        if positions is not None and len(positions):
            given = np.asarray(positions)
            if given.ndim != 1 or given.dtype.kind not in "iu":
                raise ConfigError(f"positions must be a list of integer sample indices, got {given.dtype} of shape {given.shape}")
            given = given.astype(np.int64)
            outside = (given < 0) | (given >= x.shape[0])
            if outside.any():
                raise ConfigError(f"{int(outside.sum())} position(s) lie outside the {x.shape[0]}-sample ECG, the first "
                                  f"{int(given[outside][0])}")
        if ratio != 1:
            from scipy.signal import resample_poly

            if x.shape[0] * ratio < self.min_samples:
                raise ConfigError(f"ECG of {x.shape[0]} samples ({x.shape[0] / fs:.2f} s at {fs:g} Hz) is too short to hold a beat: "
                                  f"the model needs at least {self.min_samples / model_fs:.2f} s")
            x = resample_poly(x[:, : self.leads], ratio.numerator, ratio.denominator, axis=0)
            log.info("ECG at %g Hz resampled to the model's %g Hz (x %s)", fs, model_fs, ratio)
        at_model = None if given is None else np.minimum(np.rint(given * float(ratio)).astype(np.int64), x.shape[0] - 1)
        windows, kept, filtered = self.windows(x, at_model)
        if given is None:
            out = kept if ratio == 1 else np.rint(kept / float(ratio)).astype(np.int64)
            fits = None
        else:
            from sibeatgan.data import beats

            fits = beats.window_fits(at_model, x.shape[0], self.prep["before"], self.prep["after"])
            out = given[fits]
        return EcgBeats(windows, out, kept, filtered, ratio, fits)

    def score(self, windows: np.ndarray) -> np.ndarray:
        """The anomaly score of each window; a non-finite score (a broken model) is an error, never a verdict."""
        if len(windows) == 0:
            return np.empty(0, dtype=np.float32)
        scores = np.asarray(self.anomaly(np.asarray(windows, dtype=np.float32), self.batch_size, "cpu"))
        bad = ~np.isfinite(scores)
        if bad.any():
            raise CheckpointError(f"the model gives {int(bad.sum())} of {len(scores)} beat(s) a non-finite score (the first: beat "
                                  f"{int(np.flatnonzero(bad)[0])}): its weights are broken; no beat is judged")
        return scores

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.generator(torch.as_tensor(np.asarray(windows, dtype=np.float32)))[0].numpy()

    def predict(self, data: Any, kind: str = "auto", threshold: float | None = None, fs: float | None = None,
                positions: Any = None) -> Any:
        """The pyfunc's answer as a DataFrame (beat, position, score, anomalous); see the module's docstring."""
        import pandas as pd

        x = as_matrix(data)
        width = self.leads * self.length
        if x.ndim != 2:
            raise ConfigError(f"input must be 2-D (samples x leads, or beats x {width}), got shape {x.shape}")
        thr = self.threshold if threshold is None else finite_threshold(threshold)
        if kind == "auto":
            kind = "beats" if x.shape[1] == width else "ecg"
        if kind == "beats":
            if x.shape[1] != width:
                raise ConfigError(f"beat windows must have {width} columns, got shape {x.shape}")
            if positions is not None and len(positions):
                raise ConfigError("positions apply to raw ECG input, not to beat windows")
            check_finite(x, "beat windows")
            windows, out = x.reshape(-1, self.leads, self.length).astype(np.float32), np.full(x.shape[0], -1)
        elif kind == "ecg":
            b = self.ecg_beats(x, fs, positions)
            windows, out = b.windows, b.positions
        else:
            raise ConfigError(f"input kind {kind!r} is not one of auto, ecg, beats")
        scores = self.score(windows)
        return pd.DataFrame({"beat": np.arange(len(scores), dtype=np.int64), "position": out.astype(np.int64),
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
                return self.scorer.predict(model_input, params.get("input", "auto"), params.get("threshold"), params.get("fs"),
                                           params.get("positions"))

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
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    import sibeatgan
    from sibeatgan.modelio import load_score

    anomaly, meta = load_score(generator_path, "cpu")
    gen = anomaly.generator
    threshold = meta.get("threshold") if threshold is None else threshold
    if threshold is None:
        raise ConfigError(f"{generator_path} carries no threshold; give one (chosen on validation beats)")
    threshold = finite_threshold(threshold)
    settings = {"threshold": threshold, "preprocess": preprocess_settings(preprocess),
                "model": {"kind": meta.get("kind", "teacher"), "epoch": meta.get("epoch"), "dataset_hash": meta.get("dataset_hash"),
                          "leads": gen.nc, "length": gen.length, "score": anomaly.kind}}
    BeatScorer(gen, threshold, settings["preprocess"], anomaly=anomaly)  # refuse inconsistent settings before writing anything
    # No input schema: MLflow's tensor schema takes one dtype only (float32 refused where it says float64) and turns a
    # DataFrame into a tensor of that dtype; a column schema drops every column past those it names. The model checks
    # its input itself (BeatScorer.predict: shape, numeric columns, finite values) and says what is wrong in one line.
    signature = ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("long", "beat"), ColSpec("long", "position"), ColSpec("double", "score"), ColSpec("boolean", "anomalous")]),
        params=ParamSchema([ParamSpec("input", "string", "auto"), ParamSpec("threshold", "double", float(threshold)),
                            ParamSpec("fs", "double", float(settings["preprocess"]["fs"])),
                            ParamSpec("positions", "long", [], shape=(-1,))]),
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
