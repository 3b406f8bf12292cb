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



# ---- student: distillation, attention transfer, NT-Xent and their sum ----------------------------
# Each function reduces only over its trailing dimensions, so the same code serves one model (inputs
# (b, ...), weights 0-d) and K batched members (inputs (K, b, ...), weights (K,)), one value per member.
# Temperatures and weights may be device tensors: a captured CUDA graph then reads their current values.

Weight = torch.Tensor | float


def _per_member(value: Weight, trailing: int) -> Weight:
    """A 0-d or (K,) weight reshaped to broadcast over `trailing` more dimensions."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.reshape(value.shape + (1,) * trailing)
    return value


def distillation_loss(f_s: torch.Tensor, f_t: torch.Tensor, T: Weight, direction: str = "seed") -> torch.Tensor:
    """KL between temperature-softened distributions over each beat's code, averaged over the batch.

    f_s, f_t: (..., b, d) flattened student and teacher codes. "seed": KL(softmax(f_s/T) || softmax(f_t/T)),
    as the seed writes it; "hinton": KL(softmax(f_t/T) || softmax(f_s/T)) * T^2. Returns shape (...).
    """
    if direction not in ("seed", "hinton"):
        raise ValueError(f"distillation direction must be 'seed' or 'hinton', not {direction!r}")
    temp = _per_member(T, 2)
    log_s = F.log_softmax(f_s.float() / temp, dim=-1)
    log_t = F.log_softmax(f_t.float() / temp, dim=-1)
    if direction == "seed":
        return (log_s.exp() * (log_s - log_t)).sum(-1).mean(-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean(-1) * _per_member(T, 0) ** 2


def attention_map(features: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis spatial attention of (..., b, C, L) maps: mean over channels of |a|^p, L2-normalised per beat.

    Averaging over channels makes maps of models of different widths comparable: (..., b, L).
    """
    att = features.float().abs().pow(p).mean(-2)
    return F.normalize(att, dim=-1)


def attention_transfer_loss(feats_s: list[torch.Tensor] | tuple[torch.Tensor, ...], feats_t: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Sum over stages of the mean squared distance between normalised attention maps; shape (...).

    feats_*: one (..., b, C, L) map per encoder stage; channel counts may differ, lengths must match.
    """
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(f"attention transfer needs the same non-zero number of stages, got {len(feats_s)} and {len(feats_t)}")
    total = None
    for s, t in zip(feats_s, feats_t):
        term = (attention_map(s) - attention_map(t)).pow(2).sum(-1).mean(-1)
        total = term if total is None else total + term
    return total


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: Weight, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """SimCLR's NT-Xent of two views (..., N, d): for each of the 2N anchors its other view is the positive and
    the 2(N-1) other embeddings the negatives; cosine similarity over tau; mean over anchors. Returns (...).

    negatives (..., M, d), optional: more negatives of every anchor (CSI's shifted instances: embeddings of
    distribution-shifted beats, pushed away from every real view); they are never anchors themselves."""
    z = F.normalize(torch.cat([z1, z2], dim=-2).float(), dim=-1)
    n = z1.shape[-2]
    sim = z @ z.transpose(-1, -2) / _per_member(tau, 2)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    pos = torch.arange(2 * n, device=z.device).add(n).remainder(2 * n)
    positive = sim.gather(-1, pos.expand(sim.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    if negatives is not None:
        neg = F.normalize(negatives.float(), dim=-1)
        sim = torch.cat([sim, z @ neg.transpose(-1, -2) / _per_member(tau, 2)], dim=-1)
    return (torch.logsumexp(sim, dim=-1) - positive).mean(-1)


def mse_trailing(a: torch.Tensor, b: torch.Tensor, dims: int) -> torch.Tensor:
    """Mean squared difference over the last `dims` dimensions, in float32."""
    return (a.float() - b.float()).pow(2).mean(dim=tuple(range(-dims, 0)))


def discriminator_loss_trailing(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """DiscriminatorLoss reduced over the last dimension only: (K, b) logits of K members give (K,) losses, in float32."""
    real, fake = logit_real.float(), logit_fake.float()
    bce = F.binary_cross_entropy_with_logits
    return bce(real, torch.ones_like(real), reduction="none").mean(-1) + bce(fake, torch.zeros_like(fake), reduction="none").mean(-1)


class StudentLossOutput(NamedTuple):
    """Every term of the student's objective; each of shape () for one model or (K,) for K members."""

    total: torch.Tensor
    generator: torch.Tensor  # L_G = reconstruction + lambda * feature matching
    reconstruction: torch.Tensor
    feature_matching: torch.Tensor
    distillation: torch.Tensor
    contrastive: torch.Tensor


STUDENT_WEIGHTS = ("lambda_fm", "alpha", "beta", "T", "tau")


class StudentLoss(nn.Module):
    """L = L_G + alpha * L_KD + beta * NT-Xent, with L_G = ||x - G(x)||^2 + lambda * ||f_D(x) - f_D(G(x))||^2.

    lambda_fm, alpha, beta, T and tau are buffers (0-d, or (K,) for K members): change them in place with
    `set(...)` and a captured CUDA graph sees the new values. `kd` picks the distillation target: "latent"
    (the KL above on the code) or "attention" (attention transfer on the encoder's feature maps).
    """

    def __init__(self, lambda_fm: Weight = 1.0, alpha: Weight = 1.0, beta: Weight = 0.1, T: Weight = 4.0, tau: Weight = 0.2,
                 kd: str = "latent", direction: str = "seed", members: int | None = None):
        super().__init__()
        if kd not in ("latent", "attention"):
            raise ValueError(f"kd must be 'latent' or 'attention', not {kd!r}")
        if direction not in ("seed", "hinton"):
            raise ValueError(f"distillation direction must be 'seed' or 'hinton', not {direction!r}")
        self.kd, self.direction = kd, direction
        shape = () if members is None else (int(members),)
        for name, value in zip(STUDENT_WEIGHTS, (lambda_fm, alpha, beta, T, tau)):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float32))
        self.set(lambda_fm=lambda_fm, alpha=alpha, beta=beta, T=T, tau=tau)

    @torch.no_grad()
    def set(self, **weights: Weight) -> None:
        """Copy new values into the weight buffers in place (a scalar, or one value per member)."""
        for name, value in weights.items():
            if name not in STUDENT_WEIGHTS:
                raise ValueError(f"unknown student loss weight {name!r} (one of {', '.join(STUDENT_WEIGHTS)})")
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype).to(buf.device).expand_as(buf))

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor, features_real: torch.Tensor, features_fake: torch.Tensor,
                code_s: torch.Tensor, code_t: torch.Tensor, proj1: torch.Tensor, proj2: torch.Tensor,
                maps_s: list[torch.Tensor] | None = None, maps_t: list[torch.Tensor] | None = None,
                proj_neg: torch.Tensor | None = None) -> StudentLossOutput:
        """x, reconstruction: (..., b, nc, L); features_*: D's maps (..., b, C, L'); code_*: (..., b, nz);
        proj1/2: projections of two views (..., b, p); maps_*: encoder feature maps, needed for kd="attention";
        proj_neg (..., m, p): projections of shifted beats, extra NT-Xent negatives (off when None)."""
        rec = mse_trailing(x, reconstruction, 3)
        fm = mse_trailing(features_real, features_fake, 3)
        l_g = rec + self.lambda_fm * fm
        if self.kd == "latent":
            kd = distillation_loss(code_s, code_t, self.T, self.direction)
        else:
            if maps_s is None or maps_t is None:
                raise ValueError("kd='attention' needs the encoder feature maps of student and teacher")
            kd = attention_transfer_loss(maps_s, maps_t)
        con = nt_xent(proj1, proj2, self.tau, proj_neg)
        return StudentLossOutput(l_g + self.alpha * kd + self.beta * con, l_g, rec, fm, kd, con)
