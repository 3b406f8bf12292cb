"""Typed configuration, one dataclass per step; defaults live here and nowhere else.

A YAML file maps one-to-one onto a dataclass (unknown keys are refused), and
command-line overrides are `key=value` strings coerced to the field's type.
The CLI, the KFP components, the benchmarks and the tests all build configs
through `load_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from sibeatgan.errors import ConfigError

# The 48 MIT-BIH records; the four with paced beats are left out of every protocol.
MITDB_RECORDS: tuple[str, ...] = (
    "100", "101", "102", "103", "104", "105", "106", "107", "108", "109",
    "111", "112", "113", "114", "115", "116", "117", "118", "119", "121",
    "122", "123", "124", "200", "201", "202", "203", "205", "207", "208",
    "209", "210", "212", "213", "214", "215", "217", "219", "220", "221",
    "222", "223", "228", "230", "231", "232", "233", "234",
)
PACED_RECORDS: tuple[str, ...] = ("102", "104", "107", "217")
BEATGAN_RECORDS: tuple[str, ...] = tuple(r for r in MITDB_RECORDS if r not in PACED_RECORDS)
# de Chazal et al. (2004) inter-patient split.
DS1_RECORDS: tuple[str, ...] = (
    "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
    "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)
DS2_RECORDS: tuple[str, ...] = (
    "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
    "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)


@dataclass
class IngestConfig:
    """Copy a WFDB database from a source (physionet, a folder, s3://) into a local folder."""

    source: str = "physionet"
    database: str = "mitdb"
    records: tuple[str, ...] = ()  # empty: every record the source has
    verify_checksums: bool = True
    s3_endpoint_url: str | None = None  # e.g. a MinIO or moto server; None: AWS defaults
    cache_dir: str = "~/.cache/sibeatgan"


@dataclass
class PreprocessConfig:
    """Beat extraction by the BeatGAN protocol (DESIGN.md, 'Evaluation protocol')."""

    records: tuple[str, ...] = BEATGAN_RECORDS  # records missing from the source are an error
    leads: tuple[str, ...] = ("MLII",)  # ("MLII", "V1") style names, or ("all",) for both columns
    fs: int = 360
    on_other_fs: Literal["refuse", "resample"] = "refuse"
    before: int = 140
    after: int = 180
    # The reference's filter (biosppy 0.6's ecg()): FIR band-pass 3-45 Hz, 0.3 s of taps, forward-backward.
    bandpass_type: Literal["fir", "butter", "none"] = "fir"
    bandpass_low_hz: float = 3.0
    bandpass_high_hz: float = 45.0
    bandpass_order: int = 108  # FIR: taps (made odd); butter: filter order
    rpeak_engine: Literal["fast", "biosppy"] = "fast"  # the same peaks; biosppy's own code is ~10x slower
    rpeak_check: bool = True
    rpeak_tolerance: int = 10  # samples between an N/L/R annotation and a detected R peak
    grouping: Literal["beatgan", "aami"] = "beatgan"
    n_folds: int = 5
    seed: int = 0


@dataclass
class ValidateConfig:
    """The validation gate: record-level and beat-level expectations."""

    records: tuple[str, ...] = BEATGAN_RECORDS  # the records the pipeline uses; ("all",): every record in the folder
    fs: int = 360
    n_leads: int = 2
    required_lead: str = "MLII"
    min_length_s: float = 60.0
    beat_length: int = 320
    # Class-count bounds: fractions of the reference counts (DESIGN.md) on the full
    # database; `None` skips the bound (e.g. on synthetic data).
    expected_counts: dict[str, int] | None = None
    count_tolerance: float = 0.02


@dataclass
class SynthConfig:
    """A small synthetic WFDB database with injected anomalous beats."""

    n_records: int = 6
    duration_s: float = 300.0
    fs: int = 360
    anomaly_fraction: float = 0.08
    seed: int = 0


@dataclass
class TeacherConfig:
    """BeatGAN teacher training (DESIGN.md, 'The model')."""

    fold: int = 0
    split: Literal["beatgan", "interpatient"] = "beatgan"
    val_fraction: float = 0.1
    nz: int = 50
    ngf: int = 32
    ndf: int = 32
    lambda_fm: float = 1.0
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 64
    epochs: int = 100
    d_reinit_threshold: float = 5e-6
    selection: Literal["clean", "paper"] = "clean"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = False
    cuda_graph: bool = True
    eval_batch_size: int = 4096
    max_train_beats: int | None = None  # cap for quick runs and tests


@dataclass
class EvaluateConfig:
    """Scoring and metrics of a trained generator."""

    folds: tuple[int, ...] = ()  # empty: the fold each model was trained on
    split: Literal["beatgan", "interpatient"] = "beatgan"
    n_bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0
    device: str = "auto"
    batch_size: int = 4096
    amp: bool = False  # bf16 autocast for scoring (CUDA, or CPUs with bf16 units)
    plots: bool = True
    bootstrap: Literal["record", "beat"] = "record"  # resample records (patients) or beats within each class
    threshold_rule: Literal["auto", "far", "f1"] = "auto"  # model file without one: auto = f1 for selection=paper, else far
    far: float = 0.01  # false-alarm rate on normal validation beats for threshold_rule "far"


C = TypeVar("C")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Turn a YAML value or a CLI string into the field's declared type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors) or f"{name}: cannot be {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, name) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, name): _coerce(v, vt, name) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp in (int, float, str):
        if tp is str and not isinstance(value, str):
            value = str(value)
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return out
    raise ConfigError(f"{name}: unsupported type {tp!r}")


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build `cls` from a mapping, refusing unknown keys and coercing types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {k: _coerce(v, hints[k], f"{cls.__name__}.{k}") for k, v in data.items()}
    return cls(**values)


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["epochs=3", "lambda_fm=0.5"]` -> `{"epochs": "3", "lambda_fm": "0.5"}`."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then the YAML file (its top level, or its section named after the step), then overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        if any(k in SECTIONS for k in loaded):  # a file of sections, one per step
            stray = sorted(k for k in loaded if k not in SECTIONS)
            if stray:
                raise ConfigError(f"config file {path}: unknown section(s) {', '.join(stray)}; known: {', '.join(SECTIONS)}")
            section = loaded.get(SECTIONS_BY_CLASS.get(cls, ""), {}) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"config file {path}: section {SECTIONS_BY_CLASS[cls]} must be a mapping")
            loaded = section
        data.update(loaded)
    data.update(overrides or {})
    return from_dict(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON- and YAML-friendly dict of a config (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "preprocess": PreprocessConfig,
    "validate": ValidateConfig,
    "synth": SynthConfig,
    "teacher": TeacherConfig,
    "evaluate": EvaluateConfig,
}
SECTIONS_BY_CLASS: dict[type, str] = {v: k for k, v in SECTIONS.items()}
