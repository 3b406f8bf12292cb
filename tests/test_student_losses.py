"""Student losses: NT-Xent against a plain reference, both KL directions, attention transfer, StudentLoss's sum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sibeatgan.losses import StudentLoss, attention_map, attention_transfer_loss, distillation_loss, nt_xent


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's loss written out anchor by anchor: -log(exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau))."""
    z = torch.cat([z1, z2]).double()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [F.cosine_similarity(z[i], z[k], dim=0) / tau for k in range(2 * n)]
        denominator = sum(math.exp(float(sims[k])) for k in range(2 * n) if k != i)
        assert len([k for k in range(2 * n) if k not in (i, j)]) == 2 * (n - 1)  # the negatives
        total += -math.log(math.exp(float(sims[j])) / denominator)
    return torch.tensor(total / (2 * n))


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(nt_xent_reference(z1, z2, tau).item(), rel=1e-5)
    assert nt_xent(z1, z2, torch.tensor(tau)).item() == pytest.approx(nt_xent_reference(z1, z2, tau).item(), rel=1e-5)


def test_nt_xent_rewards_agreeing_views_and_batches_over_members():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.2) < nt_xent(z, torch.randn(8, 16, generator=g), 0.2)
    zs1, zs2 = torch.randn(3, 8, 4, generator=g), torch.randn(3, 8, 4, generator=g)
    taus = torch.tensor([0.1, 0.3, 1.0])
    batched = nt_xent(zs1, zs2, taus)
    assert batched.shape == (3,)
    for k in range(3):
        assert batched[k].item() == pytest.approx(nt_xent(zs1[k], zs2[k], float(taus[k])).item(), rel=1e-6)


def test_distillation_directions_match_kl_div():
    g = torch.Generator().manual_seed(2)
    fs, ft = torch.randn(10, 7, generator=g), torch.randn(10, 7, generator=g)
    T = torch.tensor(3.0)
    log_s, log_t = F.log_softmax(fs / 3, -1), F.log_softmax(ft / 3, -1)
    seed = F.kl_div(log_t, log_s, reduction="batchmean", log_target=True)  # KL(p_s || p_t)
    hinton = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * 9  # KL(p_t || p_s) T^2
    assert distillation_loss(fs, ft, T, "seed").item() == pytest.approx(seed.item(), rel=1e-5)
    assert distillation_loss(fs, ft, T, "hinton").item() == pytest.approx(hinton.item(), rel=1e-5)
    assert distillation_loss(ft, ft, T).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="direction"):
        distillation_loss(fs, ft, T, "forward")


def test_distillation_per_member_temperature_and_gradient():
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(2, 5, 4, generator=g, requires_grad=True)
    ft = torch.randn(2, 5, 4, generator=g)
    T = torch.tensor([1.0, 4.0])
    out = distillation_loss(fs, ft, T, "hinton")
    for k in range(2):
        assert out[k].item() == pytest.approx(distillation_loss(fs[k], ft[k], float(T[k]), "hinton").item(), rel=1e-6)
    out.sum().backward()
    assert fs.grad.abs().sum() > 0


def test_attention_transfer_compares_models_of_different_width():
    g = torch.Generator().manual_seed(4)
    student = [torch.randn(4, 8, 32, generator=g), torch.randn(4, 16, 16, generator=g)]
    teacher = [torch.randn(4, 32, 32, generator=g), torch.randn(4, 64, 16, generator=g)]
    assert attention_map(student[0]).shape == (4, 32)
    assert attention_map(student[0]).norm(dim=-1).allclose(torch.ones(4))
    assert attention_transfer_loss(student, teacher).item() > 0
    same = attention_transfer_loss([2 * t for t in teacher], teacher)  # attention maps are normalised: scale-free
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="stages"):
        attention_transfer_loss(student[:1], teacher)


def test_student_loss_sums_its_terms_and_takes_weights_in_place():
    g = torch.Generator().manual_seed(5)
    x, rec = torch.rand(4, 1, 64, generator=g), torch.rand(4, 1, 64, generator=g)
    fr, ff = torch.randn(4, 16, 2, generator=g), torch.randn(4, 16, 2, generator=g)
    cs, ct, p1, p2 = (torch.randn(4, 8, generator=g) for _ in range(4))
    loss = StudentLoss(lambda_fm=0.5, alpha=2.0, beta=0.3, T=2.0, tau=0.4)
    storage = loss.T.data_ptr()
    out = loss(x, rec, fr, ff, cs, ct, p1, p2)
    assert out.generator.item() == pytest.approx((out.reconstruction + 0.5 * out.feature_matching).item(), rel=1e-6)
    assert out.total.item() == pytest.approx((out.generator + 2.0 * out.distillation + 0.3 * out.contrastive).item(), rel=1e-6)
    assert out.contrastive.item() == pytest.approx(nt_xent(p1, p2, 0.4).item(), rel=1e-6)
    loss.set(T=torch.tensor(5.0), alpha=0.0)
    assert loss.T.data_ptr() == storage and loss.T.item() == 5.0
    out2 = loss(x, rec, fr, ff, cs, ct, p1, p2)
    assert out2.distillation.item() == pytest.approx(distillation_loss(cs, ct, 5.0).item(), rel=1e-6)
    assert out2.total.item() == pytest.approx((out2.generator + 0.3 * out2.contrastive).item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        loss.set(gamma=1.0)
    with pytest.raises(ValueError, match="attention"):
        StudentLoss(kd="attention")(x, rec, fr, ff, cs, ct, p1, p2)
