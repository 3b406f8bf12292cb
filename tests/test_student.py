"""The student's trainer: every term reaches the student and none the teacher; scores; state; the compact width."""

from __future__ import annotations

import pytest
import torch

from sibeatgan.device import Runtime
from sibeatgan.models import Generator
from sibeatgan.models.student import COMPACT_NGF, ProjectionHead, compact_ngf, encoder_stages, generator_flops
from sibeatgan.train.student import StudentTrainer

CPU = Runtime(torch.device("cpu"))
SMALL = dict(ndf=8, batch_size=16, proj_hidden=16, proj_out=8)


def teacher(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(1, 64, 8, 8)


def data(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 64)
    centre = 0.45 + 0.02 * torch.randn(n, 1, 1, generator=g)
    x = torch.exp(-0.5 * ((t - centre) / 0.03) ** 2) + 0.05 * torch.randn(n, 1, 64, generator=g)
    return (2 * (x - x.amin(-1, keepdim=True)) / (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) - 1).float()


def grad_norm(term: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return float(sum(g.abs().sum() for g in grads if g is not None))


@pytest.mark.parametrize("kd,direction", [("latent", "seed"), ("latent", "hinton"), ("attention", "seed")])
def test_each_term_sends_gradient_into_the_student_and_none_into_the_teacher(kd, direction):
    t = teacher()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    tr = StudentTrainer(t, CPU, init="scratch", kd=kd, kd_direction=direction, **SMALL)
    tr.set_train_data(data())
    x = tr.train_x[:16]
    terms = tr.generator_terms(x)
    student = list(tr.G.parameters())
    encoder = list(tr.G.encoder.parameters())
    assert grad_norm(terms.generator, student) > 0
    assert grad_norm(terms.distillation, encoder) > 0  # the KD term is a function of the student, not a constant
    assert grad_norm(terms.contrastive, encoder) > 0
    assert grad_norm(terms.contrastive, list(tr.head.parameters())) > 0
    for term in (terms.generator, terms.distillation, terms.contrastive):
        assert term.requires_grad
    tr.train_epoch()
    assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    assert not t.training
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k]), f"the teacher's {k} changed"


@pytest.mark.parametrize("weight", ["alpha", "beta"])
def test_a_weighted_term_changes_the_update(weight):
    """Switching alpha (or beta) on changes the student's step: a term added as a constant would not."""
    results = []
    for value in (0.0, 1.0):
        tr = StudentTrainer(teacher(), CPU, init="scratch", seed=3, lr=1e-3, alpha=0.0, beta=0.0, **SMALL)
        tr.set_hparams(**{weight: value})
        tr.set_train_data(data())
        tr.train_epoch()
        results.append(torch.cat([p.detach().flatten() for p in tr.G.encoder.parameters()]))
    assert (results[0] - results[1]).abs().max() > 1e-6


def test_training_lowers_the_loss_and_reports_every_term():
    tr = StudentTrainer(teacher(), CPU, init="teacher", lr=1e-3, **SMALL)
    tr.set_train_data(data(64))
    first = tr.train_epoch()
    for _ in range(2):
        last = tr.train_epoch()
    assert set(tr.loss_names) <= set(last)
    assert last["steps"] == 4 and last["beats"] == 64
    assert last["loss_rec"] < first["loss_rec"]
    assert last["loss"] == pytest.approx(last["loss_g"] + 1.0 * last["loss_kd"] + 0.1 * last["loss_con"], rel=1e-4)


def test_scores_and_discrepancy():
    t = teacher()
    tr = StudentTrainer(t, CPU, init="teacher", **SMALL)
    x = data(10, seed=1)
    assert tr.score(x).shape == (1, 10) and tr.discrepancy(x).shape == (1, 10)
    assert tr.discrepancy(x).max() == 0.0  # a student that starts as its teacher agrees with it exactly
    tr.set_train_data(data())
    tr.set_hparams(lr=1e-3)
    tr.train_epoch()
    assert tr.discrepancy(x).min() > 0
    assert tr.G.training  # scoring put the model back into train mode


def test_on_step_and_state_round_trip():
    calls = []
    a = StudentTrainer(teacher(), CPU, init="scratch", seed=1, **SMALL)
    a.set_train_data(data())
    a.train_epoch(on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    state = a.state_dict()
    b = StudentTrainer(teacher(), CPU, init="scratch", seed=99, alpha=5.0, **SMALL)
    b.load_state_dict(state)
    b.set_train_data(data())
    ra, rb = a.train_epoch(), b.train_epoch()
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
    for pa, pb in zip(a.G.parameters(), b.G.parameters()):
        assert torch.equal(pa, pb)


def test_compact_student_and_errors():
    assert COMPACT_NGF == 16
    full, compact = generator_flops(Generator(1, 320, 50, 32), 1, 320), generator_flops(Generator(1, 320, 50, COMPACT_NGF), 1, 320)
    assert 0.22 < compact / full < 0.28
    assert compact_ngf(1, 64, 8, 8) in (3, 4, 5)
    tr = StudentTrainer(teacher(), CPU, ngf=4, init="scratch", **SMALL)
    tr.set_train_data(data())
    assert tr.G.ngf == 4 and tr.train_epoch()["steps"] == 4
    tr_at = StudentTrainer(teacher(), CPU, ngf=4, init="scratch", kd="attention", **SMALL)
    tr_at.set_train_data(data())
    assert tr_at.train_epoch()["loss_kd"] > 0  # attention maps compare across widths
    with pytest.raises(ValueError, match="ngf"):
        StudentTrainer(teacher(), CPU, ngf=4, init="teacher", **SMALL)
    with pytest.raises(ValueError, match="init"):
        StudentTrainer(teacher(), CPU, init="random", **SMALL)
    with pytest.raises(ValueError, match="fewer than one batch"):
        tr.set_train_data(data(8))


def test_projection_head_and_encoder_stages():
    head = ProjectionHead(8, 16, 4)
    assert head(torch.randn(5, 8, 1)).shape == (5, 4)
    g = teacher()
    code, maps = encoder_stages(g.encoder, data(3))
    assert torch.equal(code, g.encoder(data(3)))
    assert [m.shape[1:] for m in maps] == [(8, 32), (16, 16), (32, 8), (64, 4), (128, 2)]
