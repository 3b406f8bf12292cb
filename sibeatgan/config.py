"""Typed configuration, one pydantic model per step; defaults live here and nowhere else.

A YAML file maps one-to-one onto a model (unknown keys are refused); a field
may itself be a model (a nested section, set from the command line as
`--set a.b=value`). Command-line strings are coerced to the field's type
(`true`, `3`, `100,101` for a tuple, `none`). Every error is one line naming
the field, raised as ConfigError. The CLI, the KFP components, the benchmarks
and the tests all build configs through `load_config` or the constructors.
"""

from __future__ import annotations

import copy
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

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


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe_name(value: str) -> str:
    """A name that becomes a file or folder name (a study's trial folders, a record's files, a registry's folders): one plain
    path component, so it can never reach outside the folder it is put in."""
    if not _SAFE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                         "(names become folder and file names, so no path may hide in one)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


class Section(BaseModel):
    """Base of every config: unknown keys refused, CLI strings coerced, bad values a one-line ConfigError."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(_one_line(type(self), err)) from None

    # Only translates errors: nested sections are then validated by pydantic itself, so their errors keep the full path.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _from_strings(cls, data: Any) -> Any:
        """Command-line strings into what pydantic validates: `none` -> None, `a,b` -> a tuple."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: _prepare(v, fields[k].annotation) if k in fields else v for k, v in data.items()}


class IngestConfig(Section):
    """Copy a WFDB database from a source (physionet, a folder, s3://) into a local folder."""

    source: str = "physionet"
    database: str = "mitdb"
    records: tuple[SafeName, ...] = ()  # empty: every record the source has
    verify_checksums: bool = True
    s3_endpoint_url: str | None = None  # e.g. a MinIO or moto server; None: AWS defaults
    cache_dir: str = "~/.cache/sibeatgan"


class PreprocessConfig(Section):
    """Beat extraction by the BeatGAN protocol (DESIGN.md, 'Evaluation protocol')."""

    records: tuple[SafeName, ...] = BEATGAN_RECORDS  # records missing from the source are an error
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


class ValidateConfig(Section):
    """The validation gate: record-level and beat-level expectations."""

    records: tuple[SafeName, ...] = BEATGAN_RECORDS  # the records the pipeline uses; ("all",): every record in the folder
    fs: int = 360
    n_leads: int = 2
    required_lead: str = "MLII"
    min_length_s: float = 60.0
    beat_length: int = 320
    # Class-count bounds: fractions of the reference counts (DESIGN.md) on the full
    # database; `None` skips the bound (e.g. on synthetic data).
    expected_counts: dict[str, int] | None = None
    count_tolerance: float = 0.02


class SynthConfig(Section):
    """A small synthetic WFDB database with injected anomalous beats."""

    n_records: int = 6
    duration_s: float = 300.0
    fs: int = 360
    anomaly_fraction: float = 0.08
    seed: int = 0


class SplitConfig(Section):
    """The split artifact: every fold's train/val/test beats, decided once by its own seed (not a training seed)."""

    split_seed: int = 0
    val_fraction: float = 0.1


class TeacherConfig(Section):
    """BeatGAN teacher training (DESIGN.md, 'The model')."""

    fold: int = 0
    split: Literal["beatgan", "interpatient"] = "beatgan"  # protocol; the beats of each part come from the split artifact
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
    selection: Literal["clean", "paper", "synthetic"] = "clean"  # synthetic: label-free, AUC vs shifted validation beats
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = False
    cuda_graph: bool = True
    eval_batch_size: int = 4096
    max_train_beats: int | None = None  # cap for quick runs and tests


AUGMENTATIONS = ("scale", "wander", "noise", "shift", "warp")


class AugmentConfig(Section):
    """The student's contrastive views (sibeatgan.augment): each transform's range, and which ones make the two
    positive views. Following CSI (Tack et al., NeurIPS 2020) the default positives are the mild amplitude and
    noise ones; shift and warp move the R peak or widen the QRS toward an anomaly's shape, so they are opt-in.
    A nested section of the student: `--set augment.noise_std=0.01`, `--set augment.positives=scale,noise`."""

    positives: tuple[Literal["scale", "wander", "noise", "shift", "warp"], ...] = ("scale", "wander", "noise")
    scale: tuple[float, float] = (0.85, 1.15)  # amplitude factor, uniform
    wander_amplitude: float = 0.1  # peak of the baseline sinusoid, in units of the [-1, 1] beat
    wander_cycles: tuple[float, float] = (0.1, 0.6)  # its frequency in cycles per window (low: 0.1-0.6 Hz at 360 Hz, 320 samples)
    noise_std: float = 0.02  # Gaussian noise standard deviation, uniform in [0, noise_std] per beat
    max_shift: int = 4  # samples; edges padded with the edge value, never wrapped
    warp: float = 0.1  # time-warp strength in [0, 1): local stretch within 1 +- warp, ends fixed (moves points <= 5 samples of 320)
    warp_cycles: int = 1  # sine periods of the warp over the window

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale: need 0 < low <= high, got {self.scale}")
        if not 0 <= self.wander_cycles[0] <= self.wander_cycles[1]:
            raise ValueError(f"wander_cycles: need 0 <= low <= high, got {self.wander_cycles}")
        for name in ("wander_amplitude", "noise_std", "max_shift"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warp < 1:
            raise ValueError(f"warp: must be in [0, 1) so the warp stays monotone, got {self.warp}")
        if self.warp_cycles < 1:
            raise ValueError(f"warp_cycles: must be >= 1, got {self.warp_cycles}")
        return self

    def max_warp_displacement(self, length: int) -> float:
        """The most, in samples, that the time warp moves any point of a `length`-sample window."""
        return self.warp * (length - 1) / (2 * math.pi * self.warp_cycles)


class StudentConfig(Section):
    """The self-distilled contrastive student (DESIGN.md, 'The model'): L_G + alpha * KD_T + beta * NT-Xent_tau."""

    fold: int = 0
    split: Literal["beatgan", "interpatient"] = "beatgan"
    init: Literal["teacher", "scratch"] = "teacher"  # start from the teacher's generator weights, or afresh
    nz: int = 50
    ngf: int = 32  # width: 32 is the teacher's; 16 is the compact student (about a quarter of its FLOPs)
    ndf: int = 32
    lambda_fm: float = 1.0  # BeatGAN's feature-matching weight (lambda)
    alpha: float = 1.0  # distillation weight
    T: float = 4.0  # distillation temperature
    kd_direction: Literal["seed", "hinton"] = "seed"  # seed: KL(s || t); hinton: KL(t || s) * T^2
    kd_target: Literal["latent", "attention"] = "latent"  # latent code, or feature maps (attention transfer)
    beta: float = 0.1  # contrastive weight
    tau: float = 0.2  # NT-Xent temperature
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 64
    epochs: int = 20
    selection: Literal["clean", "paper", "synthetic"] = "clean"  # synthetic: label-free, AUC vs shifted validation beats
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    cuda_graph: bool = True
    eval_batch_size: int = 4096
    max_train_beats: int | None = None
    # The anomaly score saved with the student, chosen after training on validation beats, never test ones:
    # reconstruction error; the teacher-student latent discrepancy; "combined": (1 - score_weight) * reconstruction +
    # score_weight * discrepancy, each standardized on normal validation beats; "auto": the best validation AUC of
    # reconstruction, discrepancy and combined at weights 0.25, 0.5, 0.75 (needs labelled validation anomalies:
    # selection "paper"). Epochs are selected on the reconstruction error either way.
    score: Literal["reconstruction", "discrepancy", "combined", "auto"] = "reconstruction"
    score_weight: float = 0.5
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # the contrastive views (a nested section)

    @model_validator(mode="after")
    def _score(self) -> "StudentConfig":
        if not 0.0 <= self.score_weight <= 1.0:
            raise ValueError(f"score_weight: must be in [0, 1], got {self.score_weight}")
        if self.score == "auto" and self.selection != "paper":
            raise ValueError("score: 'auto' chooses on validation AUC, which needs selection 'paper' (labelled validation anomalies); "
                             "with the clean selection pick reconstruction, discrepancy or combined (with score_weight)")
        return self


class TuneConfig(Section):
    """The Optuna search over the student's lambda, T, tau (and alpha, beta, lr, init); ranges are [low, high]."""

    study_name: SafeName = "si-beatgan-student"  # also the folder of its trials, OUT/trials/<study_name>
    storage: str | None = None  # None: an Optuna journal file in the output folder; or postgresql://... (secret on a cluster)
    n_trials: int = 24  # the study's trial budget (shared by every worker)
    group_size: int = 4  # trials asked at once and trained together as one group of members
    workers: int = 1  # worker processes on this machine, all on the one study
    seed: int = 0  # the sampler's seed (each worker adds its index)
    pruner_warmup_epochs: int = 2
    heartbeat_s: float = 10.0
    grace_s: float = 60.0  # a running trial without a heartbeat this long belongs to a dead worker: retried
    max_retry: int = 2
    lambda_fm: tuple[float, float] = (0.1, 10.0)
    T: tuple[float, float] = (1.0, 8.0)
    tau: tuple[float, float] = (0.05, 1.0)
    alpha: tuple[float, float] = (0.1, 10.0)
    beta: tuple[float, float] = (0.01, 1.0)
    lr: tuple[float, float] = (3e-5, 3e-4)
    init: tuple[str, ...] = ("teacher",)  # add "scratch" to let the search choose

    @model_validator(mode="after")
    def _ranges(self) -> "TuneConfig":
        """Each range is [low, high] with low <= high, positive where the search is on a log scale (all but T)."""
        for name in ("lambda_fm", "T", "tau", "alpha", "beta", "lr"):
            low, high = getattr(self, name)
            if low > high or low <= 0:
                raise ValueError(f"{name}: range ({low}, {high}) must be positive with low <= high")
        for name in ("n_trials", "group_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        unknown = sorted(set(self.init) - {"teacher", "scratch"})
        if unknown or not self.init:
            raise ValueError(f"init: {list(self.init)} must be one or both of teacher, scratch")
        return self


class EvaluateConfig(Section):
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
    # "model": the score saved with each model; or reconstruction, discrepancy, combined (a student's other scores,
    # reported beside it; the threshold is then chosen anew on the model's validation beats)
    score: Literal["model", "reconstruction", "discrepancy", "combined"] = "model"


class DemoConfig(Section):
    """`sibeatgan demo`: the whole chain on synthetic data; its data is a nested section (`--set synth.seed=3`)."""

    epochs: int = 10
    synth: SynthConfig = Field(default_factory=SynthConfig)


C = TypeVar("C")

_NONE_WORDS = ("none", "null")
_MESSAGES = {
    "int_parsing": "expected an integer", "int_type": "expected an integer", "int_from_float": "expected an integer",
    "float_parsing": "expected a number", "float_type": "expected a number",
    "bool_parsing": "expected true or false", "bool_type": "expected true or false",
    "string_type": "expected a string", "tuple_type": "expected a list", "list_type": "expected a list",
    "dict_type": "expected a mapping", "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
}


def _union_args(tp: Any) -> tuple[Any, ...]:
    """The members of a union annotation, or (tp,) for any other."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _prepare(value: Any, tp: Any) -> Any:
    """A command-line string for a field of type `tp`: `none` for optional fields, `a,b` for tuples."""
    if not isinstance(value, str):
        return value
    members = _union_args(tp)
    if type(None) in members and value.strip().lower() in _NONE_WORDS:
        return None
    if any(typing.get_origin(m) is tuple for m in members):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The model class an annotation holds (itself, or inside Optional), else None."""
    for m in _union_args(tp):
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def _where(cls: type, loc: tuple[Any, ...]) -> str:
    """`TeacherConfig.epochs`, `DemoConfig.synth.seed`, `ValidateConfig.expected_counts.N` from pydantic's loc."""
    name, tp = cls.__name__, cls
    for part in loc:
        model = _model_of(tp)
        if model is not None:
            if part in model.model_fields:
                name, tp = f"{name}.{part}", model.model_fields[part].annotation
            continue  # a union member's tag, not a name
        base = next((m for m in _union_args(tp) if m is not type(None)), tp)
        origin, args = typing.get_origin(base), typing.get_args(base)
        if origin is dict and isinstance(part, str):
            name, tp = f"{name}.{part}", args[1] if args else Any
        elif origin is tuple and isinstance(part, int):
            name, tp = f"{name}[{part}]", args[0] if args else Any
    return name


def _one_line(cls: type, err: ValidationError) -> str:
    """pydantic's multi-line report as one line naming the (first) bad field."""
    errors = err.errors(include_url=False)
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        names = sorted(str(e["loc"][-1]) for e in extra if e["loc"][:-1] == parent)
        model: Any = cls
        for part in parent:
            model = _model_of(model.model_fields[part].annotation) if part in getattr(model, "model_fields", {}) else model
        known = ", ".join(sorted(getattr(model, "model_fields", {})))
        return f"{_where(cls, parent)}: unknown field(s) {', '.join(names)}; known: {known}"
    e = errors[0]
    if e["type"] == "literal_error":
        message = f"{e['input']!r} is not one of {e.get('ctx', {}).get('expected', '')}"
    elif e["type"] == "value_error" and e.get("ctx", {}).get("error") is not None:
        message = str(e["ctx"]["error"])  # a validator's own sentence: it names the value where that helps
    else:
        message = f"{_MESSAGES.get(e['type'], e['msg'])}, got {e['input']!r}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{_where(cls, e['loc'])}: {message}{more}"


def _expand(cls: type, data: dict[Any, Any]) -> dict[Any, Any]:
    """Dotted keys (`synth.seed`) into nested mappings, applied in order over what is already there."""
    out: dict[Any, Any] = {}
    for key, value in data.items():
        parts = key.split(".") if isinstance(key, str) else [key]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{cls.__name__}.{'.'.join(parts[:i + 1])}: is {child!r}, not a section; cannot set {key}")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build `cls` from a mapping (dotted keys set nested fields), refusing unknown keys and coercing types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {data!r}")
    try:
        return cls.model_validate(_expand(cls, data))  # type: ignore[attr-defined]
    except ValidationError as err:
        raise ConfigError(_one_line(cls, err)) from None


def replace(config: C, **changes: Any) -> C:
    """A validated copy of `config` with `changes` (dotted names reach nested fields): `replace(c, epochs=3)`."""
    return from_dict(type(config), {**config.model_dump(), **changes})  # type: ignore[attr-defined]


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["epochs=3", "synth.seed=1"]` -> `{"epochs": "3", "synth.seed": "1"}`."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"override {pair!r}: empty name in {key!r}")
        out[key] = value.strip()
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
            stray = sorted(str(k) for k in loaded if k not in SECTIONS)
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
    """A JSON- and YAML-friendly dict of a config (nested sections as dicts, tuples as lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in config.model_dump().items()}


SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "preprocess": PreprocessConfig,
    "validate": ValidateConfig,
    "synth": SynthConfig,
    "split": SplitConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "tune": TuneConfig,
    "evaluate": EvaluateConfig,
    "demo": DemoConfig,
}
SECTIONS_BY_CLASS: dict[type, str] = {v: k for k, v in SECTIONS.items()}


class TrackingConfig(Section):
    """MLflow tracking, registry and promotion (credentials only from MLFLOW_TRACKING_USERNAME/PASSWORD)."""

    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<working dir>/runs/mlflow.db
    experiment: str = "si-beatgan"
    parent_run_id: str | None = None  # every step's run is nested under it (the pipeline run's own MLflow run)
    retries: int = 3  # sends of the journal at the end of a step before a warning
    http_timeout_s: float = 15.0  # a refused connection fails at once; a busy server gets this long
    model_name: SafeName = "si-beatgan"
    n_bootstrap: int = 1000  # promotion gate: record-level paired bootstrap
    margin: float = Field(0.005, ge=0)  # non-inferiority: the 95% interval of delta AUC (candidate - current) must start above -margin
    min_records: int = Field(5, ge=1)  # too few records or beats to compare is a refusal
    min_beats: int = Field(500, ge=1)
    lock_ttl_s: float = Field(120.0, gt=0)  # a promotion's lock expires after this long (a killed one's move is then completed)
    lock_settle_s: float = Field(2.0, gt=0)  # the lock's wait: of two promotions whose requests each take under it, one wins
    seed: int = 0


SECTIONS["tracking"] = TrackingConfig
SECTIONS_BY_CLASS[TrackingConfig] = "tracking"
