"""Distribution-shifting transforms: synthetic anomalies made from normal beats, for a label-free selection criterion.

Each transform takes beats (n, nc, length), draws one set of parameters per beat from a torch.Generator and
runs batched on x's device (no Python loop over beats). They move a normal beat toward what arrhythmic
beats look like: a local time warp (a stretched or squeezed segment), a widened QRS (a ventricular-like
main peak), a premature onset (the beat arrives early in its window) and a mixed beat (the start of one
beat spliced onto the end of another). A model that separates normal beats from these shifted ones is
likely to separate normal from anomalous beats: that separation is the `synthetic` criterion (AUC of the
validation beats, as they are, against their shifted copies). CSI (Tack et al., NeurIPS 2020) uses such
shifted instances as negatives; Fung et al. (2023) study synthetic anomalies for model selection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from sibeatgan.augment import _resample

KINDS = ("local_warp", "widen_qrs", "premature", "mix")
SEED = 0  # the synthetic validation set of a run is drawn with this seed, so every epoch and trial sees the same one


@dataclass(frozen=True)
class ShiftConfig:
    """Ranges of each transform, in samples of a `length`-sample window (R peak at `peak`); `synthesize` rescales them
    to the window it is given (`scaled`), so the defaults, set for 320 samples at 360 Hz, fit any window."""

    length: int = 320
    peak: int = 140  # where the windows put the R peak (PreprocessConfig.before)
    peak_search: int = 20  # the main peak is the largest |x - median| within peak +- peak_search
    warp_width: tuple[float, float] = (10.0, 30.0)  # bump width (samples) of the local warp
    warp_slope: tuple[float, float] = (0.35, 0.6)  # local slope of the warp at its centre: stretch by 1/slope or squeeze by slope
    qrs_width: float = 14.0  # bump width of the QRS widening (a QRS lasts ~25-40 samples)
    qrs_factor: tuple[float, float] = (1.8, 2.8)  # the main peak's local widening factor
    premature: tuple[int, int] = (25, 70)  # samples by which the beat arrives early (70-190 ms)
    mix_cut: tuple[int, int] = (170, 240)  # where the second beat takes over (after the QRS, before or in the T wave)
    mix_ramp: int = 6  # samples of linear cross-fade at the cut

    def __post_init__(self) -> None:
        for name in ("warp_width", "warp_slope", "qrs_factor", "premature", "mix_cut"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"shift {name}: need 0 < low <= high, got {(low, high)}")
        if self.warp_slope[1] >= 1:
            raise ValueError(f"shift warp_slope: need values below 1 (a slope >= 1 would not shift the beat), got {self.warp_slope}")
        if self.qrs_factor[0] <= 1:
            raise ValueError(f"shift qrs_factor: need factors above 1 (a widening), got {self.qrs_factor}")
        if self.qrs_width <= 0 or self.mix_ramp < 1 or self.peak_search < 0 or not 0 <= self.peak < self.length:
            raise ValueError("shift qrs_width must be > 0, mix_ramp >= 1, peak_search >= 0 and 0 <= peak < length")

    def scaled(self, length: int) -> ShiftConfig:
        """The same transforms for a window of `length` samples (every sample count times length / self.length)."""
        if length == self.length:
            return self
        r = length / self.length

        def whole(v: float) -> int:
            return max(1, round(v * r))

        return replace(self, length=length, peak=min(round(self.peak * r), length - 1), peak_search=round(self.peak_search * r),
                       warp_width=(self.warp_width[0] * r, self.warp_width[1] * r), qrs_width=self.qrs_width * r,
                       premature=(whole(self.premature[0]), whole(self.premature[1])),
                       mix_cut=(whole(self.mix_cut[0]), whole(self.mix_cut[1])), mix_ramp=whole(self.mix_ramp))


def _uniform(n: int, low: float, high: float, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand((n, 1, 1), generator=gen, device=x.device, dtype=torch.float32)


def _bump_warp(x: torch.Tensor, centre: torch.Tensor, width: torch.Tensor | float, slope: torch.Tensor) -> torch.Tensor:
    """Resample x at t - (1 - slope) * (t - c) * exp(-((t - c) / w)^2 / 2): near c time runs at `slope` (< 1 widens,
    > 1 narrows), far from c it is unchanged. The map's derivative stays within [min(slope, 1), 1 + 0.45 |1 - slope|],
    so it is monotone for 0 < slope < 3.2. centre, slope: (n, 1, 1)."""
    t = torch.arange(x.shape[-1], device=x.device, dtype=torch.float32).view(1, 1, -1)
    d = t - centre
    pos = t - (1 - slope) * d * torch.exp(-0.5 * (d / width) ** 2)
    return _resample(x, pos)


def main_peak(x: torch.Tensor, config: ShiftConfig) -> torch.Tensor:
    """(n, 1, 1) index of each beat's main peak: the largest |x - median| of the first lead within peak +- peak_search."""
    lo, hi = max(config.peak - config.peak_search, 0), min(config.peak + config.peak_search + 1, x.shape[-1])
    lead = x[:, :1, :]
    dev = (lead - lead.median(dim=-1, keepdim=True).values).abs()[..., lo:hi]
    return (dev.argmax(dim=-1, keepdim=True) + lo).to(torch.float32)


def local_warp(x: torch.Tensor, config: ShiftConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Stretch (or squeeze) a segment around a random centre between the P and the T wave (peak - 60 to peak + 120
    samples, where a beat has its shape; a warp of the flat TP segment would leave the beat as it was)."""
    n, length = x.shape[0], x.shape[-1]
    r = length / config.length
    centre = _uniform(n, max(config.peak - 60 * r, 0), min(config.peak + 120 * r, length - 1), x, gen)
    width = _uniform(n, *config.warp_width, x, gen)
    slope = _uniform(n, *config.warp_slope, x, gen)
    squeeze = torch.rand((n, 1, 1), generator=gen, device=x.device) < 0.5
    slope = torch.where(squeeze, 1 / slope.clamp(min=1 / 3.0), slope)  # 1/slope <= 3 keeps the map monotone
    return _bump_warp(x, centre, width, slope)


def widen_qrs(x: torch.Tensor, config: ShiftConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Widen the main peak by a factor drawn from qrs_factor (about its centre): a ventricular-like, broad QRS."""
    factor = _uniform(x.shape[0], *config.qrs_factor, x, gen)
    return _bump_warp(x, main_peak(x, config), config.qrs_width, 1 / factor)


def premature(x: torch.Tensor, config: ShiftConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Move the beat earlier by s samples (s uniform in `premature`): x'(t) = x(t + s), the end padded with its last value."""
    n, length = x.shape[0], x.shape[-1]
    s = torch.randint(config.premature[0], config.premature[1] + 1, (n, 1, 1), generator=gen, device=x.device)
    idx = (torch.arange(length, device=x.device) + s).clamp(max=length - 1)
    return x.gather(-1, idx.expand(-1, x.shape[1], -1))


def mix(x: torch.Tensor, config: ShiftConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Splice the start of each beat onto the end of another beat of the batch (never itself), with a short cross-fade
    from the cut on. With a single beat there is no partner and it is returned unchanged."""
    n, length = x.shape[0], x.shape[-1]
    if n < 2:
        return x.clone()
    partner = (torch.arange(n, device=x.device) + torch.randint(1, n, (n,), generator=gen, device=x.device)) % n
    cut = torch.randint(config.mix_cut[0], config.mix_cut[1] + 1, (n, 1, 1), generator=gen, device=x.device)
    t = torch.arange(length, device=x.device).view(1, 1, -1)
    w = ((t - cut).to(torch.float32) / config.mix_ramp).clamp(0, 1).to(x.dtype)
    return x * (1 - w) + x[partner] * w


TRANSFORMS = {"local_warp": local_warp, "widen_qrs": widen_qrs, "premature": premature, "mix": mix}


def synthesize(x: torch.Tensor, seed: int = SEED, kinds: tuple[str, ...] = KINDS, config: ShiftConfig | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One shifted copy of every beat: (anomalies (n, nc, length) clamped to [-1, 1], kind index (n,) into `kinds`).

    The kinds are dealt in equal shares (a seeded permutation of 0, 1, .., len(kinds)-1, 0, ...); the same
    seed, beats and device give the same copies. `config`'s sample counts are rescaled to x's window length."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(seed))
    return shift_batch(x, gen, kinds, config, with_kinds=True)


def shift_batch(x: torch.Tensor, gen: torch.Generator | None, kinds: tuple[str, ...] = KINDS, config: ShiftConfig | None = None,
                with_kinds: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`synthesize` drawing from a running generator (a fresh set of shifted beats per call, e.g. per training step)."""
    unknown = [k for k in kinds if k not in TRANSFORMS]
    if unknown or not kinds:
        raise ValueError(f"shift kinds: unknown or none {unknown or list(kinds)} (choose from {', '.join(KINDS)})")
    config = (config or ShiftConfig()).scaled(x.shape[-1])
    n = x.shape[0]
    which = (torch.arange(n, device=x.device) % len(kinds))[torch.randperm(n, generator=gen, device=x.device)]
    out = torch.empty_like(x)
    for i, name in enumerate(kinds):
        mask = which == i
        if mask.any():
            out[mask] = TRANSFORMS[name](x[mask], config, gen)
    out = out.clamp(-1.0, 1.0)
    return (out, which) if with_kinds else out


def separation_auc(real: np.ndarray, shifted: np.ndarray) -> float:
    """AUC of shifted beats' scores against the real beats' scores (ties count half); NaN if any score is not finite."""
    from sibeatgan.metrics import ranked_metrics

    real, shifted = np.asarray(real, dtype=np.float64).ravel(), np.asarray(shifted, dtype=np.float64).ravel()
    scores = np.concatenate([real, shifted])
    if not np.isfinite(scores).all():
        return float("nan")
    return ranked_metrics(scores, np.r_[np.zeros(real.size, bool), np.ones(shifted.size, bool)])["auc"]
