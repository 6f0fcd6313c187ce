"""Policies: route-independent sampling, Params, statistics, equivalence with torchvision."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.transforms import v2

from ff_lightning.augment import (
    POLICIES,
    Params,
    build_policy,
    rng,
)
from ff_lightning.augment.spaces import (
    AUGMIX_PARTIAL_SPACE,
    AUGMIX_SPACE,
    AUTOAUGMENT_SPACE,
    AUTOAUGMENT_SUBPOLICIES,
    RANDAUGMENT_SPACE,
    TRIVIALAUGMENT_SPACE,
    magnitude_table,
)
from tests.lazy_scipy import stats

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "augment"
N_STAT = 20_000
P_MIN = 1e-3
ALL = [p for p in POLICIES if p != "none"]


def _images(b: int = 8, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus a little noise: realistic for rounding-sensitive comparisons."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h)[:, None]
    xx = torch.linspace(0, 1, w)[None, :]
    base = torch.stack([yy * 200 + xx * 40, yy * 0 + xx * 180 + 30, (yy + xx) * 110 + 10])
    phase = torch.rand(b, 3, 1, 1, generator=g) * 40
    noise = torch.randn(b, 3, h, w, generator=g) * 6
    return (base + phase + noise).clamp(0, 255).round().to(torch.uint8)


def _chi2_uniform(values: torch.Tensor, k: int) -> float:
    counts = torch.bincount(values.flatten(), minlength=k).double()
    assert counts.numel() == k
    return float(stats.chisquare(counts.numpy()).pvalue)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Per sample: mean abs diff <= 1 level and <= 2% of values off by more than 2 levels."""
    d = (a.int() - b.int()).abs().flatten(1).float()
    assert (d.mean(1) <= 1.0).all(), d.mean(1)
    assert ((d > 2).float().mean(1) <= 0.02).all(), (d > 2).float().mean(1)


# ---------------------------------------------------------------- tables
@pytest.mark.parametrize(
    ("ours", "tv", "bins"),
    [
        (RANDAUGMENT_SPACE, v2.RandAugment._AUGMENTATION_SPACE, 31),
        (TRIVIALAUGMENT_SPACE, v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31),
        (AUTOAUGMENT_SPACE, v2.AutoAugment._AUGMENTATION_SPACE, 10),
        (AUGMIX_SPACE, v2.AugMix._AUGMENTATION_SPACE, 10),
        (AUGMIX_PARTIAL_SPACE, v2.AugMix._PARTIAL_AUGMENTATION_SPACE, 10),
    ],
)
def test_spaces_match_torchvision(ours, tv, bins):
    assert [(o.name, o.signed) for o in ours] == [(k, s) for k, (_, s) in tv.items()]
    for h, w in [(32, 32), (48, 40), (224, 224), (331, 97), (36, 36)]:
        table = magnitude_table(ours, bins, h, w)
        for i, (_, (fn, _)) in enumerate(tv.items()):
            ref = fn(bins, h, w)
            expected = torch.zeros(bins) if ref is None else ref.float()
            assert torch.equal(table[i], expected)


@pytest.mark.parametrize("policy", list(v2.AutoAugmentPolicy))
def test_autoaugment_subpolicies_match_torchvision(policy):
    assert tuple(v2.AutoAugment(policy)._policies) == AUTOAUGMENT_SUBPOLICIES[policy.value]


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", POLICIES)
def test_sample_depends_only_on_seed_epoch_index(name):
    pol = build_policy(name)
    p = pol.sample(torch.tensor([5, 9, 2]), epoch=3, seed=7)
    assert len(p) == 3 and p.num_slots == pol.num_slots
    assert p[1].equal(pol.sample(torch.tensor([9]), 3, 7))
    assert p[0].equal(pol.sample([5], 3, 7))
    big = pol.sample(torch.arange(1000), 3, 7)  # vector kernels vs scalar tails
    assert big[torch.tensor([5, 9, 2])].equal(p)
    assert Params.cat([pol.sample([i], 3, 7) for i in (5, 9, 2)]).equal(p)


@pytest.mark.parametrize("name", ALL)
def test_sample_changes_with_epoch_and_seed(name):
    pol = build_policy(name)
    idx = torch.arange(64)
    p = pol.sample(idx, 0, 0)
    for other in (pol.sample(idx, 1, 0), pol.sample(idx, 0, 1)):
        differs = (p.op_ids != other.op_ids).any(1) | (p.bins != other.bins).any(1)
        differs |= (p.signs != other.signs).any(1) | (p.applied != other.applied).any(1)
        assert differs.float().mean() > 0.5


def test_sample_same_in_another_process():
    import subprocess
    import sys

    code = (
        "import torch; from ff_lightning.augment import build_policy;"
        "p = build_policy('augmix').sample(torch.tensor([3, 11]), 2, 5);"
        "print(p.op_ids.tolist(), p.weights.tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    p = build_policy("augmix").sample(torch.tensor([3, 11]), 2, 5)
    assert out.strip() == f"{p.op_ids.tolist()} {p.weights.tolist()}"


def test_rng_helpers_for_crop_and_flip():
    u = rng.uniform(0, 1, [4, 7], rng.STREAM_CROP, 22)
    assert u.shape == (2, 22) and u.dtype == torch.float32 and (u >= 0).all() and (u < 1).all()
    assert torch.equal(u[1], rng.uniform(0, 1, 7, rng.STREAM_CROP, 22)[0])
    assert not torch.equal(u, rng.uniform(0, 1, [4, 7], rng.STREAM_FLIP, 22))
    assert not torch.equal(u, rng.uniform(0, 2, [4, 7], rng.STREAM_CROP, 22))
    assert torch.equal(
        rng.uniform(0, 1, [4], 1, 3, low=2.0, high=4.0), 2.0 + 2.0 * rng.uniform(0, 1, [4], 1, 3)
    )
    assert rng.uniform(0, 1, [4], 1, 3, dtype=torch.float64).dtype == torch.float64
    r = rng.randint(0, 0, torch.arange(N_STAT), rng.STREAM_FLIP, 2, 6)
    assert _chi2_uniform(r, 6) > P_MIN
    # large indices use the high word too
    assert not torch.equal(rng.bits(0, 0, [5], 0, 4), rng.bits(0, 0, [5 + 2**32], 0, 4))


def test_rng_python_fast_path_matches_tensor_path(monkeypatch):
    idx = torch.cat([torch.arange(40), torch.tensor([2**33 + 5, 2**40])])
    for n in (1, 5, 35):
        monkeypatch.setattr(rng, "_PY_MAX_WORDS", 0)
        tensor_path = rng.bits(2**62 + 3, 7, idx, 3, n)
        monkeypatch.setattr(rng, "_PY_MAX_WORDS", 10**9)
        assert torch.equal(rng.bits(2**62 + 3, 7, idx, 3, n), tensor_path)


def test_rng_uniform_and_gamma_distributions():
    u = rng.uniform(1, 2, torch.arange(N_STAT), 9, 2)
    assert stats.kstest(u[:, 0].numpy(), "uniform").pvalue > P_MIN
    assert abs(float(torch.corrcoef(u.T)[0, 1])) < 0.03
    for alpha in (0.5, 1.0, 2.5):
        n = rng.gamma_draws(alpha)
        g = rng.gamma(rng.uniform(3, 4, torch.arange(N_STAT), 0, n, dtype=torch.float64), alpha)
        assert stats.kstest(g.numpy(), "gamma", args=(alpha,)).pvalue > P_MIN


# ---------------------------------------------------------------- Params
def test_params_container():
    pol = build_policy("augmix")
    p = pol.sample(torch.arange(10), 0, 0)
    assert len(p) == 10 and len(p[3]) == 1 and len(p[-1]) == 1
    assert p[-1].equal(p[9:10]) and p[2:5].equal(p[torch.tensor([2, 3, 4])])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 7]] = True
    assert p[mask].equal(p[[1, 7]])
    assert Params.cat([p[:4], p[4:]]).equal(p)
    assert pickle.loads(pickle.dumps(p)).equal(p)
    assert p.to("cpu").equal(p) and p == p and p != p[:9]
    assert p.allclose(Params.cat([p[:4], p[4:]]))
    assert "len=10" in repr(p)
    with pytest.raises(IndexError):
        p[10]
    with pytest.raises(IndexError, match="bool mask"):
        p[torch.ones(3, dtype=torch.bool)]
    with pytest.raises(ValueError, match="at least one"):
        Params.cat([])
    with pytest.raises(ValueError, match="`bins`"):
        Params(p.op_ids, p.bins[:, :2], p.signs, p.applied, p.weights)
    if torch.cuda.is_available():
        assert p.pin_memory().is_pinned()


# ---------------------------------------------------------------- statistics
def test_randaugment_statistics():
    pol = build_policy("randaugment", num_ops=3, magnitude=7)
    p = pol.sample(torch.arange(N_STAT), 0, 11)
    assert _chi2_uniform(p.op_ids, 14) > P_MIN
    assert (p.bins == 7).all() and p.applied.all()
    signed = pol._signed[p.op_ids]
    neg = (p.signs[signed] < 0).long()
    assert stats.binomtest(int(neg.sum()), neg.numel(), 0.5).pvalue > P_MIN
    assert (p.signs[~signed] == 1).all()
    # slots are independent: pairs of (slot 0, slot 1) ops are uniform over 14 * 14
    assert _chi2_uniform(p.op_ids[:, 0] * 14 + p.op_ids[:, 1], 196) > P_MIN
    assert len(set(p.op_ids[:64, 0].tolist())) >= 10  # per-sample ops within one batch


def test_trivialaugment_statistics():
    pol = build_policy("trivialaugment")
    p = pol.sample(torch.arange(N_STAT), 4, 2)
    assert _chi2_uniform(p.op_ids, 14) > P_MIN
    assert _chi2_uniform(p.bins, 31) > P_MIN
    signed = pol._signed[p.op_ids]
    neg = (p.signs[signed] < 0).long()
    assert stats.binomtest(int(neg.sum()), neg.numel(), 0.5).pvalue > P_MIN
    assert (p.signs[~signed] == 1).all()
    assert len(set(p.op_ids[:64, 0].tolist())) >= 10


@pytest.mark.parametrize("which", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_statistics(which):
    pol = build_policy("autoaugment", policy=which)
    p = pol.sample(torch.arange(N_STAT), 1, 3)
    subs = AUTOAUGMENT_SUBPOLICIES[which]
    key = [tuple((pol.op_names.index(o), m or 0) for o, _, m in s) for s in subs]
    expected = Counter(key)
    quad = torch.stack([p.op_ids[:, 0], p.bins[:, 0], p.op_ids[:, 1], p.bins[:, 1]], 1)
    observed = Counter(((a, b), (c, d)) for a, b, c, d in quad.tolist())
    assert set(observed) <= set(expected)
    keys = sorted(expected)
    f_obs = [observed[k] for k in keys]
    f_exp = [N_STAT * expected[k] / len(subs) for k in keys]
    assert stats.chisquare(f_obs, f_exp).pvalue > P_MIN
    # applied frequency of each slot given the sub-policy: chi-square summed over groups
    chi, dof = 0.0, 0
    for k in keys:
        rows = (quad == torch.tensor([*k[0], *k[1]])).all(1)
        n = int(rows.sum())
        same = [s for s, kk in zip(subs, key, strict=True) if kk == k]
        for slot in range(2):
            prob = sum(s[slot][1] for s in same) / len(same)
            n_applied = int(p.applied[rows, slot].sum())
            if prob in (0.0, 1.0):
                assert n_applied == round(prob * n)
                continue
            exp_a = n * prob
            chi += (n_applied - exp_a) ** 2 / exp_a + (n_applied - exp_a) ** 2 / (n - exp_a)
            dof += 1
    assert stats.chi2.sf(chi, dof) > P_MIN
    signed = pol._signed[p.op_ids]
    neg = (p.signs[signed] < 0).long()
    assert stats.binomtest(int(neg.sum()), neg.numel(), 0.5).pvalue > P_MIN


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_augmix_statistics(alpha):
    pol = build_policy("augmix", severity=4, mixture_width=3, alpha=alpha)
    p = pol.sample(torch.arange(N_STAT), 2, 9)
    assert p.num_slots == 9 and p.weights.shape == (N_STAT, 4)
    depth = p.applied.view(N_STAT, 3, 3).sum(2)
    assert _chi2_uniform(depth - 1, 3) > P_MIN
    # applied slots form a prefix of each chain
    assert torch.equal(p.applied.view(N_STAT, 3, 3), torch.arange(3)[None, None] < depth[..., None])
    assert _chi2_uniform(p.op_ids, 13) > P_MIN
    assert _chi2_uniform(p.bins, 4) > P_MIN
    signed = pol._signed[p.op_ids]
    neg = (p.signs[signed] < 0).long()
    assert stats.binomtest(int(neg.sum()), neg.numel(), 0.5).pvalue > P_MIN
    w = p.weights.double()
    assert torch.allclose(w.sum(1), torch.ones(N_STAT, dtype=torch.float64), atol=1e-5)
    assert (w >= 0).all()
    # m0 ~ Beta(a, a); chain weight / (1 - m0) ~ Beta(a, (W - 1) a)
    assert stats.kstest(w[:, 0].numpy(), "beta", args=(alpha, alpha)).pvalue > P_MIN
    share = (w[:, 1] / (1 - w[:, 0])).numpy()
    assert stats.kstest(share, "beta", args=(alpha, 2 * alpha)).pvalue > P_MIN


def test_augmix_fixed_depth_and_partial_ops():
    pol = build_policy("augmix", chain_depth=2, mixture_width=2, all_ops=False)
    p = pol.sample(torch.arange(2000), 0, 0)
    assert p.num_slots == 4 and p.applied.all()
    assert _chi2_uniform(p.op_ids, 9) > P_MIN


# ---------------------------------------------------------------- applying
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("backend", ["batched", "torchvision"])
def test_apply_batch_matches_apply_one(name, backend, monkeypatch):
    pol = build_policy(name)
    monkeypatch.setattr(pol, "apply_one_backend", backend)
    x = _images(12)
    p = pol.sample(torch.arange(100, 112), 0, 1)
    y = pol.apply_batch(x, p)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    one = torch.stack([pol.apply_one(x[i], p[i]) for i in range(len(x))])
    if backend == "batched":
        assert torch.equal(y, one)
    else:
        _close(y, one)


def test_apply_one_bilinear_fill_matches():
    pol = build_policy("randaugment", interpolation="bilinear", fill=[10, 200, 30], magnitude=20)
    x = _images(10, 40, 48)
    p = pol.sample(torch.arange(10), 0, 0)
    y = pol.apply_batch(x, p)
    pol.apply_one_backend = "torchvision"
    _close(y, torch.stack([pol.apply_one(x[i], p[i]) for i in range(10)]))


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment"])
def test_apply_batch_means_what_torchvision_means(name):
    """Replay each sampled record with torchvision's own per-op code and magnitude tables."""
    cls = {
        "randaugment": v2.RandAugment,
        "trivialaugment": v2.TrivialAugmentWide,
        "autoaugment": v2.AutoAugment,
    }
    pol = build_policy(name)
    tv = cls[name]()
    x = _images(16)
    h, w = x.shape[-2:]
    p = pol.sample(torch.arange(16), 5, 5)
    y = pol.apply_batch(x, p)
    bins = {"randaugment": 31, "trivialaugment": 31, "autoaugment": 10}[name]
    for i in range(16):
        img = x[i]
        for k in range(pol.num_slots):
            if not p.applied[i, k]:
                continue
            op = pol.op_names[int(p.op_ids[i, k])]
            fn, signed = tv._AUGMENTATION_SPACE[op]
            mags = fn(bins, h, w)
            m = 0.0 if mags is None else float(mags[int(p.bins[i, k])]) * float(p.signs[i, k])
            assert signed or p.signs[i, k] == 1
            img = tv._apply_image_or_video_transform(
                img, op, m, interpolation=v2.InterpolationMode.NEAREST, fill={}
            )
        _close(y[i : i + 1], img[None])


def test_augmix_means_what_torchvision_means():
    pol = build_policy("augmix")
    tv = v2.AugMix(interpolation=v2.InterpolationMode.NEAREST)
    x = _images(8)
    h, w = x.shape[-2:]
    p = pol.sample(torch.arange(8), 0, 0)
    y = pol.apply_batch(x, p)
    for i in range(8):
        mix = p.weights[i, 0] * x[i]
        for c in range(3):
            aug = x[i]
            for j in range(3):
                s = 3 * c + j
                if p.applied[i, s]:
                    op = pol.op_names[int(p.op_ids[i, s])]
                    mags = tv._AUGMENTATION_SPACE[op][0](10, h, w)
                    m = (
                        0.0
                        if mags is None
                        else float(mags[int(p.bins[i, s])]) * float(p.signs[i, s])
                    )
                    aug = tv._apply_image_or_video_transform(
                        aug, op, m, interpolation=tv.interpolation, fill={}
                    )
            mix = mix + p.weights[i, c + 1] * aug
        _close(y[i : i + 1], mix.to(torch.uint8)[None])


def test_translate_uses_the_image_size():
    pol = build_policy("randaugment", num_ops=1, magnitude=30)
    p = pol.sample(torch.arange(200), 0, 0)
    tx = pol.op_names.index("TranslateX")
    m_small = pol.magnitudes(p, 32, 40)
    m_big = pol.magnitudes(p, 32, 80)
    rows = p.op_ids[:, 0] == tx
    assert rows.any()
    assert torch.allclose(m_big[rows].abs(), torch.full_like(m_big[rows], 150 / 331 * 80))
    assert torch.allclose(m_small[rows].abs(), torch.full_like(m_small[rows], 150 / 331 * 40))


@pytest.mark.parametrize("name", POLICIES)
def test_policy_pickles_for_spawned_workers(name):
    pol = build_policy(name)
    x = _images(4)
    p = pol.sample(torch.arange(4), 0, 0)
    pol.apply_batch(x, p)  # fills the magnitude-table cache
    again = pickle.loads(pickle.dumps(pol))
    assert again.sample(torch.arange(4), 0, 0).equal(p)
    assert torch.equal(again.apply_batch(x, p), pol.apply_batch(x, p))
    assert repr(again) == repr(pol)


def test_identity_and_empty():
    x = _images(4)
    pol = build_policy("none")
    p = pol.sample(torch.arange(4), 0, 0)
    assert p.num_slots == 0 and torch.equal(pol.apply_batch(x, p), x)
    assert torch.equal(pol.apply_one(x[0], p[0]), x[0])
    ra = build_policy("randaugment")
    assert ra.apply_batch(x[:0], ra.sample(torch.arange(0), 0, 0)).shape == (0, 3, 48, 40)
    zero = build_policy("randaugment", num_ops=0)
    assert torch.equal(zero.apply_batch(x, zero.sample(torch.arange(4), 0, 0)), x)


def test_estimate_cost():
    pol = build_policy("trivialaugment")
    p = pol.sample(torch.arange(50), 0, 0)
    cost = pol.estimate_cost(p)
    assert cost.shape == (50,) and (cost[p.op_ids[:, 0] == 0] == 0).all() and cost.max() > 0


# ---------------------------------------------------------------- build and config
def test_build_policy_kwargs_and_repr():
    ra = build_policy(
        "randaugment",
        num_ops=3,
        magnitude=5,
        num_magnitude_bins=11,
        interpolation="bilinear",
        fill=[1, 2, 3],
    )
    assert (ra.name, ra.num_slots, ra.num_bins, ra.interpolation, ra.fill) == (
        "randaugment",
        3,
        11,
        "bilinear",
        [1.0, 2.0, 3.0],
    )
    assert "num_ops=3" in repr(ra)
    aa = build_policy(
        "AutoAugment", policy=v2.AutoAugmentPolicy.SVHN, interpolation=v2.InterpolationMode.NEAREST
    )
    assert aa.policy == "svhn" and aa.interpolation == "nearest"
    assert build_policy("trivialaugmentwide").name == "trivialaugment"
    assert build_policy(ra) is ra
    assert build_policy("augmix", chain_depth=2).num_slots == 6


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "foo",
            {},
            r"`name` must be one of \('randaugment', 'trivialaugment', 'autoaugment', 'augmix', "
            r"'none', 'timm_randaugment', 'timm_autoaugment', 'timm_augmix', 'deepaa'\), got 'foo'",
        ),
        ("randaugment", {"nops": 2, "mag": 1}, r"unknown keyword argument\(s\) \['mag', 'nops'\]"),
        ("randaugment", {"magnitude": 31}, r"`magnitude` must be an integer in \[0, 30\], got 31"),
        ("randaugment", {"num_ops": -1}, "`num_ops`"),
        ("randaugment", {"num_magnitude_bins": 1}, "`num_magnitude_bins`"),
        ("trivialaugment", {"num_magnitude_bins": 2.5}, "`num_magnitude_bins`"),
        (
            "autoaugment",
            {"policy": "mnist"},
            r"`policy` must be one of \('imagenet', 'cifar10', 'svhn'\)",
        ),
        ("augmix", {"severity": 11}, "`severity`"),
        ("augmix", {"mixture_width": 0}, "`mixture_width`"),
        ("augmix", {"alpha": 0.0}, "`alpha`"),
        ("augmix", {"all_ops": "yes"}, "`all_ops`"),
        (
            "randaugment",
            {"interpolation": "bicubic"},
            r"`interpolation` must be one of \('nearest', 'bilinear'\)",
        ),
        ("randaugment", {"fill": [1, 2]}, "`fill`"),
        ("none", {"num_ops": 2}, "unknown keyword"),
    ],
)
def test_build_policy_errors(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_policy(name, **kwargs)


def test_unknown_kwarg_is_type_and_value_error():
    with pytest.raises(TypeError):
        build_policy("augmix", width=3)
    with pytest.raises(ValueError):
        build_policy("augmix", width=3)


def test_apply_errors():
    pol = build_policy("randaugment")
    x = _images(4)
    p = pol.sample(torch.arange(4), 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        pol.apply_batch(x.float(), p)
    with pytest.raises(ValueError, match="4 image"):
        pol.apply_batch(x, p[:3])
    with pytest.raises(ValueError, match="slots"):
        pol.apply_batch(x, build_policy("trivialaugment").sample(torch.arange(4), 0, 0))
    with pytest.raises(ValueError, match=r"\[C, H, W\] with C = 1 or 3"):
        pol.apply_one(x, p)
    with pytest.raises(TypeError, match="Params"):
        pol.apply_batch(x, {"op_ids": 1})
    with pytest.raises(ValueError, match="non-negative"):
        pol.sample(torch.tensor([-1]), 0, 0)


@pytest.mark.parametrize("name", POLICIES)
def test_configs_build(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    pol = build_policy(
        cfg["name"],
        **(cfg.get("kwargs") or {}),
        interpolation=cfg["interpolation"],
        fill=cfg["fill"],
    )
    assert pol.name == name
    assert (pol.interpolation, pol.fill, cfg["hflip"], cfg["random_erasing"]) == (
        "nearest",
        0,
        True,
        0.0,
    )
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    # the kwargs are torchvision's defaults
    tv_cls = {
        "randaugment": v2.RandAugment,
        "trivialaugment": v2.TrivialAugmentWide,
        "autoaugment": v2.AutoAugment,
        "augmix": v2.AugMix,
    }
    if name in tv_cls:
        import inspect

        sig = inspect.signature(tv_cls[name].__init__).parameters
        for k, v in cfg["kwargs"].items():
            default = sig[k].default
            assert v == getattr(default, "value", default), k


# ---------------------------------------------------------------- device
@pytest.mark.cuda
@pytest.mark.parametrize("name", POLICIES)
def test_cuda_apply_batch_matches_cpu(name):
    pol = build_policy(name)
    x = _images(32, 64, 56)
    p = pol.sample(torch.arange(32), 0, 0)
    cpu = pol.apply_batch(x, p)
    cuda = pol.apply_batch(x.cuda(), p.to("cuda"))
    assert cuda.device.type == "cuda"
    _close(cpu, cuda.cpu())
    assert math.isclose(float(cpu.float().mean()), float(cuda.float().mean()), abs_tol=0.5)
