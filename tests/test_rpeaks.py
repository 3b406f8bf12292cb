"""The R-peak port gives exactly biosppy's peaks, on synthetic signals (always) and on MIT-BIH (when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss

from sibeatgan.data import rpeaks

MITDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"
FS = 360.0


def ecg_like(seconds: float, seed: int, noise: float) -> np.ndarray:
    """R waves at a jittered 0.6-1.1 s rhythm, some inverted, with T waves, wander and noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    t = np.arange(n)
    x = 0.3 * np.sin(2 * np.pi * 0.2 * t / FS) + noise * rng.standard_normal(n)
    r = 0.5 * FS
    while r < n - 0.5 * FS:
        amp = rng.choice([1.0, 1.3, -0.8])
        x += amp * np.exp(-0.5 * ((t - r) / (0.01 * FS * rng.uniform(0.8, 2.5))) ** 2)
        x += 0.3 * np.exp(-0.5 * ((t - r - 0.25 * FS) / (0.04 * FS)) ** 2)
        r += FS * rng.uniform(0.6, 1.1)
    return np.round(x * 200) / 200  # 12-bit-like steps: ties and plateaus, as in WFDB data


@pytest.mark.parametrize("seed,noise", [(0, 0.02), (1, 0.1), (2, 0.3)])
def test_hamilton_port_equals_biosppy_on_synthetic(seed, noise):
    from biosppy.signals import ecg as becg

    x = rpeaks.reference_filter(ecg_like(60, seed, noise), FS)
    (expected,) = becg.hamilton_segmenter(signal=x, sampling_rate=FS)
    got = rpeaks.hamilton_segmenter(x, FS)
    assert got.size > 40
    np.testing.assert_array_equal(got, expected)
    (corr,) = becg.correct_rpeaks(signal=x, rpeaks=expected, sampling_rate=FS, tol=0.05)
    np.testing.assert_array_equal(rpeaks.correct_rpeaks(x, expected, FS), corr)


def test_vectorised_peak_choice_equals_the_exact_rule():
    rng = np.random.default_rng(3)
    signal = rng.integers(0, 6, 5000).astype(float)  # many ties and flat runs
    signal[2000:2200] = 1.0  # windows without any extremum
    beats = np.sort(rng.choice(np.arange(0, 5000), 400, replace=False))
    got = rpeaks._choose_peaks(signal, beats, 72, 18.0, 0.85)
    expected = set()
    for i in beats.tolist():
        a = max(i - 72, 0)
        c = rpeaks._choose_peak_exact(signal[a:min(i + 72, 5000)], 18.0, 0.85)
        if c is not None:
            expected.add(c + a)
    assert got == sorted(expected)


@pytest.mark.parametrize("shape", [(100_000,), (100_000, 2), (500,)])
def test_filtfilt_is_scipys_bit_for_bit(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    for b, a in [(rpeaks.fir_taps(FS, 3.0, 45.0, 108), np.array([1])), ss.butter(4, 2 * 25.0 / FS, "lowpass")]:
        np.testing.assert_array_equal(rpeaks.filtfilt(b, a, x), ss.filtfilt(b, a, x, axis=0))


def test_detect_rpeaks_drops_edge_peaks_and_rejects_unknown_engine():
    x = rpeaks.reference_filter(ecg_like(30, 4, 0.02), FS)
    p = rpeaks.detect_rpeaks(x, FS)
    assert p.min() >= 72 and p.max() + 144 <= len(x)
    with pytest.raises(ValueError, match="unknown R-peak engine"):
        rpeaks.detect_rpeaks(x, FS, engine="nope")


@pytest.mark.mitdb
@pytest.mark.skipif(not MITDB.is_dir(), reason=f"real MIT-BIH data not found at {MITDB}")
@pytest.mark.parametrize("name", ["108", "207"])  # the noisiest records
def test_hamilton_port_equals_biosppy_on_mitdb(name):
    from biosppy.signals import ecg as becg

    from sibeatgan.data.records import read_record

    rec = read_record(MITDB, name, annotations=False)
    for col in range(rec.signal.shape[1]):
        x = rpeaks.reference_filter(rec.signal[:, col], FS)
        (expected,) = becg.hamilton_segmenter(signal=x, sampling_rate=FS)
        np.testing.assert_array_equal(rpeaks.hamilton_segmenter(x, FS), expected)
