"""Scores, metrics and their bootstrap intervals against known cases and sklearn; thresholds; paired comparison."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from sibeatgan.metrics import (
    _Sampler,
    bootstrap,
    choose_threshold,
    interval,
    metrics,
    paired_compare,
    paired_compare_units,
    ranked_metrics,
    score,
)
from sibeatgan.models import Generator

PAIRED_KEYS = {"auc_a", "auc_b", "ap_a", "ap_b", "delta_auc", "delta_ap", "delta_auc_ci", "delta_ap_ci", "p_auc", "p_ap", "n", "n_groups"}


def test_metrics_module_stands_below_training_and_evaluation():
    """metrics.py imports neither training nor evaluation (nor sklearn/matplotlib at module level)."""
    tree = ast.parse(Path(__import__("sibeatgan.metrics").metrics.__file__).read_text())
    imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith(("sibeatgan.train", "sibeatgan.evaluate", "sklearn", "matplotlib"))}
    assert {"numpy", "torch"} <= imported


def test_score_is_the_per_beat_mean_squared_error_in_any_batch_size():
    torch.manual_seed(0)
    g = Generator(2, 64, nz=8, ngf=8).train()
    x = torch.rand(37, 2, 64) * 2 - 1
    with torch.no_grad():
        g.eval()
        expected = ((g(x).reconstruction - x) ** 2).mean(dim=(1, 2)).numpy()
        g.train()
    for batch in (1, 8, 37, 100):
        got = score(g, x, batch, "cpu")
        assert got.shape == (37,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert g.training  # mode restored
    np.testing.assert_allclose(score(g, x.numpy(), 16), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="float"):
        score(g, torch.zeros(3, 2, 64, dtype=torch.int16))


@pytest.mark.parametrize("seed", range(6))
def test_ranked_metrics_match_sklearn_exactly_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 600))
    scores = np.round(rng.normal(size=n), int(rng.integers(0, 2)))  # many ties, some cases nearly all ties
    positive = rng.random(n) < 0.1 + 0.4 * (scores > 0.5)
    positive[:2] = [True, False]
    r = ranked_metrics(scores, positive)
    assert r["auc"] == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert r["ap"] == pytest.approx(average_precision_score(positive, scores), abs=1e-12)
    precision, recall, thresholds = precision_recall_curve(positive, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert r["f1"] == pytest.approx(f1.max(), abs=1e-12) and r["threshold"] == thresholds[np.argmax(f1)]


def test_metrics_of_perfect_reversed_and_random_scores():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 10)
    perfect = np.r_[np.linspace(0, 1, 50), np.linspace(2, 3, 20)]
    m = metrics(perfect, labels, n_bootstrap=200, seed=0)
    assert m["auc"] == 1.0 and m["ap"] == pytest.approx(1.0) and m["f1_oracle"] == pytest.approx(1.0) and "f1" not in m
    assert 1.0 < m["threshold_oracle"] <= 2.0 and m["bootstrap"] == "beat"
    assert m["auc_ci"] == [1.0, 1.0] and m["per_class"]["S"]["auc"] == 1.0 and m["per_class"]["V"]["n"] == 10
    assert set(m["per_class"]) == {"S", "V"}  # F and Q are absent, so skipped
    reversed_ = metrics(-perfect, labels, n_bootstrap=0)
    assert reversed_["auc"] == 0.0 and "auc_ci" not in reversed_
    rng = np.random.default_rng(1)
    noisy = rng.normal(size=2000) + (np.arange(2000) % 4 == 0) * 0.8
    noisy_labels = (np.arange(2000) % 4 == 0).astype(int) * rng.integers(1, 5, 2000)
    m = metrics(noisy, noisy_labels, n_bootstrap=300, seed=2)
    for key in ("auc", "ap", "f1_oracle"):
        lo, hi = m[f"{key}_ci"]
        assert lo < m[key] < hi and hi - lo < 0.2, key
    assert 0.65 < m["auc"] < 0.8 and set(m["per_class"]) == {"S", "V", "F", "Q"}


def test_metrics_refuse_one_class_or_bad_input():
    with pytest.raises(ValueError, match="normal and anomalous"):
        metrics(np.arange(5.0), np.zeros(5, int))
    with pytest.raises(ValueError, match="not finite"):
        metrics(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="groups"):
        metrics(np.arange(4.0), np.array([0, 1, 0, 1]), groups=np.array(["a", "b"]))


def test_metrics_match_sklearn_per_class_and_at_thresholds():
    rng = np.random.default_rng(8)
    labels = rng.choice(5, size=800, p=[0.6, 0.1, 0.1, 0.1, 0.1])
    scores = np.round(rng.normal(size=800) + 0.3 * labels, 1)  # many ties, within and across classes
    m = metrics(scores, labels, n_bootstrap=0, threshold=0.45)
    assert m["auc"] == pytest.approx(roc_auc_score(labels != 0, scores), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(labels != 0, scores), abs=1e-12)
    for index, name in enumerate(("S", "V", "F", "Q"), start=1):
        keep = (labels == 0) | (labels == index)
        pc = m["per_class"][name]
        assert pc["auc"] == pytest.approx(roc_auc_score(labels[keep] == index, scores[keep]), abs=1e-12), name
        assert pc["ap"] == pytest.approx(average_precision_score(labels[keep] == index, scores[keep]), abs=1e-12), name
        assert pc["recall"] == pytest.approx((scores[labels == index] >= 0.45).mean(), abs=1e-12)
    for prefix, threshold in (("oracle", m["threshold_oracle"]), ("operating", 0.45)):
        flagged = scores >= threshold
        got = m["operating"] if prefix == "operating" else {k: m[f"{k}_oracle"] for k in ("precision", "recall", "f1", "false_alarm_rate")}
        assert got["precision"] == pytest.approx((labels[flagged] != 0).mean(), abs=1e-12)
        assert got["recall"] == pytest.approx(flagged[labels != 0].mean(), abs=1e-12)
        assert got["false_alarm_rate"] == pytest.approx(flagged[labels == 0].mean(), abs=1e-12)
        p, r = got["precision"], got["recall"]
        assert got["f1"] == pytest.approx(2 * p * r / (p + r), abs=1e-12)


def test_metrics_need_numpy_only(monkeypatch):
    """A GPU node with torch and numpy only (bench/gpu_teacher.sh) computes the full metrics; sklearn is for plots."""
    for name in ("sklearn", "sklearn.metrics"):
        monkeypatch.setitem(sys.modules, name, None)
    labels = np.r_[np.zeros(40, int), np.full(10, 2)]
    groups = np.arange(50) % 7
    m = metrics(np.r_[np.linspace(0, 1, 40), np.linspace(0.5, 2, 10)], labels, n_bootstrap=20, groups=groups, threshold=0.9)
    assert 0.5 < m["auc"] < 1 and m["per_class"]["V"]["auc"] == m["auc"] and len(m["auc_ci"]) == 2
    assert m["bootstrap"] == "record" and m["n_records"] == 7 and len(m["operating"]["recall_ci"]) == 2


def test_bootstrap_ap_is_finite_when_resamples_miss_the_top_beat():
    """The issue's case: 2,000 random beats, 1,000 resamples; about 37% of them miss the top-scoring beat."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000)
    positive = rng.random(2000) < 0.1
    top = int(np.argmax(scores))
    boot = bootstrap(scores, positive, 1000, seed=1)
    assert np.isfinite(boot["ap"]).all() and boot["ap"].shape == (1000,)
    missed = (_Sampler([positive], None).draw(np.random.default_rng(1), 1000).weights(0)[:, top] == 0).sum()
    assert 300 < missed < 450
    lo, hi = interval(boot["ap"], 0.95)
    assert lo < average_precision_score(positive, scores) < hi


def _sklearn_per_resample(scores, positive, weights):
    """AUC and AP of each resample computed by sklearn on the resampled beats themselves."""
    out = {"auc": [], "ap": []}
    for w in weights.astype(int):
        s, y = np.repeat(scores, w), np.repeat(positive, w)
        out["auc"].append(roc_auc_score(y, s))
        out["ap"].append(average_precision_score(y, s))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("level", ["beat", "record"])
def test_bootstrap_distribution_equals_sklearn_on_every_resample(level):
    rng = np.random.default_rng(11)
    n = 90
    scores = np.round(rng.normal(size=n), 1)
    positive = rng.random(n) < 0.25 + 0.3 * (scores > 0)
    groups = None if level == "beat" else rng.integers(0, 12, n).astype(str)
    boot = bootstrap(scores, positive, 300, seed=5, groups=groups)
    sampler = _Sampler([positive], None if groups is None else [groups])
    weights = sampler.draw(np.random.default_rng(5), 300).weights(0)
    ref = _sklearn_per_resample(scores, positive, weights)
    np.testing.assert_allclose(boot["auc"], ref["auc"], atol=1e-12)
    np.testing.assert_allclose(boot["ap"], ref["ap"], atol=1e-12)
    m = metrics(scores, positive.astype(int), 300, 0.9, seed=5, groups=groups)
    assert m["ap_ci"] == pytest.approx(list(np.percentile(ref["ap"], [5, 95])), abs=1e-12)
    assert m["auc_ci"] == pytest.approx(list(np.percentile(ref["auc"], [5, 95])), abs=1e-12)


def test_record_bootstrap_draws_whole_records_and_redraws_resamples_without_a_class():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.array([f"r{i}" for i in range(10)]), 30)
    positive = np.zeros(300, bool)
    positive[:12] = True  # every anomaly is in record r0
    weights = _Sampler([positive], [groups]).draw(rng, 200).weights(0)
    per_record = weights.reshape(200, 10, 30)
    assert (per_record == per_record[:, :, :1]).all()  # a drawn record brings every one of its beats
    assert (per_record[:, :, 0].sum(1) == 10).all() and (per_record[:, 0, 0] > 0).all()
    scores = rng.normal(size=300) + positive
    boot = bootstrap(scores, positive, 500, seed=3, groups=groups)
    # P(r0 not drawn) = 0.9^10 = 0.35: about 270 redraws for 500 resamples, counted, never dropped
    assert 150 < boot["redrawn"] < 450 and boot["auc"].shape == (500,) and np.isfinite(boot["ap"]).all()
    m = metrics(scores, positive.astype(int), 200, groups=groups)
    assert m["redrawn"] > 0 and m["n_records"] == 10 and m["per_class"]["S"]["n_records"] == 1
    # 12 units, each with its anomalies in one record of 12: a draw holds all of them about once in 200
    units = [(scores[:120], scores[:120], np.arange(120) // 10 == k, np.arange(120) // 10) for k in range(12)]
    with pytest.raises(ValueError, match="fewer than 1 in 100 resamples"):
        paired_compare_units(units, n_bootstrap=50)


def test_record_intervals_are_wider_when_beats_of_a_record_are_correlated():
    """How well anomalies stand out differs by record: beats are not independent, and only the record bootstrap sees it."""
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(40), 50)
    positive = rng.random(2000) < 0.2
    scores = rng.normal(size=2000) + positive * rng.normal(1.0, 1.5, size=40)[groups]
    beat = metrics(scores, positive.astype(int), 400, groups=None)
    record = metrics(scores, positive.astype(int), 400, groups=groups)
    width = lambda m, k: m[f"{k}_ci"][1] - m[f"{k}_ci"][0]  # noqa: E731
    assert width(record, "auc") > 1.5 * width(beat, "auc") and width(record, "ap") > 1.5 * width(beat, "ap")
    assert record["auc"] == beat["auc"] and record["bootstrap"] == "record" and beat["bootstrap"] == "beat"


def test_choose_threshold_on_validation():
    rng = np.random.default_rng(6)
    val_labels = np.r_[np.zeros(5000, int), np.full(300, 2)]
    val_scores = rng.normal(size=5300) + 2 * (val_labels != 0)
    t = choose_threshold(val_scores, val_labels)  # default: 1% false alarms on normal beats
    assert (val_scores[val_labels == 0] >= t).mean() == pytest.approx(0.01, abs=2e-4)
    assert choose_threshold(val_scores[val_labels == 0], None, "far", 0.05) == pytest.approx(np.quantile(val_scores[val_labels == 0], 0.95))
    assert choose_threshold(val_scores, val_labels, "f1") == ranked_metrics(val_scores, val_labels != 0)["threshold"]
    with pytest.raises(ValueError, match="unknown rule"):
        choose_threshold(val_scores, val_labels, "youden")
    with pytest.raises(ValueError, match="far must be in"):
        choose_threshold(val_scores, val_labels, "far", 1.0)
    with pytest.raises(ValueError, match="no|needs normal"):
        choose_threshold(val_scores[val_labels != 0], val_labels[val_labels != 0])


def test_paired_compare_of_a_model_with_itself_and_with_a_better_one():
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(30).astype(str), 40)
    labels = (rng.random(1200) < 0.2) * rng.integers(1, 5, 1200)
    a = rng.normal(size=1200) + (labels != 0) * 0.8
    same = paired_compare(a, a.copy(), labels, groups, n_bootstrap=300)
    assert PAIRED_KEYS <= set(same)
    assert same["delta_auc"] == 0 and same["delta_auc_ci"] == [0.0, 0.0] and same["p_auc"] == 1.0 and same["p_ap"] == 1.0
    assert same["n"] == 1200 and same["n_groups"] == 30
    b = a + (labels != 0) * 0.6  # every anomaly scored higher
    better = paired_compare(a, b, labels, groups, n_bootstrap=300)
    assert better["auc_a"] == pytest.approx(roc_auc_score(labels != 0, a)) and better["ap_b"] == pytest.approx(average_precision_score(labels != 0, b))
    assert better["delta_auc"] == pytest.approx(better["auc_b"] - better["auc_a"]) and better["delta_auc"] > 0
    assert 0 < better["delta_auc_ci"][0] <= better["delta_auc"] <= better["delta_auc_ci"][1] and better["p_auc"] < 0.01
    assert better["delta_ap_ci"][0] > 0 and better["p_ap"] < 0.01
    worse = paired_compare(b, a, labels, groups, n_bootstrap=300)  # the same draws: the mirror image
    assert worse["delta_auc"] == -better["delta_auc"] and worse["p_auc"] == better["p_auc"]
    assert worse["delta_auc_ci"] == pytest.approx([-better["delta_auc_ci"][1], -better["delta_auc_ci"][0]])


def test_paired_compare_deltas_equal_sklearn_on_the_same_resampled_beats():
    rng = np.random.default_rng(9)
    n = 80
    groups = rng.integers(0, 10, n).astype(str)
    positive = rng.random(n) < 0.3
    a, b = np.round(rng.normal(size=n) + positive, 1), np.round(rng.normal(size=n) + 1.3 * positive, 1)
    r = paired_compare(a, b, positive.astype(int), groups, n_bootstrap=200, seed=4, ci=0.9)
    weights = _Sampler([positive], [groups]).draw(np.random.default_rng(4), 200).weights(0)
    ra, rb = _sklearn_per_resample(a, positive, weights), _sklearn_per_resample(b, positive, weights)
    for key in ("auc", "ap"):
        delta = rb[key] - ra[key]
        assert r[f"delta_{key}_ci"] == pytest.approx(list(np.percentile(delta, [5, 95])), abs=1e-12)
        tail = min((delta <= 0).sum() + 1, (delta >= 0).sum() + 1) / 201
        assert r[f"p_{key}"] == pytest.approx(min(1.0, 2 * tail))


def test_pooled_comparison_resamples_patients_jointly_over_units():
    """Two folds sharing records: figures are means over units, one record draw serves every unit."""
    rng = np.random.default_rng(10)
    units = []
    for _ in range(2):
        groups = np.repeat(np.arange(12).astype(str), 25)
        labels = (rng.random(300) < 0.25).astype(int)
        a = rng.normal(size=300) + labels
        units.append((a, a + 0.5 * labels, labels, groups))
    pooled = paired_compare_units(units, n_bootstrap=200, seed=1)
    singles = [paired_compare(*u, n_bootstrap=0) for u in units]
    assert pooled["auc_a"] == pytest.approx(np.mean([s["auc_a"] for s in singles]))
    assert pooled["delta_ap"] == pytest.approx(np.mean([s["delta_ap"] for s in singles]))
    assert pooled["n"] == 600 and pooled["n_groups"] == 12 and pooled["n_units"] == 2 and pooled["delta_auc_ci"][0] > 0
    assert singles[0]["delta_auc_ci"] is None and singles[0]["p_auc"] is None
    with pytest.raises(ValueError, match="beat-level bootstrap takes one unit"):
        paired_compare_units([(u[0], u[1], u[2], None) for u in units], n_bootstrap=10)


def test_combine_standardizes_each_score_on_normal_beats_and_weighs_them():
    from sibeatgan.metrics import combine, standardizer

    rng = np.random.default_rng(0)
    rec, gap = rng.gamma(2.0, 0.01, 500), rng.gamma(2.0, 5.0, 500)  # two scales three decades apart
    rs, gs = standardizer(rec), standardizer(gap)
    assert rs == pytest.approx([rec.mean(), rec.std()]) and gs == pytest.approx([gap.mean(), gap.std()])
    np.testing.assert_allclose(combine(rec, gap, 0.0, rs, gs), (rec - rs[0]) / rs[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(combine(rec, gap, 1.0, rs, gs), (gap - gs[0]) / gs[1], rtol=1e-5, atol=1e-6)
    half = combine(rec, gap, 0.5, rs, gs)
    assert abs(half.mean()) < 1e-5 and 0.5 < half.std() <= 1.0  # neither scale swamps the other
    with pytest.raises(ValueError, match="weight"):
        combine(rec, gap, 1.5, rs, gs)
    with pytest.raises(ValueError, match="not finite"):
        standardizer(np.array([1.0, np.nan]))
    assert standardizer(np.full(10, 3.0))[1] > 0  # constant scores: a floor, not a division by zero


def test_anomaly_score_refuses_a_score_the_model_cannot_give():
    import torch

    from sibeatgan.metrics import AnomalyScore, latent_gap
    from sibeatgan.models import Generator

    torch.manual_seed(0)
    gen, teacher = Generator(1, 64, 8, 8), Generator(1, 64, 8, 8)
    x = torch.randn(5, 1, 64).clamp(-1, 1)
    assert AnomalyScore(gen).kind == "reconstruction"
    with pytest.raises(ValueError, match="teacher's encoder"):
        AnomalyScore(gen, kind="discrepancy")
    with pytest.raises(ValueError, match="weight and normal-validation"):
        AnomalyScore(gen, {"kind": "reconstruction"}, teacher.encoder, kind="combined")
    with pytest.raises(ValueError, match="unknown score"):
        AnomalyScore(gen, kind="entropy")
    gap = AnomalyScore(gen, {"kind": "discrepancy"}, teacher.encoder)
    np.testing.assert_array_equal(gap(x), latent_gap(gen, teacher.encoder, x))
    assert (latent_gap(teacher, teacher.encoder, x) == 0).all()  # a model agrees with itself


def _null_units(rng: np.random.Generator, n_units: int, unit_sd: float, n_records: int = 20, per_record: int = 5) -> list:
    """K trained pairs of equally good models on the same patients: each model of each unit gets its own separation
    (1 + N(0, unit_sd)), as a seed moves a trained model; a and b are exchangeable, so the true delta is 0."""
    groups = np.repeat(np.arange(n_records).astype(str), per_record)
    n = groups.shape[0]
    patient = np.repeat(rng.normal(size=n_records), per_record)  # shared by every unit and both models
    labels = (rng.random(n) < 0.3).astype(int)
    units = []
    for shift_a, shift_b in rng.normal(0, unit_sd, (n_units, 2)):
        a = patient + rng.normal(size=n) + (1.0 + shift_a) * labels
        b = patient + rng.normal(size=n) + (1.0 + shift_b) * labels
        units.append((a, b, labels, groups))
    return units


def _coverage(unit_sd: float, sims: int = 200, n_units: int = 8) -> tuple[float, float]:
    rng = np.random.default_rng(123)
    two = record = 0
    for i in range(sims):
        r = paired_compare_units(_null_units(rng, n_units, unit_sd), n_bootstrap=100, seed=i)
        assert r["bootstrap"] == "unit+record" and r["units_drawn"] == n_units - 1
        two += r["delta_auc_ci"][0] <= 0 <= r["delta_auc_ci"][1]
        record += r["record_only"]["delta_auc_ci"][0] <= 0 <= r["record_only"]["delta_auc_ci"][1]
    return two / sims, record / sims


def test_two_level_interval_covers_a_null_with_training_variance_where_the_record_only_one_does_not():
    """200 simulated nulls of 8 units each: with a per-unit shift (seed-to-seed spread) the record-only interval misses
    0 far too often, the unit+record one about as often as 95% allows; without a shift both cover (the two-level one
    conservatively: it counts each unit's own patient noise twice, the price of not assuming training variance away)."""
    two, record = _coverage(unit_sd=0.4)
    assert 0.90 <= two <= 0.995 and record <= 0.80, (two, record)
    two, record = _coverage(unit_sd=0.0)
    assert two >= 0.93 and 0.85 <= record <= 0.99, (two, record)


def test_two_level_is_the_default_for_several_units_and_keeps_the_record_only_draws():
    rng = np.random.default_rng(5)
    units = _null_units(rng, 4, 0.3)
    two = paired_compare_units(units, n_bootstrap=200, seed=3)
    record = paired_compare_units(units, n_bootstrap=200, seed=3, level="record")
    assert two["bootstrap"] == "unit+record" and record["bootstrap"] == "record" and "record_only" not in record
    assert two["record_only"]["delta_auc_ci"] == pytest.approx(record["delta_auc_ci"])  # the same record draws
    assert two["record_only"]["p_ap"] == pytest.approx(record["p_ap"])
    assert two["delta_auc"] == record["delta_auc"] and len(two["unit_delta_auc"]) == 4
    assert two["delta_auc"] == pytest.approx(np.mean(two["unit_delta_auc"]))
    assert two["unit_sd_delta_auc"] == pytest.approx(np.std(two["unit_delta_auc"], ddof=1))
    width = lambda r: r["delta_auc_ci"][1] - r["delta_auc_ci"][0]  # noqa: E731
    assert width(two) > width(record)
    one = paired_compare_units(units[:1], n_bootstrap=50)
    assert one["bootstrap"] == "record" and "units_drawn" not in one and one["unit_sd_delta_auc"] is None
    with pytest.raises(ValueError, match="at least 2 units"):
        paired_compare_units(units[:1], n_bootstrap=10, level="unit+record")
    with pytest.raises(ValueError, match="unknown level 'patient'"):
        paired_compare_units(units, n_bootstrap=10, level="patient")
    with pytest.raises(ValueError, match="needs the record of each beat"):
        paired_compare_units([(u[0], u[1], u[2], None) for u in units[:1]], n_bootstrap=10, level="unit+record")
