"""BeatGAN modules and losses: shapes for any lead count and length, reference init, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sibeatgan.losses import DiscriminatorLoss, GeneratorLoss, feature_matching_loss, reconstruction_loss
from sibeatgan.models import Discriminator, DiscriminatorOutput, Generator, GeneratorOutput, final_kernel, init_weights
from sibeatgan.models.beatgan import init_spec


@pytest.mark.parametrize("nc,length", [(1, 320), (2, 320), (1, 256), (2, 96)])
def test_shapes(nc, length):
    torch.manual_seed(0)
    g, d = Generator(nc, length, nz=50, ngf=32), Discriminator(nc, length, ndf=32)
    x = torch.rand(4, nc, length) * 2 - 1
    for mode in (g.train, g.eval):
        mode()
        out = g(x)
        assert isinstance(out, GeneratorOutput)
        assert out.reconstruction.shape == (4, nc, length) and out.latent.shape == (4, 50, 1)
        assert float(out.reconstruction.detach().abs().max()) <= 1.0
    for mode in (d.train, d.eval):
        mode()
        out = d(x)
        assert isinstance(out, DiscriminatorOutput)
        assert out.logit.shape == (4,) and out.features.shape == (4, 512, length // 32)


def test_reference_layout_for_320_samples():
    g, d = Generator(), Discriminator()
    convs = [m for m in g.encoder.main if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (1, 32, 4, 2), (32, 64, 4, 2), (64, 128, 4, 2), (128, 256, 4, 2), (256, 512, 4, 2), (512, 50, 10, 1)]
    deconvs = [m for m in g.decoder.main if isinstance(m, torch.nn.ConvTranspose1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in deconvs] == [
        (50, 512, 10), (512, 256, 4), (256, 128, 4), (128, 64, 4), (64, 32, 4), (32, 1, 4)]
    assert isinstance(g.decoder.main[-1], torch.nn.Tanh)
    assert d.head.kernel_size == (10,) and d.head.out_channels == 1
    assert sum(p.numel() for p in d.parameters()) == 703_488
    assert g.hparams() == {"nc": 1, "length": 320, "nz": 50, "ngf": 32}


@pytest.mark.parametrize("length", [0, 16, 100, 330])
def test_length_must_be_a_multiple_of_32(length):
    with pytest.raises(ValueError, match="multiple of 32"):
        Generator(length=length)
    assert final_kernel(320) == 10


def test_init_statistics():
    torch.manual_seed(1)
    g = Generator()
    for m in g.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            w = m.weight.detach()
            fan = (w.shape[0] + w.shape[1]) * w.shape[2]
            if w.numel() > 5000:
                assert float(w.std()) == pytest.approx(math.sqrt(2 / fan), rel=0.1)
                assert abs(float(w.mean())) < 0.1 * math.sqrt(2 / fan)
        elif isinstance(m, torch.nn.BatchNorm1d):
            assert bool((m.bias == 0).all())
            if m.num_features >= 256:
                assert float(m.weight.detach().mean()) == pytest.approx(1.0, abs=0.005)
                assert float(m.weight.detach().std()) == pytest.approx(0.02, rel=0.2)


def torch_reference_init(module: torch.nn.Module) -> None:
    """The reference's init written with torch.nn.init, as init_weights was before it drew from init_spec."""
    if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
        torch.nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.BatchNorm1d):
        torch.nn.init.normal_(module.weight, 1.0, 0.02)
        torch.nn.init.zeros_(module.bias)


@pytest.mark.parametrize("build", [
    lambda: Generator(2, 96, nz=8, ngf=8),
    lambda: Discriminator(1, 64, ndf=8),
    lambda: torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.BatchNorm1d(4), torch.nn.ConvTranspose1d(4, 2, 4)),
], ids=["generator", "discriminator", "biased-convs"])
def test_init_weights_draws_exactly_as_torch_init(build):
    """Seeded results must not change: the same values and the same random numbers consumed as xavier_normal_/normal_/zeros_."""
    module = build()
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(0.3)
    results = []
    for init in (init_weights, torch_reference_init):
        torch.manual_seed(7)
        module.apply(init)
        results.append(({k: v.clone() for k, v in module.state_dict().items()}, torch.get_rng_state()))
    (ours, rng_ours), (ref, rng_ref) = results
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k
    assert torch.equal(rng_ours, rng_ref)


def test_init_spec_covers_every_parameter_with_the_reference_distribution():
    for module in (Generator(2, 96, nz=8, ngf=8), Discriminator(1, 64, ndf=8), torch.nn.Conv1d(3, 5, 7)):
        spec = [entry for m in module.modules() for entry in init_spec(m)]
        assert [id(p) for p, _, _ in spec] == [id(p) for p in module.parameters()]
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                (mean, std), = [(mu, sd) for q, mu, sd in spec if q is p]
                if isinstance(m, torch.nn.BatchNorm1d):
                    assert (mean, std) == ((1.0, 0.02) if name == "weight" else (0.0, 0.0))
                elif name == "bias":
                    assert (mean, std) == (0.0, 0.0)
                else:
                    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(p)
                    assert (mean, std) == (0.0, math.sqrt(2.0 / (fan_in + fan_out)))


def test_losses_carry_gradient_to_the_generator():
    torch.manual_seed(2)
    g, d = Generator(1, 64, nz=8, ngf=8), Discriminator(1, 64, ndf=8)
    x = torch.rand(8, 1, 64) * 2 - 1
    fake = g(x).reconstruction
    losses = {
        "reconstruction": reconstruction_loss(x, fake),
        "feature_matching": feature_matching_loss(d(x).features.detach(), d(fake).features),
        "discriminator": DiscriminatorLoss()(d(x).logit, d(fake).logit),
        "generator": GeneratorLoss(lambda_fm=0.5)(x, fake, d(x).features, d(fake).features).total,
    }
    first = next(iter(g.encoder.parameters()))
    for name, loss in losses.items():
        (grad,) = torch.autograd.grad(loss, first, retain_graph=True)
        assert float(grad.abs().sum()) > 0, name


def test_loss_values():
    torch.manual_seed(3)
    x, y = torch.randn(4, 1, 32), torch.randn(4, 1, 32)
    assert float(reconstruction_loss(x, x)) == 0 and float(feature_matching_loss(y, y)) == 0
    assert float(reconstruction_loss(x, y)) == pytest.approx(float(((x - y) ** 2).mean()))
    real, fake = torch.randn(16), torch.randn(16)
    expected = F.binary_cross_entropy(torch.sigmoid(real), torch.ones(16)) + F.binary_cross_entropy(torch.sigmoid(fake), torch.zeros(16))
    assert float(DiscriminatorLoss()(real, fake)) == pytest.approx(float(expected), rel=1e-5)
    fr, ff = torch.randn(4, 8, 2), torch.randn(4, 8, 2)
    out = GeneratorLoss(lambda_fm=2.0)(x, y, fr, ff)
    assert float(out.total) == pytest.approx(float(out.reconstruction + 2.0 * out.feature_matching))
    assert float(out.feature_matching) == pytest.approx(float(((fr - ff) ** 2).mean()))


def test_modules_are_deterministic_under_a_seed():
    torch.manual_seed(4)
    a = Generator(1, 64, nz=8, ngf=8)
    torch.manual_seed(4)
    b = Generator(1, 64, nz=8, ngf=8)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
