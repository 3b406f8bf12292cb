"""Torch modules the student adds to BeatGAN: a SimCLR projection head, the encoder's stage maps, FLOP counts.

The student's generator is `Generator(nc, length, nz, ngf)` itself; its width `ngf` sets its cost.
Measured with torch.utils.flop_counter (one 1 x 320 beat, nz 50): ngf 32 (the teacher) 40.4 MFLOPs,
ngf 16 10.4 MFLOPs (25.7%), so COMPACT_NGF = 16 is the quarter-FLOPs student.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from sibeatgan.models.beatgan import Encoder, Generator

COMPACT_NGF = 16  # about a quarter of the ngf=32 teacher's FLOPs (25.7%, see module docstring)


class ProjectionHead(nn.Module):
    """SimCLR's g: Linear -> ReLU -> Linear on the flattened latent code (b, nz[, 1]) -> (b, out)."""

    def __init__(self, nz: int = 50, hidden: int = 128, out: int = 64):
        super().__init__()
        self.nz, self.hidden, self.out = nz, hidden, out
        self.fc1 = nn.Linear(nz, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def hparams(self) -> dict[str, int]:
        return {"nz": self.nz, "hidden": self.hidden, "out": self.out}

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(latent.flatten(1))))


def encoder_stages(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The latent code (b, nz, 1) and the map after each of the encoder's activations (b, C_i, L_i), for attention transfer."""
    maps: list[torch.Tensor] = []
    h = x
    for layer in encoder.main:
        h = layer(h)
        if isinstance(layer, nn.LeakyReLU):
            maps.append(h)
    return h, maps


def generator_flops(generator: nn.Module, nc: int, length: int) -> int:
    """FLOPs of one beat through `generator` (encoder and decoder), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = generator.training
    generator.eval()
    param = next(generator.parameters())
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            generator(torch.zeros(1, nc, length, device=param.device, dtype=param.dtype))
    finally:
        generator.train(was_training)
    return int(counter.get_total_flops())


def compact_ngf(nc: int = 1, length: int = 320, nz: int = 50, teacher_ngf: int = 32, fraction: float = 0.25) -> int:
    """The width whose generator's FLOPs come closest to `fraction` of the teacher's."""
    target = fraction * generator_flops(Generator(nc, length, nz, teacher_ngf), nc, length)
    widths = range(1, teacher_ngf + 1)
    return min(widths, key=lambda w: abs(generator_flops(Generator(nc, length, nz, w), nc, length) - target))


@contextlib.contextmanager
def batch_stats_only(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but leave their running statistics alone
    (the augmented views must not shift the statistics used to score clean beats)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradient for every parameter: the frozen teacher."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def adjust_bn_momentum(module: nn.Module) -> None:
    """Two reference updates of the running statistics per step, folded into one (as the teacher's trainer does)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d) and m.momentum is not None:
            m.momentum = 1.0 - (1.0 - m.momentum) ** 2
