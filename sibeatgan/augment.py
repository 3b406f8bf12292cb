"""ECG augmentations for the student's contrastive views, batched on the device and drawn from a torch.Generator.

Each transform takes beats (n, nc, length) in [-1, 1] and draws one set of parameters per beat; no
Python loop runs over beats. Which transforms make positive pairs is a config choice: following CSI
(Tack et al., NeurIPS 2020), transforms that shift the beat's distribution toward an anomaly (a moved R
peak looks premature, a time warp widens the QRS like a ventricular beat) are poor positives, so the
default positives are the mild amplitude and noise ones; shift and warp are opt-in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TRANSFORMS = ("scale", "wander", "noise", "shift", "warp")
# Applied in this order: geometric transforms first, then amplitude and additive ones, then the clamp.
ORDER = ("shift", "warp", "scale", "wander", "noise")


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of each augmentation and which of them build the two positive views (lead: move into config.py)."""

    positives: tuple[str, ...] = ("scale", "wander", "noise")
    scale: tuple[float, float] = (0.85, 1.15)  # amplitude factor, uniform
    wander_amplitude: float = 0.1  # peak of the baseline sinusoid, in units of the [-1, 1] beat
    wander_cycles: tuple[float, float] = (0.1, 0.6)  # its frequency in cycles per window (low: 0.1-0.6 Hz at 360 Hz, 320 samples)
    noise_std: float = 0.02  # Gaussian noise standard deviation, uniform in [0, noise_std] per beat
    max_shift: int = 4  # samples; edges padded with the edge value, never wrapped
    warp: float = 0.1  # time-warp strength in [0, 1): local stretch within 1 +- warp, ends fixed (moves points <= 5 samples of 320)
    warp_cycles: int = 1  # sine periods of the warp over the window

    def __post_init__(self) -> None:
        unknown = [name for name in self.positives if name not in TRANSFORMS]
        if unknown:
            raise ValueError(f"augment positives: unknown transform(s) {unknown} (choose from {', '.join(TRANSFORMS)})")
        if not self.scale[0] <= self.scale[1] or self.scale[0] <= 0:
            raise ValueError(f"augment scale: need 0 < low <= high, got {self.scale}")
        if not 0 <= self.wander_cycles[0] <= self.wander_cycles[1]:
            raise ValueError(f"augment wander_cycles: need 0 <= low <= high, got {self.wander_cycles}")
        if self.wander_amplitude < 0 or self.noise_std < 0 or self.max_shift < 0:
            raise ValueError("augment wander_amplitude, noise_std and max_shift must be >= 0")
        if not 0 <= self.warp < 1:
            raise ValueError(f"augment warp must be in [0, 1) so the warp stays monotone, got {self.warp}")
        if self.warp_cycles < 1:
            raise ValueError(f"augment warp_cycles must be >= 1, got {self.warp_cycles}")

    def max_warp_displacement(self, length: int) -> float:
        """The most, in samples, that time_warp moves any point of a `length`-sample window."""
        return self.warp * (length - 1) / (2 * math.pi * self.warp_cycles)


def _uniform(n: int, low: float, high: float, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """(n, 1, 1) uniform draws in [low, high), on x's device."""
    u = torch.rand((n, 1, 1), generator=gen, device=x.device, dtype=torch.float32)
    return low + (high - low) * u


def amplitude_scale(x: torch.Tensor, low: float, high: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Multiply each beat by a factor uniform in [low, high]."""
    return x * _uniform(x.shape[0], low, high, x, gen).to(x.dtype)


def baseline_wander(x: torch.Tensor, amplitude: float, cycles: tuple[float, float], gen: torch.Generator | None = None) -> torch.Tensor:
    """Add a low-frequency sinusoid (respiration, electrode motion): amplitude uniform in [0, amplitude],
    frequency uniform in `cycles` per window, random phase."""
    n, length = x.shape[0], x.shape[-1]
    amp = _uniform(n, 0.0, amplitude, x, gen)
    freq = _uniform(n, cycles[0], cycles[1], x, gen)
    phase = _uniform(n, 0.0, 2 * math.pi, x, gen)
    t = torch.arange(length, device=x.device, dtype=torch.float32) / length
    return x + (amp * torch.sin(2 * math.pi * freq * t + phase)).to(x.dtype)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise with a per-beat standard deviation uniform in [0, std]."""
    sigma = _uniform(x.shape[0], 0.0, std, x, gen)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32)
    return x + (sigma * noise).to(x.dtype)


def _resample(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x sampled at fractional positions pos (n, 1, length) by linear interpolation, clamped to the edges."""
    length = x.shape[-1]
    pos = pos.clamp(0, length - 1)
    lo = pos.floor().long().clamp(max=length - 2) if length > 1 else pos.floor().long()
    frac = (pos - lo).to(x.dtype)
    idx = lo.expand(-1, x.shape[1], -1)
    left = x.gather(-1, idx)
    right = x.gather(-1, (idx + 1).clamp(max=length - 1))
    return left + frac.expand_as(left) * (right - left)


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Move each beat by an integer number of samples in [-max_shift, max_shift], padding with edge values (no wrap)."""
    n, length = x.shape[0], x.shape[-1]
    s = torch.randint(-max_shift, max_shift + 1, (n, 1, 1), generator=gen, device=x.device)
    idx = (torch.arange(length, device=x.device) - s).clamp(0, length - 1)
    return x.gather(-1, idx.expand(-1, x.shape[1], -1))


def time_warp(x: torch.Tensor, strength: float, cycles: int = 1, gen: torch.Generator | None = None) -> torch.Tensor:
    """Smooth monotone resampling: sample at t + e * sin(2 pi c t) / (2 pi c) with e uniform in [-strength, strength].

    The warp's slope 1 + e cos(.) stays within 1 +- strength (< 1, so monotone); the window's ends stay put.
    """
    n, length = x.shape[0], x.shape[-1]
    e = _uniform(n, -strength, strength, x, gen)
    t = torch.arange(length, device=x.device, dtype=torch.float32) / max(length - 1, 1)
    warped = t + e * torch.sin(2 * math.pi * cycles * t) / (2 * math.pi * cycles)
    return _resample(x, warped * (length - 1))


def draw(n: int, nc: int, length: int, config: AugmentConfig, gen: torch.Generator | None = None,
         transforms: tuple[str, ...] | None = None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The random parameters of one view of n beats, drawn in the order `augment` draws them (the same stream)."""
    chosen = config.positives if transforms is None else transforms
    out: dict[str, torch.Tensor] = {}

    def u(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand((n, 1, 1), generator=gen, device=device, dtype=torch.float32)

    for name in ORDER:
        if name not in chosen:
            continue
        if name == "shift":
            out["shift"] = torch.randint(-config.max_shift, config.max_shift + 1, (n, 1, 1), generator=gen, device=device)
        elif name == "warp":
            out["warp"] = u(-config.warp, config.warp)
        elif name == "scale":
            out["scale"] = u(config.scale[0], config.scale[1])
        elif name == "wander":
            out["wander_amp"], out["wander_freq"] = u(0.0, config.wander_amplitude), u(*config.wander_cycles)
            out["wander_phase"] = u(0.0, 2 * math.pi)
        elif name == "noise":
            out["noise_sigma"] = u(0.0, config.noise_std)
            out["noise"] = torch.randn((n, nc, length), generator=gen, device=device, dtype=torch.float32)
        else:
            raise ValueError(f"unknown augmentation {name!r} (choose from {', '.join(TRANSFORMS)})")
    return out


def apply_drawn(x: torch.Tensor, params: dict[str, torch.Tensor], config: AugmentConfig) -> torch.Tensor:
    """The view of x given parameters from `draw` (one row per beat; rows of several draws may be concatenated)."""
    length = x.shape[-1]
    if "shift" in params:
        idx = (torch.arange(length, device=x.device) - params["shift"]).clamp(0, length - 1)
        x = x.gather(-1, idx.expand(-1, x.shape[1], -1))
    if "warp" in params:
        t = torch.arange(length, device=x.device, dtype=torch.float32) / max(length - 1, 1)
        c = config.warp_cycles
        x = _resample(x, (t + params["warp"] * torch.sin(2 * math.pi * c * t) / (2 * math.pi * c)) * (length - 1))
    if "scale" in params:
        x = x * params["scale"].to(x.dtype)
    if "wander_amp" in params:
        t = torch.arange(length, device=x.device, dtype=torch.float32) / length
        wave = params["wander_amp"] * torch.sin(2 * math.pi * params["wander_freq"] * t + params["wander_phase"])
        x = x + wave.to(x.dtype)
    if "noise" in params:
        x = x + (params["noise_sigma"] * params["noise"]).to(x.dtype)
    return x.clamp(-1.0, 1.0)


def apply(x: torch.Tensor, name: str, config: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """One named transform with its range from config (not clamped)."""
    if name == "scale":
        return amplitude_scale(x, config.scale[0], config.scale[1], gen)
    if name == "wander":
        return baseline_wander(x, config.wander_amplitude, config.wander_cycles, gen)
    if name == "noise":
        return gaussian_noise(x, config.noise_std, gen)
    if name == "shift":
        return shift(x, config.max_shift, gen)
    if name == "warp":
        return time_warp(x, config.warp, config.warp_cycles, gen)
    raise ValueError(f"unknown augmentation {name!r} (choose from {', '.join(TRANSFORMS)})")


def augment(x: torch.Tensor, config: AugmentConfig, gen: torch.Generator | None = None, transforms: tuple[str, ...] | None = None) -> torch.Tensor:
    """One random view of each beat: the chosen transforms (default config.positives) in a fixed order, clamped to [-1, 1].

    The same as applying `amplitude_scale`, `shift`... one after the other with the same generator."""
    return apply_drawn(x, draw(x.shape[0], x.shape[1], x.shape[-1], config, gen, transforms, x.device), config)
