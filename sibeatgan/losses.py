"""BeatGAN losses: reconstruction, feature matching and the discriminator's real/fake cross-entropy.

All reductions are means, as in the reference (torch.nn.MSELoss / BCELoss defaults), and are
computed in float32 even under bf16 autocast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def reconstruction_loss(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error between beats and their reconstructions."""
    return F.mse_loss(reconstruction.float(), x.float())


def feature_matching_loss(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between D's feature maps of real beats and of their reconstructions."""
    return F.mse_loss(features_fake.float(), features_real.float())


class DiscriminatorLoss(nn.Module):
    """BCE of D: real beats labelled 1, reconstructions 0; takes logits (sigmoid folded in, safe under bf16)."""

    def forward(self, logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
        real, fake = logit_real.float(), logit_fake.float()
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )


class GeneratorLossOutput(NamedTuple):
    total: torch.Tensor
    reconstruction: torch.Tensor
    feature_matching: torch.Tensor


class GeneratorLoss(nn.Module):
    """L_G = ||x - G(x)||^2 + lambda_fm * ||f_D(x) - f_D(G(x))||^2 (BeatGAN; the reference calls lambda w_adv)."""

    def __init__(self, lambda_fm: float = 1.0):
        super().__init__()
        self.lambda_fm = float(lambda_fm)

    def forward(
        self, x: torch.Tensor, reconstruction: torch.Tensor, features_real: torch.Tensor, features_fake: torch.Tensor
    ) -> GeneratorLossOutput:
        rec = reconstruction_loss(x, reconstruction)
        fm = feature_matching_loss(features_real, features_fake)
        return GeneratorLossOutput(rec + self.lambda_fm * fm, rec, fm)
