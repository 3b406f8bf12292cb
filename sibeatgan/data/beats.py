"""Beat windows and labels: array functions the preprocess step composes (no per-beat Python loops)."""

from __future__ import annotations

import numpy as np
import scipy.signal as ss

from sibeatgan.data.artifact import CLASSES
from sibeatgan.data.rpeaks import filtfilt, fir_taps
from sibeatgan.errors import ConfigError

# Annotation symbols of each class. BeatGAN's grouping (its preprocess.py) puts e and j in S;
# AAMI EC57 puts them in N. Symbols in no class (+, ~, |, x, Q-less rhythm marks...) are dropped.
GROUPINGS: dict[str, dict[str, str]] = {
    "beatgan": {"N": "NLR", "S": "AaJSej", "V": "VE", "F": "F", "Q": "/fQ"},
    "aami": {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"},
}
FILTER_KINDS: tuple[str, ...] = ("fir", "butter", "none")


def label_symbols(symbols: np.ndarray, grouping: str) -> np.ndarray:
    """Class index (into artifact.CLASSES) of each annotation symbol; -1 for symbols the grouping drops."""
    if grouping not in GROUPINGS:
        raise ConfigError(f"PreprocessConfig.grouping: {grouping!r} is not one of {', '.join(GROUPINGS)}")
    symbols = np.asarray(symbols, dtype=str)
    labels = np.full(symbols.shape, -1, dtype=np.int8)
    for name, members in GROUPINGS[grouping].items():
        labels[np.isin(symbols, list(members))] = CLASSES.index(name)
    return labels


def symbol_codes(symbols: np.ndarray) -> np.ndarray:
    """One-character annotation symbols as uint8 ASCII codes (the artifact's `symbols` array)."""
    s = np.asarray(symbols, dtype="U1")
    return s.view(np.uint32).astype(np.uint8)


def window_fits(samples: np.ndarray, n_samples: int, before: int, after: int) -> np.ndarray:
    """True where [s - before, s + after) lies inside the signal, with the reference's strict end (s + after < n)."""
    samples = np.asarray(samples)
    return (samples - before >= 0) & (samples + after < n_samples)


def cut_windows(signal: np.ndarray, centers: np.ndarray, before: int, after: int) -> np.ndarray:
    """Windows (n_beats, n_leads, before + after) of a (n_samples, n_leads) signal, by fancy indexing."""
    idx = np.asarray(centers, dtype=np.int64)[:, None] + np.arange(-before, after)
    return np.ascontiguousarray(signal[idx].transpose(0, 2, 1))


def minmax_scale(windows: np.ndarray) -> np.ndarray:
    """Scale each window (last axis) to [-1, 1] as BeatGAN does; a flat window becomes all zeros."""
    lo = windows.min(axis=-1, keepdims=True)
    span = windows.max(axis=-1, keepdims=True) - lo
    flat = span == 0
    out = 2 * (windows - lo) / np.where(flat, 1.0, span) - 1
    return np.where(flat, 0.0, out)


def nearest_distance(samples: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Distance in samples from each sample to the nearest peak (sorted); a large number if there are none."""
    samples = np.asarray(samples, dtype=np.int64)
    peaks = np.asarray(peaks, dtype=np.int64)
    if peaks.size == 0:
        return np.full(samples.shape, np.iinfo(np.int64).max // 2)
    j = np.searchsorted(peaks, samples)
    right = peaks[np.minimum(j, peaks.size - 1)]
    left = peaks[np.maximum(j - 1, 0)]
    return np.minimum(np.abs(samples - left), np.abs(right - samples))


def check_bandpass(kind: str, fs: float, low: float, high: float, order: int) -> None:
    """ConfigError naming the field if a band-pass setting cannot work at this sampling rate."""
    if kind not in FILTER_KINDS:
        raise ConfigError(f"bandpass type {kind!r} is not one of {', '.join(FILTER_KINDS)}")
    if kind == "none":
        return
    if not 0 < low < high < fs / 2:
        raise ConfigError(
            f"PreprocessConfig.bandpass_low_hz/bandpass_high_hz: need 0 < {low} < {high} < fs/2 = {fs / 2}"
        )
    if order < 1:
        raise ConfigError(f"PreprocessConfig.bandpass_order: must be at least 1, got {order}")


def bandpass(x: np.ndarray, fs: float, low: float, high: float, order: int, kind: str = "fir") -> np.ndarray:
    """Zero-phase band-pass along axis 0: 'fir' as biosppy (order = taps, made odd), 'butter' (IIR, SOS), 'none'."""
    check_bandpass(kind, fs, low, high, order)
    if kind == "none":
        return np.asarray(x, dtype=float)
    if kind == "fir":
        return filtfilt(fir_taps(fs, low, high, order), np.array([1]), x)
    sos = ss.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    return ss.sosfiltfilt(sos, x, axis=0)
