"""A small synthetic WFDB database shaped like MIT-BIH, with injected anomalous beats.

Beats follow a sum-of-Gaussians PQRST model (McSharry et al., 2003) placed at
R-peak times drawn from an RR process with heart-rate variability; records
carry baseline wander, powerline and EMG noise. Anomalies differ in both
morphology and timing: V (premature, wide bizarre QRS, no P, compensatory
pause), S as "A" (premature, abnormal P, narrow QRS), F (fusion of N and V)
and Q (notched, unclassifiable). Records are written like mitdb: 360 Hz,
leads MLII and V1, format 212, gain 200, baseline 1024, `.atr` annotations,
plus RECORDS and SHA256SUMS. The same config and seed give identical bytes
(all but the output marker, which records when the folder was written).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import wfdb

from sibeatgan.config import DS1_RECORDS, DS2_RECORDS, SynthConfig
from sibeatgan.data.sources import check_out, staged_dir, write_sha256sums
from sibeatgan.errors import ConfigError

log = logging.getLogger(__name__)

LEADS: tuple[str, str] = ("MLII", "V1")
ADC_GAIN = 200
BASELINE = 1024
FMT = "212"
# Anomaly classes, their MIT-BIH symbol and their share of the anomalous beats.
ANOMALY_SYMBOLS: dict[str, str] = {"V": "V", "S": "A", "F": "F", "Q": "Q"}
ANOMALY_SHARES: dict[str, float] = {"V": 0.45, "S": 0.35, "F": 0.15, "Q": 0.05}
KINDS: tuple[str, ...] = ("N", "S", "V", "F", "Q")

# Gaussian waves per beat kind and lead: rows P, Q, R, R', S, T; columns amplitude (mV),
# centre (s from the R peak; T's centre is scaled by sqrt(RR)), width (s).
_N = {
    "MLII": [(0.15, -0.200, 0.022), (-0.10, -0.032, 0.008), (1.20, 0.0, 0.009),
             (0.0, 0.0, 0.010), (-0.25, 0.030, 0.010), (0.32, 0.270, 0.045)],
    "V1": [(0.08, -0.200, 0.022), (0.0, -0.032, 0.008), (0.30, 0.0, 0.008),
           (0.0, 0.0, 0.010), (-0.90, 0.028, 0.012), (0.12, 0.270, 0.050)],
}
MORPHOLOGY: dict[str, dict[str, list[tuple[float, float, float]]]] = {
    "N": _N,
    "S": {  # ectopic atrial focus: early, inverted P with a short PR; normal narrow QRS
        "MLII": [(-0.13, -0.135, 0.016)] + _N["MLII"][1:],
        "V1": [(-0.07, -0.135, 0.016)] + _N["V1"][1:],
    },
    "V": {  # ventricular: no P, wide QRS, discordant T
        "MLII": [(0.0, -0.2, 0.02), (-0.15, -0.060, 0.020), (1.55, 0.0, 0.032),
                 (0.0, 0.0, 0.01), (-0.70, 0.075, 0.028), (-0.50, 0.300, 0.070)],
        "V1": [(0.0, -0.2, 0.02), (0.0, -0.06, 0.02), (-1.20, 0.005, 0.036),
               (0.0, 0.0, 0.01), (0.30, 0.080, 0.030), (0.45, 0.300, 0.070)],
    },
    "F": {  # fusion: small P, QRS and T halfway between N and V
        "MLII": [(0.07, -0.200, 0.022), (-0.12, -0.045, 0.014), (1.35, 0.0, 0.019),
                 (0.0, 0.0, 0.01), (-0.45, 0.050, 0.019), (-0.08, 0.285, 0.060)],
        "V1": [(0.04, -0.200, 0.022), (0.0, -0.04, 0.01), (-0.45, 0.0, 0.020),
               (0.0, 0.0, 0.01), (-0.55, 0.040, 0.018), (0.25, 0.285, 0.060)],
    },
    "Q": {  # unclassifiable: no P, notched low QRS, flat broad T
        "MLII": [(0.0, -0.2, 0.02), (0.0, -0.03, 0.01), (0.62, 0.0, 0.010),
                 (0.55, 0.045, 0.010), (-0.35, 0.085, 0.015), (0.12, 0.320, 0.090)],
        "V1": [(0.0, -0.2, 0.02), (0.0, -0.03, 0.01), (-0.35, 0.0, 0.010),
               (-0.30, 0.045, 0.010), (0.20, 0.085, 0.015), (0.05, 0.320, 0.090)],
    },
}
T_WAVE = 5
# RR before an anomalous beat and after it, as fractions of the underlying RR.
PREMATURITY: dict[str, tuple[float, float]] = {
    "V": (0.60, 1.40),  # full compensatory pause
    "S": (0.65, 1.05),  # the sinus node resets: no full pause
    "F": (0.93, 1.07),
    "Q": (1.00, 1.00),
}
_WINDOW_S = (-0.36, 0.64)  # span rendered around each R peak
_EDGE_S = 0.6  # no beat closer than this to either end of a record


def record_names(n: int) -> list[str]:
    """Real MIT-BIH numbers alternating DS1 and DS2 (101, 100, 106, 103, ...), so both splits work."""
    pairs = [r for pair in zip(DS1_RECORDS, DS2_RECORDS) for r in pair]
    if not 1 <= n <= len(pairs):
        raise ConfigError(f"SynthConfig.n_records: must be between 1 and {len(pairs)}, got {n}")
    return pairs[:n]


def _check(config: SynthConfig) -> None:
    if config.fs < 128:
        raise ConfigError(f"SynthConfig.fs: must be at least 128 Hz, got {config.fs}")
    if config.duration_s < 10:
        raise ConfigError(f"SynthConfig.duration_s: must be at least 10 s, got {config.duration_s}")
    if not 0.0 <= config.anomaly_fraction <= 0.4:
        raise ConfigError(
            f"SynthConfig.anomaly_fraction: must be within [0, 0.4], got {config.anomaly_fraction}")
    record_names(config.n_records)


def _class_counts(n_anomalies: int) -> dict[str, int]:
    """Split n anomalies over V, S, F, Q by ANOMALY_SHARES (largest remainder, at least one each when n >= 4)."""
    raw = {k: n_anomalies * s for k, s in ANOMALY_SHARES.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: n_anomalies - sum(counts.values())]:
        counts[k] += 1
    if n_anomalies >= len(counts):
        for k in counts:
            if counts[k] == 0:
                donor = max(counts, key=counts.get)
                counts[donor] -= 1
                counts[k] += 1
    return counts


def _beat_plan(config: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """R-peak times (s) and beat kinds (indices into KINDS) for one record."""
    mean_rr = rng.uniform(0.68, 1.0)
    n = int(np.ceil(config.duration_s / (0.9 * mean_rr))) + 4
    t_approx = np.arange(n) * mean_rr
    # HRV: Mayer waves (~0.1 Hz), respiratory sinus arrhythmia (~0.25 Hz), and a random walk.
    f_lf, f_hf = rng.uniform(0.08, 0.12), rng.uniform(0.2, 0.33)
    walk = np.cumsum(rng.normal(0, 0.004, n))
    base = mean_rr * (1 + 0.03 * np.sin(2 * np.pi * f_lf * t_approx + rng.uniform(0, 2 * np.pi))
                      + 0.02 * np.sin(2 * np.pi * f_hf * t_approx + rng.uniform(0, 2 * np.pi))
                      + np.clip(walk - walk.mean(), -0.08, 0.08) + rng.normal(0, 0.01, n))

    kinds = np.zeros(n, dtype=np.int64)
    n_fit = int(config.duration_s / mean_rr)
    n_anom = int(round(config.anomaly_fraction * n_fit))
    # Odd positions only, past the first beats: anomalies never touch, so each keeps its own timing.
    slots = np.arange(3, n_fit - 2, 2)
    positions = np.sort(rng.choice(slots, size=min(n_anom, slots.size), replace=False))
    labels = np.concatenate([[KINDS.index(k)] * c for k, c in _class_counts(positions.size).items()])
    kinds[positions] = rng.permutation(labels.astype(np.int64))

    rr = base.copy()
    for k, (before, after) in PREMATURITY.items():
        at = np.flatnonzero(kinds == KINDS.index(k))
        rr[at] = base[at] * before
        rr[at[at + 1 < n] + 1] = base[at[at + 1 < n] + 1] * after
    times = _EDGE_S + rng.uniform(0, 0.3) + np.cumsum(rr) - rr[0]
    keep = times < config.duration_s - _EDGE_S
    return times[keep], kinds[keep]


def _render(times: np.ndarray, kinds: np.ndarray, n_samples: int, fs: int,
            leads: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """Sum the Gaussian waves of every beat into a (n_samples, leads) signal in mV."""
    nb, nl, nw = times.size, len(leads), 6
    params = np.array([[MORPHOLOGY[k][lead] for lead in leads] for k in KINDS])  # (kinds, leads, waves, 3)
    p = params[kinds].copy()  # (beats, leads, waves, 3)
    # Patient-specific shape, then beat-to-beat amplitude, respiration and jitter.
    p[..., 0] *= rng.normal(1.0, 0.12, (1, nl, nw))
    resp = 1 + 0.07 * np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * times + rng.uniform(0, 2 * np.pi))
    p[..., 0] *= (resp * rng.normal(1.0, 0.04, nb))[:, None, None] * rng.normal(1.0, 0.03, (nb, 1, nw))
    p[..., 2] *= rng.normal(1.0, 0.04, (nb, 1, nw))
    p[:, :, [0, 5], 1] += rng.normal(0, 0.004, (nb, 1, 2))
    rr = np.diff(times, prepend=times[0] - np.median(np.diff(times)))
    p[:, :, T_WAVE, 1] *= np.sqrt(np.clip(rr, 0.3, 1.6))[:, None]

    centre = np.rint(times * fs).astype(np.int64)
    offsets = np.arange(int(_WINDOW_S[0] * fs), int(_WINDOW_S[1] * fs) + 1)
    idx = centre[:, None] + offsets[None, :]  # (beats, W)
    dt = (idx / fs - times[:, None])[:, None, None, :]  # (beats, 1, 1, W)
    amp, mu, sd = (p[..., i, None] for i in range(3))
    waves = (amp * np.exp(-0.5 * ((dt - mu) / sd) ** 2)).sum(axis=2)  # (beats, leads, W)
    inside = (idx >= 0) & (idx < n_samples)
    signal = np.stack([np.bincount(idx[inside], weights=waves[:, j][inside], minlength=n_samples)
                       for j in range(nl)], axis=1)

    t = np.arange(n_samples) / fs
    for j in range(nl):
        f = rng.uniform(0.05, 0.4, 3)
        a = rng.uniform(0.03, 0.15, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        signal[:, j] += (a[:, None] * np.sin(2 * np.pi * f[:, None] * t + ph[:, None])).sum(axis=0)
        signal[:, j] += rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * 60.0 * t + rng.uniform(0, 2 * np.pi))
        signal[:, j] += rng.normal(0, rng.uniform(0.008, 0.025), n_samples)
    return signal


def _digitize(signal: np.ndarray) -> np.ndarray:
    """mV to format-212 ADC units (12-bit, gain 200, baseline 1024)."""
    return np.clip(np.rint(signal * ADC_GAIN) + BASELINE, -2048, 2047).astype(np.int32)


def synth_record(name: str, config: SynthConfig, index: int, write_dir: Path) -> dict[str, int]:
    """Write one synthetic record (.hea, .dat, .atr) and return its annotation symbol counts."""
    rng = np.random.default_rng([config.seed, index])
    fs = int(config.fs)
    n_samples = int(round(config.duration_s * fs))
    times, kinds = _beat_plan(config, rng)
    leads = LEADS[::-1] if name == "114" else LEADS  # like mitdb, record 114 has MLII second
    d_signal = _digitize(_render(times, kinds, n_samples, fs, leads, rng))
    record = wfdb.Record(
        record_name=name, fs=fs, fmt=[FMT] * len(leads), units=["mV"] * len(leads),
        sig_name=list(leads), adc_gain=[ADC_GAIN] * len(leads), baseline=[BASELINE] * len(leads),
        d_signal=d_signal, comments=[f"synthetic sibeatgan record, seed {config.seed}, not a patient"],
    )
    record.set_d_features()
    record.set_defaults()
    record.adc_res, record.adc_zero = [11] * len(leads), [BASELINE] * len(leads)  # as mitdb headers
    record.wrsamp(write_dir=str(write_dir))
    symbols = np.array([ANOMALY_SYMBOLS.get(k, k) for k in KINDS])[kinds].tolist()
    samples = np.rint(times * fs).astype(np.int64)
    # A leading rhythm annotation, as in mitdb.
    wfdb.wrann(
        name, "atr", np.concatenate([[max(0, samples[0] - fs // 2)], samples]),
        symbol=["+"] + symbols, aux_note=["(N"] + [""] * len(symbols), fs=fs,
        write_dir=str(write_dir),
    )
    return dict(sorted(Counter(symbols).items()))


def run_synth(config: SynthConfig, out: Path) -> dict[str, Any]:
    """Write the synthetic database into `out` and return a summary.

    `out` is replaced whole, so it must be absent, empty or an earlier sibeatgan output (see `check_out`).
    """
    _check(config)
    out = check_out(Path(out).expanduser())
    names = record_names(config.n_records)
    counts: dict[str, dict[str, int]] = {}
    with staged_dir(out, "synth") as stage:
        for i, name in enumerate(names):
            counts[name] = synth_record(name, config, i, stage)
        (stage / "RECORDS").write_text("".join(f"{n}\n" for n in names))
        files = sorted(p.name for p in stage.iterdir() if p.is_file())
        write_sha256sums(stage, files)
    totals = Counter()
    for c in counts.values():
        totals.update(c)
    n_beats = sum(totals.values())
    share = (n_beats - totals.get("N", 0)) / max(n_beats, 1)
    log.info("synth: %d records, %d beats (%s), anomaly share %.3f -> %s",
             len(names), n_beats, dict(sorted(totals.items())), share, out)
    return {
        "out": str(out),
        "records": names,
        "counts": counts,
        "totals": dict(sorted(totals.items())),
        "beats": n_beats,
        "anomaly_share": share,
        "files": files + ["SHA256SUMS"],
        "seed": config.seed,
    }
