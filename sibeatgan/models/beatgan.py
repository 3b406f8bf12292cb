"""BeatGAN torch modules (Zhou et al., IJCAI 2019): a 1-D conv autoencoder and its discriminator.

Layer for layer as in the reference code (hi-bingo/BeatGAN, experiments/ecg/network.py):
five stride-2 convolutions halve the beat five times, and a last convolution whose kernel
spans what is left (length // 32, so 10 for 320 samples) maps to the latent code. The
discriminator's head returns a logit (no sigmoid) so its loss can use BCE-with-logits,
which is safe under bf16 autocast; sigmoid(logit) is the reference's probability.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

N_DOWN = 5  # stride-2 stages between the beat and the last convolution


class GeneratorOutput(NamedTuple):
    """reconstruction: (b, nc, length) in [-1, 1]; latent: (b, nz, 1)."""

    reconstruction: torch.Tensor
    latent: torch.Tensor


class DiscriminatorOutput(NamedTuple):
    """logit: (b,) real-vs-fake logit; features: (b, 16 * ndf, length // 32), the map before the head."""

    logit: torch.Tensor
    features: torch.Tensor


def final_kernel(length: int) -> int:
    """Kernel of the last encoder convolution (first decoder one) for a beat `length`: length / 32."""
    step = 2**N_DOWN
    if length < step or length % step:
        raise ValueError(f"beat length {length} must be a positive multiple of {step} (e.g. 320)")
    return length // step


def xavier_std(weight: torch.Tensor) -> float:
    """Standard deviation of nn.init.xavier_normal_ (gain 1) for a conv weight: sqrt(2 / (fan_in + fan_out))."""
    receptive = weight[0][0].numel()
    return math.sqrt(2.0 / float((weight.shape[0] + weight.shape[1]) * receptive))


def init_spec(module: nn.Module) -> Iterator[tuple[nn.Parameter, float, float]]:
    """(parameter, mean, std) of the reference init of `module`'s own parameters; std 0 means the constant `mean`.

    Xavier-normal conv weights, conv biases 0, BatchNorm weight N(1, 0.02) and bias 0. init_weights draws
    from it at construction and the teacher redraws D from it, so the two never disagree.
    """
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        yield module.weight, 0.0, xavier_std(module.weight)
        if module.bias is not None:
            yield module.bias, 0.0, 0.0
    elif isinstance(module, nn.BatchNorm1d) and module.affine:
        yield module.weight, 1.0, 0.02
        yield module.bias, 0.0, 0.0


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """Reference init of `module`'s own parameters (see init_spec); draws exactly as xavier_normal_ / normal_ / zeros_ do."""
    for param, mean, std in init_spec(module):
        if std > 0:
            param.normal_(mean, std)
        else:
            param.fill_(mean)


def _encoder_body(nc: int, nf: int) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv1d(nc, nf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for i in range(N_DOWN - 1):
        cin, cout = nf * 2**i, nf * 2 ** (i + 1)
        layers += [nn.Conv1d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm1d(cout), nn.LeakyReLU(0.2, inplace=True)]
    return layers


class Encoder(nn.Module):
    """(b, nc, length) -> (b, out, 1): nc -> nf -> ... -> 16 nf channels, then a length/32 kernel."""

    def __init__(self, nc: int, length: int, nf: int = 32, out: int = 50):
        super().__init__()
        self.main = nn.Sequential(*_encoder_body(nc, nf), nn.Conv1d(nf * 2 ** (N_DOWN - 1), out, final_kernel(length), 1, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class Decoder(nn.Module):
    """(b, nz, 1) -> (b, nc, length): the encoder mirrored with transposed convolutions and a tanh."""

    def __init__(self, nc: int, length: int, nz: int = 50, ngf: int = 32):
        super().__init__()
        top = ngf * 2 ** (N_DOWN - 1)
        layers: list[nn.Module] = [nn.ConvTranspose1d(nz, top, final_kernel(length), 1, 0, bias=False), nn.BatchNorm1d(top), nn.ReLU(True)]
        for i in range(N_DOWN - 1, 0, -1):
            cin, cout = ngf * 2**i, ngf * 2 ** (i - 1)
            layers += [nn.ConvTranspose1d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose1d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Generator(nn.Module):
    """The BeatGAN autoencoder G; forward returns (reconstruction, latent) in train and eval alike."""

    def __init__(self, nc: int = 1, length: int = 320, nz: int = 50, ngf: int = 32):
        super().__init__()
        self.nc, self.length, self.nz, self.ngf = nc, length, nz, ngf
        self.encoder = Encoder(nc, length, ngf, nz)
        self.decoder = Decoder(nc, length, nz, ngf)
        self.apply(init_weights)

    def hparams(self) -> dict[str, int]:
        """The constructor arguments, enough to rebuild this module from a state dict."""
        return {"nc": self.nc, "length": self.length, "nz": self.nz, "ngf": self.ngf}

    def forward(self, x: torch.Tensor) -> GeneratorOutput:
        latent = self.encoder(x)
        return GeneratorOutput(self.decoder(latent), latent)


class Discriminator(nn.Module):
    """BeatGAN's D: the encoder body as feature extractor f_D, and a one-unit convolutional head."""

    def __init__(self, nc: int = 1, length: int = 320, ndf: int = 32):
        super().__init__()
        self.nc, self.length, self.ndf = nc, length, ndf
        self.features = nn.Sequential(*_encoder_body(nc, ndf))
        self.head = nn.Conv1d(ndf * 2 ** (N_DOWN - 1), 1, final_kernel(length), 1, 0, bias=False)
        self.apply(init_weights)

    def hparams(self) -> dict[str, int]:
        return {"nc": self.nc, "length": self.length, "ndf": self.ndf}

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        features = self.features(x)
        return DiscriminatorOutput(self.head(features).reshape(-1), features)
