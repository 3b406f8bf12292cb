"""ECG augmentations: each keeps a plausible beat (shape, range, correlation, R peak where it was, within the shift)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sibeatgan.augment import AugmentConfig, augment
from sibeatgan.config import StudentConfig, load_config, replace
from sibeatgan.errors import ConfigError

LENGTH = 320
R_AT = 140  # BeatGAN windows: 140 samples before the R peak


def beats(n: int = 64, nc: int = 1, seed: int = 0) -> torch.Tensor:
    """P-QRS-T shaped beats with the R peak at sample 140 (+-2), jittered amplitudes, scaled to [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH)[None, :].astype(np.float64)

    def bump(center, width, amp):
        return amp[:, None] * np.exp(-0.5 * ((t - center[:, None]) / width) ** 2)

    r = R_AT + rng.integers(-2, 3, n)
    x = (bump(r - 50.0, 9.0, rng.uniform(0.1, 0.2, n)) + bump(r - 6.0, 2.5, -rng.uniform(0.05, 0.15, n))
         + bump(r.astype(float), 3.0, rng.uniform(0.9, 1.1, n)) + bump(r + 6.0, 2.5, -rng.uniform(0.1, 0.3, n))
         + bump(r + 90.0, 20.0, rng.uniform(0.2, 0.4, n)))
    x += rng.normal(0, 0.005, x.shape)
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    x = 2 * (x - lo) / (hi - lo) - 1
    return torch.from_numpy(np.repeat(x[:, None, :], nc, axis=1)).float()


def correlation(a: torch.Tensor, b: torch.Tensor, max_lag: int = 0) -> torch.Tensor:
    """Pearson correlation of each beat pair over the interior samples, at the best lag within +-max_lag."""
    m = max_lag
    ref = b[..., m : b.shape[-1] - m].flatten(1)
    ref = ref - ref.mean(1, keepdim=True)
    best = None
    for lag in range(-m, m + 1):
        x = a[..., m + lag : a.shape[-1] - m + lag].flatten(1)
        x = x - x.mean(1, keepdim=True)
        c = (x * ref).sum(1) / (x.norm(dim=1) * ref.norm(dim=1))
        best = c if best is None else torch.maximum(best, c)
    return best


CONFIG = AugmentConfig(positives=("scale", "wander", "noise", "shift", "warp"))
# transform -> (lowest correlation with the clean beat, most samples the R peak may move); shift and warp are
# correlated at the best lag within the R peak's allowed move (a QRS is a few samples wide: any shift decorrelates it)
BOUNDS = {
    "scale": (0.99, 1),  # the clamp can flatten a scaled-up peak into a plateau
    "wander": (0.95, 2),
    "noise": (0.97, 2),
    "shift": (0.98, CONFIG.max_shift),
    "warp": (0.9, int(np.ceil(CONFIG.max_warp_displacement(LENGTH))) + 1),
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_each_augmentation_keeps_a_plausible_beat(name):
    x = beats(nc=2)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, CONFIG, gen, transforms=(name,))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)
    min_corr, max_move = BOUNDS[name]
    lag = max_move if name in ("shift", "warp") else 0
    assert correlation(out, x, lag).min() > min_corr
    moved = (out[:, 0].argmax(-1) - x[:, 0].argmax(-1)).abs()
    assert moved.max() <= max_move
    assert torch.equal(out[:, 0], out[:, 1]) or name in ("noise",)  # one draw per beat, shared by its leads (noise aside)


def test_draws_differ_per_beat_and_repeat_with_the_seed():
    x = beats(1).expand(32, 1, LENGTH).contiguous()
    a = augment(x, CONFIG, torch.Generator().manual_seed(5))
    b = augment(x, CONFIG, torch.Generator().manual_seed(5))
    c = augment(x, CONFIG, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - a[:1]).abs().flatten(1).amax(1)[1:].min() > 0  # every beat got its own parameters


def test_shift_pads_with_edge_values_and_never_wraps():
    x = torch.linspace(-1, 1, LENGTH).expand(200, 1, LENGTH).contiguous()
    out = augment(x, replace(CONFIG, max_shift=5), torch.Generator().manual_seed(0), transforms=("shift",))
    s = (out - x).mean(-1).squeeze(1) / (2 / (LENGTH - 1))  # a ramp moved by s samples
    s = -s.round().long()
    assert s.abs().max() <= 5 and len(set(s.tolist())) == 11  # every shift in [-5, 5] was drawn
    for i in range(200):
        k = int(s[i])
        if k > 0:
            assert torch.all(out[i, 0, :k] == x[i, 0, 0])
        elif k < 0:
            assert torch.all(out[i, 0, k:] == x[i, 0, -1])
        assert out[i, 0].diff().min() >= 0  # still a ramp: nothing wrapped round


def test_time_warp_is_monotone_and_fixes_the_ends():
    x = torch.linspace(-1, 1, LENGTH).expand(100, 1, LENGTH).contiguous()
    cfg = replace(CONFIG, warp=0.9, warp_cycles=2)
    out = augment(x, cfg, torch.Generator().manual_seed(0), transforms=("warp",))
    assert out[..., 1:].sub(out[..., :-1]).min() >= 0
    assert torch.allclose(out[..., 0], x[..., 0]) and torch.allclose(out[..., -1], x[..., -1])
    assert (out - x).abs().max() * (LENGTH - 1) / 2 <= cfg.max_warp_displacement(LENGTH) + 1e-3


def test_default_positives_are_the_mild_transforms_and_config_is_checked():
    assert set(AugmentConfig().positives) == {"scale", "wander", "noise"}
    x = beats(16)
    out = augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert (out[:, 0].argmax(-1) - x[:, 0].argmax(-1)).abs().max() <= 2
    with pytest.raises(ConfigError, match="positives"):
        AugmentConfig(positives=("flip",))
    with pytest.raises(ConfigError, match="warp"):
        AugmentConfig(warp=1.0)
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ConfigError, match="noise_std"):
        AugmentConfig(noise_std=-0.1)


def test_the_student_section_sets_the_augmentations_from_yaml_and_overrides(tmp_path):
    f = tmp_path / "student.yaml"
    f.write_text("student:\n  augment:\n    noise_std: 0.05\n    scale: [0.9, 1.1]\n")
    conf = load_config(StudentConfig, f, {"augment.positives": "noise,shift", "augment.max_shift": "2"})
    assert conf.augment == AugmentConfig(noise_std=0.05, scale=(0.9, 1.1), positives=("noise", "shift"), max_shift=2)
    assert load_config(StudentConfig).augment == AugmentConfig()
    with pytest.raises(ConfigError, match=r"StudentConfig\.augment\.positives\[0\]: 'flip' is not one of"):
        load_config(StudentConfig, None, {"augment.positives": "flip"})
    with pytest.raises(ConfigError, match=r"StudentConfig\.augment: unknown field\(s\) nosie_std"):
        load_config(StudentConfig, None, {"augment.nosie_std": "0.1"})


def test_training_draws_its_views_with_the_configured_augmentations():
    """The student's config reaches the trainers (distill._common), and their views follow it."""
    from sibeatgan.device import Runtime
    from sibeatgan.models import Generator
    from sibeatgan.train.distill import _common
    from sibeatgan.train.student import BatchedStudentTrainer, StudentTrainer

    x = beats(8)
    identity = load_config(StudentConfig, None, {"augment.positives": "scale", "augment.scale": "1,1"})
    noisy = load_config(StudentConfig, None, {"augment.positives": "noise", "augment.noise_std": "0.3"})
    small = {"ngf": 4, "ndf": 4, "batch_size": 8}
    teacher = Generator(1, LENGTH, 4, 4)
    cpu = Runtime(torch.device("cpu"))
    for conf in (identity, noisy):
        kw = {**_common(conf), **small}
        assert kw["augment_config"] == conf.augment
        single = StudentTrainer(teacher, cpu, init="scratch", **kw)
        batched = BatchedStudentTrainer(teacher, cpu, 2, init="scratch", **kw)
        views = [single.views(x), batched._views(torch.stack([x, x]))[0]]
        for v in views:
            if conf is identity:
                assert torch.equal(v, torch.cat([x, x]))  # a scale of exactly 1 and nothing else: the beats themselves
            else:
                noise = (v - torch.cat([x, x])).std()
                assert 0.05 < noise < 0.3  # uniform sigma in [0, 0.3]: about 0.17 on average
