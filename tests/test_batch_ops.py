"""Batch-level device ops: normalize, RandomErasing, MixUpCutMix."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from ff_lightning.augment import IMAGENET_MEAN, IMAGENET_STD, MixUpCutMix, RandomErasing, normalize
from tests.lazy_scipy import stats

P_MIN = 1e-3


def _u8(b: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------- normalize
def test_normalize_matches_torchvision():
    x = _u8()
    ref = v2.functional.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    out = normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(normalize(x[0]), ref[0], atol=1e-5)
    half = normalize(x, [0.5] * 3, [0.5] * 3, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), x.float() / 127.5 - 1, atol=2e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": torch.zeros(2, 3, 4, 4)}, "uint8"),
        ({"mean": [0.5, 0.5]}, "3 values"),
        ({"std": [0.5, 0.0, 0.5]}, "positive"),
        ({"dtype": torch.int32}, "floating"),
    ],
)
def test_normalize_errors(kwargs, match):
    args = {"images": _u8(), **kwargs}
    with pytest.raises(ValueError, match=match):
        normalize(**args)


# ---------------------------------------------------------------- random erasing
def test_random_erasing_statistics_and_reproducibility():
    h = w = 40
    x = torch.ones(3000, 1, h, w)
    er = RandomErasing(p=0.6, scale=(0.05, 0.2), ratio=(0.5, 2.0), value=0.0)
    out = er(x, generator=torch.Generator().manual_seed(1))
    erased = (out == 0).all(1)  # [B, H, W]
    frac = erased.flatten(1).float().mean(1)
    hit = frac > 0
    assert stats.binomtest(int(hit.sum()), len(hit), 0.6).pvalue > P_MIN
    # area fractions lie in the scale range up to rounding of h and w
    assert frac[hit].min() >= 0.03 and frac[hit].max() <= 0.25
    assert abs(float(frac[hit].mean()) - 0.125) < 0.01
    # each erased region is one rectangle: rows x cols of the bounding box
    rows, cols = erased.any(2), erased.any(1)
    assert torch.equal(erased.flatten(1).sum(1), rows.sum(1) * cols.sum(1))
    # same generator seed (or int seed) -> same result; different -> different
    assert torch.equal(out, er(x, generator=1))
    assert not torch.equal(out, er(x, generator=2))
    seeded = RandomErasing(p=0.6, scale=(0.05, 0.2), ratio=(0.5, 2.0), seed=5)
    again = RandomErasing(p=0.6, scale=(0.05, 0.2), ratio=(0.5, 2.0), seed=5)
    assert torch.equal(seeded(x[:64]), again(x[:64]))


def test_random_erasing_values_and_dtypes():
    x = _u8(64)
    out = RandomErasing(p=1.0, value=[1, 2, 3])(x, generator=0)
    changed = (out != x).any(1)
    assert changed.flatten(1).any(1).float().mean() > 0.9
    assert out.dtype == torch.uint8
    mask = (out[:, 0] == 1) & (out[:, 1] == 2) & (out[:, 2] == 3)
    assert (changed <= mask).all()
    xf = torch.zeros(8, 3, 32, 32)
    rnd = RandomErasing(p=1.0, value="random")(xf, generator=0)
    vals = rnd[rnd != 0]
    assert vals.numel() > 100 and abs(float(vals.std()) - 1.0) < 0.2
    assert torch.equal(RandomErasing(p=0.0)(x, generator=0), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1.5}, "`p`"),
        ({"scale": (0.5, 0.1)}, "`scale`"),
        ({"scale": (0.1, 1.5)}, "`scale`"),
        ({"ratio": (0.0, 1.0)}, "`ratio`"),
        ({"value": "noise"}, "`value`"),
    ],
)
def test_random_erasing_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomErasing(**kwargs)


def test_random_erasing_input_errors():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        RandomErasing()(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="float images"):
        RandomErasing(p=1.0, value="random")(_u8())
    with pytest.raises(ValueError, match="1 or 3 numbers"):
        RandomErasing(p=1.0, value=[1, 2])(_u8())


def test_keyed_erasing_follows_the_sample_not_its_batch():
    """With keys, a sample's box and noise depend on (seed, epoch, index) only: the same in
    any batch, at any position (and so on both routes)."""
    x = torch.randn(12, 3, 40, 36)
    idx = torch.arange(100, 112)
    for value in ("random", 0.5):
        er = RandomErasing(p=0.7, value=value)
        out = er(x, keys=(3, 1, idx))
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
        again = er(x[perm], keys=(3, 1, idx[perm]))
        assert torch.equal(again, out[perm])
        alone = er(x[5:6], keys=(3, 1, idx[5:6]))  # one sample, no neighbours
        assert torch.equal(alone, out[5:6])
        other_epoch = er(x, keys=(3, 2, idx))
        assert not torch.equal(other_epoch, out)
        changed = (out != x).any(1).flatten(1).any(1)
        assert 3 <= int(changed.sum()) <= 12  # p = 0.7 of 12 samples
    boxes = er.sample(12, 40, 36, keys=(3, 1, idx))
    area = (out != x).any(1).flatten(1).sum(1)
    assert torch.equal(area, boxes[:, 2] * boxes[:, 3])
    with pytest.raises(ValueError, match="one dataset index per sample"):
        er(x, keys=(3, 1, idx[:4]))


def test_keyed_noise_is_standard_normal_and_inplace_writes_the_input():
    x = torch.zeros(64, 3, 48, 48)
    er = RandomErasing(p=1.0, scale=(0.2, 0.3), value="random")
    out = er(x, keys=(9, 0, torch.arange(64)))
    assert torch.equal(x, torch.zeros_like(x))  # a copy by default
    vals = out[out != 0].double()
    assert vals.numel() > 20_000
    assert stats.kstest(vals[:20_000].numpy(), "norm").pvalue > P_MIN
    y = x.clone()
    res = er(y, keys=(9, 0, torch.arange(64)), inplace=True)
    assert res.data_ptr() == y.data_ptr() and torch.equal(y, out)


def test_accelerator_noise_matches_the_cpu_slices():
    """The whole-batch noise the accelerator path builds equals, inside every box, what the
    CPU path writes (so CPU and GPU erase a sample identically)."""
    from ff_lightning.augment import rng
    from ff_lightning.augment.batch_ops import _box_mask, _box_noise

    x = torch.zeros(16, 3, 30, 34)
    idx = torch.arange(16) * 7 + 3
    er = RandomErasing(p=0.8, value="random")
    cpu = er(x, keys=(5, 2, idx))
    top, left, h, w = er.sample(16, 30, 34, keys=(5, 2, idx)).unbind(1)
    edges = torch.stack([top, top + h, left, left + w], dim=1)
    noise = _box_noise(rng.index_keys(5, 2, idx, rng.STREAM_ERASE), edges, 3, 30, 34, x.dtype)
    mask = _box_mask(edges, 30, 34)[:, None].expand_as(x)
    assert mask.any() and torch.equal(noise[mask], cpu[mask])
    assert torch.equal(torch.where(mask, noise, x), cpu)


# ---------------------------------------------------------------- mixup / cutmix
def test_mixup_targets_and_images_follow_lambda():
    mix = MixUpCutMix(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=5, mode="elem")
    x = torch.rand(16, 3, 8, 8)
    y = torch.arange(16) % 5
    xm, t = mix(x, y, generator=3)
    assert t.shape == (16, 5) and t.dtype == torch.float32
    assert torch.allclose(t.sum(1), torch.ones(16))
    lam, boxes = mix.sample(16, 8, 8, generator=3)
    assert (boxes == 0).all()
    lam_f = lam.float().view(16, 1, 1, 1)
    assert torch.allclose(xm, lam_f * x + (1 - lam_f) * x.flip(0), atol=1e-6)
    # target weight of a sample's own class is lam (plus 1 - lam if its partner shares it)
    own = t[torch.arange(16), y]
    same = y == y.flip(0)
    assert torch.allclose(own[~same], lam.float()[~same], atol=1e-6)
    assert len(set(lam.tolist())) > 1  # elem mode: per-sample lambda


def test_cutmix_box_area_matches_lambda():
    mix = MixUpCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=10)
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 20, 24).contiguous()
    y = torch.arange(8)
    xm, t = mix(x, y, generator=7)
    assert torch.allclose(t.sum(1), torch.ones(8))
    from_partner = (xm == x.flip(0)).all(1).flatten(1).float().mean(1)
    lam = t[torch.arange(8), y]
    assert torch.allclose(1 - from_partner, lam, atol=1e-6)
    assert len(set(lam.tolist())) == 1  # batch mode: one lambda


def test_mixcut_switch_probability_and_beta():
    mix = MixUpCutMix(
        mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=3, switch_prob=0.3, mode="elem"
    )
    lam, boxes = mix.sample(20_000, 32, 32, generator=0)
    is_cut = boxes[:, 1] > boxes[:, 0]
    # empty boxes (lam close to 1) count as mixup here; they are rare
    assert abs(float(is_cut.float().mean()) - 0.3) < 0.02
    assert stats.kstest(lam[~is_cut].numpy(), "uniform").pvalue > P_MIN


def test_mixup_uint8_label_smoothing_and_soft_targets():
    mix = MixUpCutMix(mixup_alpha=1.0, num_classes=4, label_smoothing=0.1, seed=0)
    x = _u8(6, 8, 8)
    xm, t = mix(x, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert xm.dtype == torch.uint8 and torch.allclose(t.sum(1), torch.ones(6))
    assert t.min() >= 0.1 / 4 - 1e-6
    soft = torch.softmax(torch.randn(6, 4), 1)
    _, t2 = mix(x, soft, generator=1)
    assert torch.allclose(t2.sum(1), torch.ones(6), atol=1e-6)
    off = MixUpCutMix(mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=4)
    xo, to = off(x, torch.tensor([0, 1, 2, 3, 0, 1]), generator=0)
    assert torch.equal(xo, x) and torch.equal(to.argmax(1), torch.tensor([0, 1, 2, 3, 0, 1]))
    never = MixUpCutMix(mixup_alpha=1.0, num_classes=4, prob=0.0)
    assert torch.equal(never(x, torch.zeros(6, dtype=torch.long), generator=0)[0], x)


def test_mixup_reproducible():
    mix = MixUpCutMix(mixup_alpha=0.4, cutmix_alpha=1.0, num_classes=10, mode="elem")
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    a = mix(x, y, generator=torch.Generator().manual_seed(4))
    b = mix(x, y, generator=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = mix(x, y, generator=5)
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mixup_alpha": -1.0}, "`mixup_alpha`"),
        ({"cutmix_alpha": math.inf}, "`cutmix_alpha`"),
        ({"num_classes": 0}, "`num_classes`"),
        ({"switch_prob": 1.5}, "`switch_prob`"),
        ({"prob": -0.1}, "`prob`"),
        ({"label_smoothing": 1.0}, "`label_smoothing`"),
        ({"mode": "pair"}, r"`mode` must be one of \('batch', 'elem'\), got 'pair'"),
    ],
)
def test_mixup_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixUpCutMix(**{"num_classes": 10, **kwargs})


def test_mixup_input_errors():
    mix = MixUpCutMix(num_classes=3)
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        mix(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="3 rows for 4 images"):
        mix(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="soft targets"):
        mix(x, torch.rand(4, 5))


@pytest.mark.cuda
def test_batch_ops_cuda_match_cpu():
    x = _u8(16)
    assert torch.allclose(normalize(x.cuda()).cpu(), normalize(x), atol=1e-6)
    er = RandomErasing(p=1.0)
    assert torch.equal(er(x.cuda(), generator=3).cpu(), er(x, generator=3))
    mix = MixUpCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=5, mode="elem")
    y = torch.arange(16) % 5
    a, b = mix(x.float(), y, generator=2), mix(x.float().cuda(), y.cuda(), generator=2)
    assert torch.allclose(a[0], b[0].cpu(), atol=1e-4) and torch.allclose(
        a[1], b[1].cpu(), atol=1e-6
    )
