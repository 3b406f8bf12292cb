"""R-peak detection exactly as the BeatGAN reference got it from biosppy, without biosppy's cost.

The reference (hi-bingo/BeatGAN, experiments/ecg/preprocess.py) called `biosppy.signals.ecg.ecg`
(biosppy 0.6): FIR band-pass 3-45 Hz with int(0.3 * fs) taps (made odd), zero-phase; Hamilton's
segmenter on that signal; `correct_rpeaks` (argmax within 50 ms); `extract_heartbeats` (drops peaks
closer than 0.2 s / 0.4 s to the ends). `hamilton_segmenter` here is a port of biosppy's, vectorised
where the algorithm has no state; tests check it returns the same peaks as biosppy on real records.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.signal as ss

REFERENCE_BAND_HZ: tuple[float, float] = (3.0, 45.0)


def fir_taps(fs: float, low: float, high: float, order: int) -> np.ndarray:
    """biosppy's FIR band-pass design: firwin with `order` taps, bumped to odd."""
    numtaps = order + 1 if order % 2 == 0 else order
    return ss.firwin(numtaps=numtaps, cutoff=2.0 * np.array([low, high], dtype=float) / float(fs), pass_zero=False)


@lru_cache(maxsize=32)
def _lfilter_zi(b: tuple[float, ...], a: tuple[float, ...]) -> np.ndarray:
    return ss.lfilter_zi(np.array(b), np.array(a))


def filtfilt(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """scipy.signal.filtfilt(b, a, x, axis=0) with its defaults, bit for bit, without re-solving lfilter_zi each call."""
    b, a, x = np.atleast_1d(b), np.atleast_1d(a), np.asarray(x)
    n = 3 * max(len(a), len(b))
    if x.shape[0] <= n:
        return ss.filtfilt(b, a, x, axis=0)
    ext = np.concatenate((2 * x[:1] - x[n:0:-1], x, 2 * x[-1:] - x[-2:-(n + 2):-1]), axis=0)
    zi = _lfilter_zi(tuple(b.tolist()), tuple(a.tolist())).reshape((-1,) + (1,) * (x.ndim - 1))
    y, _ = ss.lfilter(b, a, ext, axis=0, zi=zi * ext[:1])
    y, _ = ss.lfilter(b, a, y[::-1], axis=0, zi=zi * y[-1:])
    return y[::-1][n:-n]


def reference_filter(x: np.ndarray, fs: float) -> np.ndarray:
    """The filter of biosppy 0.6's `ecg()`: FIR 3-45 Hz, int(0.3 fs) taps, forward-backward (axis 0)."""
    b = fir_taps(fs, *REFERENCE_BAND_HZ, int(0.3 * float(fs)))
    return filtfilt(b, np.array([1]), x)


def _maxima(x: np.ndarray) -> np.ndarray:
    """biosppy.signals.tools.find_extrema(mode='max') indices."""
    return np.nonzero(np.diff(np.sign(np.diff(x))) < 0)[0] + 1


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _slopes(signal: np.ndarray, pos: np.ndarray, half: int, n_dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position: (has both rising and non-rising steps within +-half, the steepest rise)."""
    n = len(signal)
    ok = np.zeros(pos.shape[0], dtype=bool)
    steep = np.full(pos.shape[0], -np.inf)
    inner = (pos >= half) & (pos + half < n)
    if inner.any():
        d = np.diff(signal[pos[inner, None] + np.arange(-half, half)], axis=1)
        n_pos = (d > 0).sum(axis=1)
        ok[inner] = (n_pos > 0) & (n_pos < d.shape[1])
        steep[inner] = d.max(axis=1)
    for k in np.flatnonzero(~inner):
        p = int(pos[k])
        d = np.diff(signal[0:p + half] if p < half else signal[p - half:n_dx])
        n_pos = int((d > 0).sum())
        ok[k] = 0 < n_pos < d.size
        steep[k] = d.max() if d.size else -np.inf
    return ok, steep


def _dominated(peaks: np.ndarray, values: np.ndarray, lim: int) -> np.ndarray:
    """True where another peak closer than `lim` samples is strictly higher (Hamilton rule 1)."""
    lo = np.searchsorted(peaks, peaks - lim, side="right")
    hi = np.searchsorted(peaks, peaks + lim, side="left")
    idx = np.arange(peaks.shape[0])
    dominated = np.zeros(peaks.shape[0], dtype=bool)
    for k in range(1, int(max((idx - lo).max(initial=0), (hi - 1 - idx).max(initial=0))) + 1):
        left = idx - k >= lo
        dominated[left] |= values[idx[left] - k] > values[left]
        right = idx + k < hi
        dominated[right] |= values[idx[right] + k] > values[right]
    return dominated


def _choose_peak_exact(window: np.ndarray, adjacency: float, thres_ch: float) -> int | None:
    """biosppy's per-beat choice between the positive and the negative peak (used where vectors can't)."""
    zer = np.where(np.diff(window) == 0)[0]
    aux = np.diff(np.sign(np.diff(window)))
    w_pos = np.concatenate((np.nonzero(aux < 0)[0] + 1, zer))
    w_neg = np.concatenate((np.nonzero(aux > 0)[0] + 1, zer))
    pos = sorted(zip(window[w_pos], w_pos), reverse=True)
    neg = sorted(zip(window[w_neg], w_neg))
    two_pos, two_neg = pos[:1], neg[:1]
    for p in pos[1:]:
        if abs(pos[0][1] - p[1]) > adjacency:
            two_pos.append(p)
            break
    for p in neg[1:]:
        if abs(neg[0][1] - p[1]) > adjacency:
            two_neg.append(p)
            break
    err_pos, err_neg = len(two_pos) < 2, len(two_neg) < 2
    try:
        if not err_pos and not err_neg:
            posdiv, negdiv = abs(two_pos[0][0] - two_pos[1][0]), abs(two_neg[0][0] - two_neg[1][0])
            return int(two_pos[0][1] if posdiv > thres_ch * negdiv else two_neg[0][1])
        if err_pos and err_neg:
            return int(two_pos[0][1] if abs(two_pos[0][1]) > abs(two_neg[0][1]) else two_neg[0][1])
        return int(two_pos[0][1] if err_pos else two_neg[0][1])
    except IndexError:  # biosppy skips a beat whose window has no extremum of the needed kind
        return None


def _choose_peaks(signal: np.ndarray, beats: np.ndarray, lim: int, adjacency: float, thres_ch: float) -> list[int]:
    """Hamilton's last step for every beat: the positive or negative extremum within +-lim."""
    n = len(signal)
    inner = (beats - lim >= 0) & (beats + lim < n)
    chosen = np.full(beats.shape[0], -1, dtype=np.int64)
    exact = ~inner
    if inner.any():
        b = beats[inner]
        w = signal[b[:, None] + np.arange(-lim, lim)]
        width = w.shape[1]
        d = np.diff(w, axis=1)
        aux = np.diff(np.sign(d), axis=1)
        zero = np.zeros((w.shape[0], width), dtype=bool)
        zero[:, :-1] = d == 0
        pos_c, neg_c = zero.copy(), zero.copy()
        pos_c[:, 1:-1] |= aux < 0
        neg_c[:, 1:-1] |= aux > 0
        cols = np.arange(width)

        def best(cand: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
            # max of sign*value; ties: the larger index for maxima, the smaller for minima (tuple sort order)
            v = np.where(cand, sign * w, -np.inf)
            top = v.max(axis=1)
            hit = v == top[:, None]
            idx = (width - 1 - np.argmax(hit[:, ::-1], axis=1)) if sign > 0 else np.argmax(hit, axis=1)
            return np.where(np.isfinite(top), idx, -1), top

        p1, pv1 = best(pos_c, 1.0)
        n1, nv1 = best(neg_c, -1.0)
        p2, pv2 = best(pos_c & (np.abs(cols[None, :] - p1[:, None]) > adjacency), 1.0)
        n2, nv2 = best(neg_c & (np.abs(cols[None, :] - n1[:, None]) > adjacency), -1.0)
        fine = (p1 >= 0) & (n1 >= 0)
        err_p, err_n = p2 < 0, n2 < 0
        with np.errstate(invalid="ignore"):  # inf - inf where a window lacks an extremum (handled exactly below)
            posdiv = np.abs(pv1 - pv2)
            negdiv = np.abs(nv1 - nv2)
        pick_pos = np.where(
            ~err_p & ~err_n, posdiv > thres_ch * negdiv,
            np.where(err_p & err_n, p1 > n1, err_p),
        )
        sel = np.where(pick_pos, p1, n1)
        chosen[np.flatnonzero(inner)] = np.where(fine, sel + b - lim, -1)
        exact[np.flatnonzero(inner)[~fine]] = True
    for k in np.flatnonzero(exact):
        i = int(beats[k])
        a = 0 if i - lim < 0 else i - lim
        window = signal[a:i + lim] if i + lim < n else signal[a:n]
        c = _choose_peak_exact(window, adjacency, thres_ch)
        chosen[k] = -1 if c is None else c + a
    return sorted(set(int(c) for c in chosen[chosen >= 0]))


def hamilton_segmenter(signal: np.ndarray, fs: float) -> np.ndarray:
    """biosppy.signals.ecg.hamilton_segmenter, same output, a fraction of the time."""
    signal = np.asarray(signal, dtype=float)
    fs = float(fs)
    length = len(signal)
    v1s = int(1.0 * fs)
    th_elapsed = np.ceil(0.36 * fs)
    sm_size = int(0.08 * fs)
    init_ecg = min(8, int(length / fs))
    if init_ecg < 1:
        return np.empty(0, dtype=int)

    b, a = ss.butter(N=4, Wn=2.0 * 25.0 / fs, btype="lowpass", analog=False, output="ba")
    filtered = filtfilt(b, a, signal)
    b, a = ss.butter(N=4, Wn=2.0 * 3.0 / fs, btype="highpass", analog=False, output="ba")
    filtered = filtfilt(b, a, filtered)
    dx = np.abs(np.diff(filtered, 1) * fs)
    size = sm_size if sm_size <= len(dx) else len(dx) - 1
    size = max(size, 1)
    win = ss.windows.hamming(size)
    w = win / win.sum()
    aux = np.concatenate((dx[0] * np.ones(size), dx, dx[-1] * np.ones(size)))
    dx = np.convolve(w, aux, mode="same")[size:-size]

    qrsbuf = [0.0] * init_ecg
    noisebuf = [0.0] * init_ecg
    rrinterval = [fs] * init_ecg
    for i in range(init_ecg):
        seg = dx[i * v1s:(i + 1) * v1s]
        p = _maxima(seg)
        if p.size:
            qrsbuf[i] = float(seg[p].max())

    lim = int(np.ceil(0.2 * fs))
    diff_nr = int(np.ceil(0.045 * fs))
    all_peaks = _maxima(dx)
    values = dx[all_peaks]
    keep = ~_dominated(all_peaks, values, lim)
    cand = all_peaks[keep]
    cand_v = values[keep].tolist()
    slope_ok, steep = _slopes(signal, cand, diff_nr, len(dx))
    steep_at = dict(zip(cand.tolist(), steep.tolist()))
    slope_ok = slope_ok.tolist()

    med_q, med_rr = _median(qrsbuf), _median(rrinterval)  # kept current: recomputed whenever a buffer changes
    dt = _median(noisebuf) + 0.475 * (med_q - _median(noisebuf))
    beats: list[int] = []
    iq = inoise = irr = 0
    for k, f in enumerate(cand.tolist()):
        v = cand_v[k]
        changed = False
        if v > dt:
            if not slope_ok[k]:
                continue
            if beats:
                prev = beats[-1]
                if f - prev < th_elapsed and steep_at[f] < 0.5 * steep_at[prev]:
                    continue  # a T wave: its slope is under half the previous QRS's
                if not v < 3.0 * med_q:
                    continue
                beats.append(f)
                rrinterval[irr] = beats[-1] - beats[-2]
                irr = (irr + 1) % init_ecg
            elif v < 3.0 * med_q:
                beats.append(f)
            else:
                continue
            qrsbuf[iq] = v
            iq = (iq + 1) % init_ecg
            changed = True
        else:
            if len(beats) >= 2:
                elapsed = f - beats[-1]
                if elapsed >= 1.5 * med_rr and elapsed > th_elapsed:
                    if v > 0.5 * dt:  # a missed beat: search back
                        beats.append(f)
                        rrinterval[irr] = beats[-1] - beats[-2]
                        irr = (irr + 1) % init_ecg
                        qrsbuf[iq] = v
                        iq = (iq + 1) % init_ecg
                        changed = True
                else:
                    noisebuf[inoise] = v
                    inoise = (inoise + 1) % init_ecg
                    changed = True
            else:
                noisebuf[inoise] = v
                inoise = (inoise + 1) % init_ecg
                changed = True
        if changed:
            anp, med_q, med_rr = _median(noisebuf), _median(qrsbuf), _median(rrinterval)
            dt = anp + 0.475 * (med_q - anp)

    chosen = _choose_peaks(signal, np.asarray(beats, dtype=np.int64), lim, 0.05 * fs, 0.85)
    return np.asarray(chosen, dtype=int)


def correct_rpeaks(signal: np.ndarray, rpeaks: np.ndarray, fs: float, tol: float = 0.05) -> np.ndarray:
    """biosppy's correct_rpeaks: each peak moves to the maximum within [r - tol, r + tol[."""
    t = int(tol * fs)
    r = np.asarray(rpeaks, dtype=np.int64)
    r = r[(r - t >= 0) & (r + t <= len(signal))]
    if r.size == 0 or t == 0:
        return np.unique(r)
    idx = r[:, None] - t + np.arange(2 * t)
    return np.unique(r - t + np.argmax(signal[idx], axis=1))


def detect_rpeaks(filtered: np.ndarray, fs: float, engine: str = "fast") -> np.ndarray:
    """R peaks of an already reference-filtered lead: Hamilton, corrected, edge peaks dropped (as biosppy's ecg())."""
    if engine == "biosppy":
        from biosppy.signals import ecg as becg

        (r,) = becg.hamilton_segmenter(signal=filtered, sampling_rate=float(fs))
        (r,) = becg.correct_rpeaks(signal=filtered, rpeaks=r, sampling_rate=float(fs), tol=0.05)
    elif engine == "fast":
        r = correct_rpeaks(filtered, hamilton_segmenter(filtered, fs), fs)
    else:
        raise ValueError(f"unknown R-peak engine {engine!r}; use 'fast' or 'biosppy'")
    r = np.sort(np.asarray(r, dtype=np.int64))
    before, after = int(0.2 * fs), int(0.4 * fs)
    return r[(r - before >= 0) & (r + after <= len(filtered))]
