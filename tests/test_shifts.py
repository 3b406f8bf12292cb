"""Distribution-shifting transforms (synthetic anomalies) and the label-free `synthetic` selection criterion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sibeatgan.config import StudentConfig, TeacherConfig
from sibeatgan.shifts import KINDS, ShiftConfig, local_warp, main_peak, mix, premature, separation_auc, synthesize, widen_qrs
from sibeatgan.train.loop import FitSettings, fit
from tests.test_loop import loop_data, members
from tests.test_teacher import synthetic_dataset

L = 320


def beats(n: int = 16, sigma: float = 4.0, seed: int = 0) -> torch.Tensor:
    """P-QRS-T-like beats of 320 samples, R peak at 140 (a Gaussian of width `sigma`), T waves of random height and place."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L, dtype=torch.float32)
    amp = 0.9 + 0.1 * torch.rand((n, 1), generator=g)
    t_amp, t_at = 0.1 + 0.4 * torch.rand((n, 1), generator=g), 200 + 40 * torch.rand((n, 1), generator=g)

    def bump(c, w, a):
        return a * torch.exp(-0.5 * ((t - c) / w) ** 2)

    x = bump(140.0, sigma, amp) + bump(90.0, 8.0, 0.15) + bump(t_at, 16.0, t_amp) - 0.1
    return x.unsqueeze(1)


def fwhm(x: torch.Tensor) -> torch.Tensor:
    """Full width at half maximum (in samples, interpolated) of each beat's main peak, over its baseline (-0.1)."""
    y = x[:, 0, :] + 0.1
    peak = y.argmax(-1)
    half = y.gather(-1, peak[:, None]) / 2
    above = (y >= half).to(torch.float32)
    widths = []
    for row, p in zip(above, peak.tolist()):  # tests only: a loop over a handful of beats
        lo = p
        while lo > 0 and row[lo - 1] > 0:
            lo -= 1
        hi = p
        while hi < L - 1 and row[hi + 1] > 0:
            hi += 1
        widths.append(hi - lo + 1)
    return torch.tensor(widths, dtype=torch.float32)


def test_widened_qrs_widens_the_main_peak_by_about_its_factor():
    x = beats()
    out = widen_qrs(x, ShiftConfig(qrs_factor=(2.0, 2.0)), torch.Generator().manual_seed(1))
    ratio = fwhm(out) / fwhm(x)
    assert ratio.min() > 1.7 and ratio.max() < 2.3, ratio
    assert (main_peak(out, ShiftConfig()) - 140).abs().max() <= 1  # widened about the peak, not moved
    assert (out[..., :40] - x[..., :40]).abs().max() < 1e-4  # far from the QRS nothing changes


def test_a_premature_onset_moves_the_beat_earlier_by_its_draw():
    x = beats()
    out = premature(x, ShiftConfig(premature=(30, 30)), torch.Generator().manual_seed(0))
    assert (out[:, 0].argmax(-1) == 110).all()
    torch.testing.assert_close(out[..., :L - 30], x[..., 30:])
    drawn = premature(x, ShiftConfig(premature=(25, 70)), torch.Generator().manual_seed(0))
    moved = 140 - drawn[:, 0].argmax(-1)
    assert moved.min() >= 25 and moved.max() <= 70 and moved.unique().numel() > 1  # one draw per beat


def test_a_local_warp_is_monotone_and_moves_samples():
    ramp = torch.linspace(-1, 1, L).expand(32, 1, L).contiguous()
    out = local_warp(ramp, ShiftConfig(), torch.Generator().manual_seed(0))
    assert (out.diff(dim=-1) >= -1e-6).all()  # a time warp keeps the order of time
    moved = (out - ramp).abs().amax(-1).squeeze(1) * (L - 1) / 2  # largest displacement in samples
    assert moved.min() > 1.0
    shift = (out - ramp).abs()[:, 0] * (L - 1) / 2
    far = (torch.arange(L) - shift.argmax(-1, keepdim=True)).abs() > 130  # > 4 of the widest bumps from the most moved sample
    assert far.any() and shift[far].max() < 1.0  # there samples move by less than one: the warp is local


def test_a_mixed_beat_is_its_own_start_and_another_beat_s_end():
    n = 12
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 1, L).contiguous() / n
    out = mix(x, ShiftConfig(mix_cut=(200, 200), mix_ramp=4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[..., :201], x[..., :201])
    end = out[:, 0, -1]
    assert (end != x[:, 0, -1]).all()  # never its own partner
    assert np.isin(end.numpy(), x[:, 0, 0].numpy()).all()  # the end of another beat of the batch
    assert torch.equal(mix(x[:1], ShiftConfig()), x[:1])  # no partner for a single beat


def test_synthesize_is_seeded_deals_every_kind_and_changes_every_beat():
    x = beats(40)
    a, which = synthesize(x, seed=5)
    b, which_b = synthesize(x, seed=5)
    assert torch.equal(a, b) and torch.equal(which, which_b)
    c, _ = synthesize(x, seed=6)
    assert not torch.equal(a, c)
    assert torch.bincount(which, minlength=len(KINDS)).tolist() == [10] * len(KINDS)
    assert a.shape == x.shape and a.abs().max() <= 1
    change = (a - x).abs().amax(-1).squeeze(1)
    assert (change > 0.02).float().mean() >= 0.9  # a few draws are mild (a partner much like the beat, a warp of a flat part)
    assert all(change[which == i].median() > 0.05 for i in range(len(KINDS)))
    only, kinds = synthesize(x, kinds=("premature",))
    assert (kinds == 0).all() and (only[:, 0].argmax(-1) < 140).all()


def test_the_transforms_scale_to_the_window():
    half = ShiftConfig().scaled(160)
    assert (half.peak, half.premature, half.mix_cut, half.qrs_width) == (70, (12, 35), (85, 120), 7.0)
    x = beats(8)[..., ::2].contiguous()  # the same beats at half the rate
    out, which = synthesize(x, kinds=("premature",))
    moved = 70 - out[:, 0].argmax(-1)
    assert moved.min() >= 12 and moved.max() <= 35


def test_bad_shift_settings_are_named():
    with pytest.raises(ValueError, match="bogus"):
        synthesize(beats(2), kinds=("bogus",))
    with pytest.raises(ValueError, match="qrs_factor"):
        ShiftConfig(qrs_factor=(0.5, 2.0))
    with pytest.raises(ValueError, match="premature"):
        ShiftConfig(premature=(40, 20))


def test_separation_auc():
    assert separation_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert separation_auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert separation_auc(np.array([0.1, 0.2]), np.array([0.2, 0.1])) == 0.5
    assert np.isnan(separation_auc(np.array([0.1, np.nan]), np.array([0.2, 0.3])))


def test_shifted_real_beats_score_higher_on_a_model_of_normal_beats(mitdb_dir, tmp_path):
    """On real MIT-BIH beats a reconstruction model of the real beats separates their shifted copies (a sanity check of
    the transforms on real morphology: a PCA of normal beats stands in for the autoencoder)."""
    from sibeatgan.config import PreprocessConfig
    from sibeatgan.data import artifact
    from sibeatgan.data.preprocess import run_preprocess

    run_preprocess(PreprocessConfig(records=("100", "101")), mitdb_dir, tmp_path / "beats", workers=1)
    ds = artifact.load(tmp_path / "beats")
    x = torch.from_numpy(ds.float_beats(np.flatnonzero(ds.labels == 0)[:2000]))
    fitx, held = x[:1000, 0], x[1000:]
    mean = fitx.mean(0)
    basis = torch.linalg.svd(fitx - mean, full_matrices=False).Vh[:8]

    def score(b: torch.Tensor) -> np.ndarray:
        c = b[:, 0] - mean
        return (c - (c @ basis.T) @ basis).pow(2).mean(-1).numpy()

    shifted, which = synthesize(held)
    assert separation_auc(score(held), score(shifted)) > 0.8
    for i, kind in enumerate(KINDS):
        assert separation_auc(score(held), score(shifted[which == i])) > 0.6, kind
    assert (fwhm_ratio := float(np.median(_peak_width(widen_qrs(held, ShiftConfig())) / _peak_width(held)))) > 1.4, fwhm_ratio


def _peak_width(x: torch.Tensor) -> np.ndarray:
    """Samples within 120-160 where the beat is above half its main peak's height over the window's median."""
    y = x[:, 0] - x[:, 0].median(-1, keepdim=True).values
    p = y[:, 120:161].abs().amax(-1, keepdim=True)
    sign = torch.sign(y.gather(-1, (y[:, 120:161].abs().argmax(-1, keepdim=True) + 120)))
    return ((y * sign)[:, 110:171] >= p / 2).sum(-1).numpy().astype(float)


# --- the criterion in the loop -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("beats"), n_normal=900, n_per_class=40, length=64)


def test_synthetic_selection_reads_no_anomaly_labels(dataset, tmp_path):
    data = loop_data(dataset)
    settings = FitSettings(epochs=3, selection="synthetic", eval_batch_size=128)
    result = fit(members(1), data, tmp_path / "labelled", settings)
    assert result["criterion"] == "val_synthetic_auc" and 0.0 <= result["best_metric"] <= 1.0
    history = [r["val_synthetic_auc"] for r in result_history(tmp_path / "labelled")]
    assert len(history) == 3 and result["best_metric"] == max(history)
    data.val_labels = np.zeros_like(data.val_labels)  # every validation beat called normal: nothing labelled to read
    blind = fit(members(1), data, tmp_path / "blind", settings)
    assert blind["best_epoch"] == result["best_epoch"] and blind["best_metric"] == result["best_metric"]
    assert [r["val_synthetic_auc"] for r in result_history(tmp_path / "blind")] == history
    assert all(r["val_auc"] is None for r in result_history(tmp_path / "blind"))  # the labelled criterion has nothing to go on


def result_history(out: Path) -> list[dict]:
    import json

    return json.loads((out / "metrics.json").read_text())["history"]


def test_synthetic_is_a_selection_of_every_step_and_the_search_maximises_it(tmp_path):
    from sibeatgan.config import TuneConfig
    from sibeatgan.search import open_study

    assert TeacherConfig(selection="synthetic").selection == StudentConfig(selection="synthetic").selection == "synthetic"
    study = open_study(TuneConfig(study_name="syn"), "synthetic", tmp_path)
    assert study.direction.name == "MAXIMIZE" and study.user_attrs["criterion"] == "val_synthetic_auc"
    with pytest.raises(Exception, match="bogus"):
        open_study(TuneConfig(study_name="bad"), "bogus", tmp_path)


# --- the bet: shifted beats as NT-Xent negatives (CSI), off by default -----------------------------


def test_nt_xent_negatives_enter_only_the_denominator():
    from sibeatgan.losses import nt_xent

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    plain = nt_xent(z1, z2, 0.2)
    assert torch.equal(nt_xent(z1, z2, 0.2, None), plain)
    neg = torch.randn(8, 16, generator=g, requires_grad=True)
    with_neg = nt_xent(z1, z2, 0.2, neg)
    assert with_neg > plain  # more terms in every anchor's denominator
    with_neg.backward()
    assert neg.grad is not None and neg.grad.abs().sum() > 0  # the negatives are pushed away: gradient reaches them
    far = nt_xent(z1, z2, 0.2, -torch.cat([z1, z2])[:8] * 100)  # negatives opposite to anchors barely count
    assert far - plain < with_neg - plain


def test_a_student_with_shift_negatives_trains_and_is_off_by_default():
    from sibeatgan.device import Runtime
    from sibeatgan.models import Generator
    from sibeatgan.train.student import StudentTrainer

    rt = Runtime(torch.device("cpu"))
    teacher = Generator(1, 64, 8, 8)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (64, 1, 64)).astype(np.float32))
    plain = StudentTrainer(teacher, rt, ndf=8, batch_size=32, seed=1)
    assert plain.shift_negatives is False
    bet = StudentTrainer(teacher, rt, ndf=8, batch_size=32, seed=1, shift_negatives=True)
    terms_plain, terms_bet = plain.generator_terms(x[:32]), bet.generator_terms(x[:32])
    torch.testing.assert_close(terms_plain.reconstruction, terms_bet.reconstruction)
    assert terms_bet.contrastive > terms_plain.contrastive  # 32 more negatives per anchor
    bet.set_train_data(x)
    row = bet.train_epoch()
    assert row["steps"] == 2 and np.isfinite(row["loss_con"])
    with pytest.raises(ValueError, match="eagerly"):
        StudentTrainer(teacher, rt, ndf=8, batch_size=32, shift_negatives=True, graphs=object())


def test_the_bet_uses_the_project_s_two_level_bootstrap():
    """bench/bet.py's comparisons are sibeatgan.metrics.paired_compare_units at level unit+record (one two-level
    bootstrap in the project, whose coverage tests/test_metrics.py checks), with the record-only figures of the same draws."""
    from bench.bet import compare_pair
    from sibeatgan.metrics import paired_compare_units

    rng = np.random.default_rng(0)
    n = 2000
    records, labels = rng.integers(0, 25, n).astype(str), (rng.random(n) < 0.3).astype(int)
    a = [rng.normal(size=n) + labels for _ in range(3)]
    b = [x + rng.normal(scale=0.3, size=n) + shift * labels for x, shift in zip(a, (-0.3, 0.0, 0.3))]  # seeds disagree
    got = compare_pair(a, b, labels, records, 400)
    want = paired_compare_units([(x, y, labels, records) for x, y in zip(a, b)], 400, level="unit+record")
    assert got["two_level"]["delta_auc_ci"] == want["delta_auc_ci"] and got["two_level"]["bootstrap"] == "unit+record"
    one = paired_compare_units([(x, y, labels, records) for x, y in zip(a, b)], 400, level="record")
    assert got["record_only"]["delta_auc_ci"] == one["delta_auc_ci"]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(got["two_level"]["delta_auc_ci"]) > 2 * width(one["delta_auc_ci"])  # the seed-to-seed spread widens it


def test_the_committed_criterion_and_bet_figures_recompute_from_their_scores():
    """bench/criterion.md and bench/bet.md: every figure again from the committed per-beat scores (no model)."""
    from bench import bet, criterion

    root = Path(__file__).resolve().parents[1] / "bench" / "results"
    table = criterion.report(root / "criterion-cpu-2026-12-03")  # raises when criterion.json disagrees with the scores
    assert "| synthetic_auc (synthetic) |" in table
    assert "| bet_vs_control |" in bet.report(root / "bet-cpu-2026-12-03")
