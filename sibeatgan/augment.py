"""ECG augmentations for the student's contrastive views, batched on the device and drawn from a torch.Generator.

A view of beats (n, nc, length) in [-1, 1] is drawn in two parts: `draw` takes one set of random parameters
per beat (the same stream for one beat or for K members' batches drawn one after another), and
`apply_drawn` applies them all at once, with no Python loop over beats; `augment` is the two together.
The transforms, applied in this order: shift (an integer number of samples, edges padded, never wrapped),
time warp (a smooth monotone resampling, ends fixed), amplitude scale, baseline wander (a low-frequency
sinusoid), Gaussian noise; then a clamp to [-1, 1]. Their ranges and which of them make the positive
views are `AugmentConfig` (sibeatgan.config: the student's `augment` section, settable from YAML and `--set`).
"""

from __future__ import annotations

import math

import torch

from sibeatgan.config import AUGMENTATIONS as TRANSFORMS
from sibeatgan.config import AugmentConfig

__all__ = ["ORDER", "TRANSFORMS", "AugmentConfig", "apply_drawn", "augment", "draw"]

# Applied in this order: geometric transforms first, then amplitude and additive ones, then the clamp.
ORDER = ("shift", "warp", "scale", "wander", "noise")


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


def draw(n: int, nc: int, length: int, config: AugmentConfig, gen: torch.Generator | None = None,
         transforms: tuple[str, ...] | None = None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The random parameters of one view of n beats (`transforms`, default config.positives), in ORDER."""
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


def augment(x: torch.Tensor, config: AugmentConfig, gen: torch.Generator | None = None, transforms: tuple[str, ...] | None = None) -> torch.Tensor:
    """One random view of each beat: the chosen transforms (default config.positives) in ORDER, clamped to [-1, 1]."""
    return apply_drawn(x, draw(x.shape[0], x.shape[1], x.shape[-1], config, gen, transforms, x.device), config)
