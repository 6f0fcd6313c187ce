"""The parameter laws of timm's policies against timm's own sampler, 10,000 draws each.

timm's transform runs on a tiny image with every op's Pillow function replaced by a recorder
(which still makes timm's resampling choice): that logs which ops timm applies and with which
arguments. Our records are mapped to the same arguments with timm's own ``LEVEL_TO_ARG`` (our
level, our sign). Then: op frequencies (chi-square), applied fraction (binomial), each op's
argument distribution (two-sample Kolmogorov-Smirnov), magnitude moments, resampling choice,
AugMix's chain depths and mixing weights.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch

from ff_lightning.augment import build_policy
from ff_lightning.augment.timm_ops import TIMM_OPS
from tests.lazy_scipy import stats

taa = pytest.importorskip("timm.data.auto_augment")
Image = pytest.importorskip("PIL.Image")

N = 10_000
P_MIN = 1e-3
HP = {"translate_const": 100, "img_mean": (124, 116, 104)}


def _ops(transform) -> list:
    if hasattr(transform, "policy"):
        return [op for sub in transform.policy for op in sub]
    return list(transform.ops)


def timm_log(transform, n: int = N, seed: int = 0) -> list[list[tuple]]:
    """Per image, the ``(name, args, resample)`` of every op timm applied."""
    random.seed(seed)
    np.random.seed(seed)
    current: list[tuple] = []

    def recorder(name):
        def record(img, *args, **kwargs):
            resample = taa._interpolation(dict(kwargs)) if TIMM_OPS[name].geometric else None
            current.append((name, tuple(args), None if resample is None else int(resample)))
            return img

        return record

    for op in _ops(transform):
        op.aug_fn = recorder(op.name)
    img = Image.new("RGB", (4, 4))
    log = []
    for _ in range(n):
        current.clear()
        transform(img)
        log.append(list(current))
    return log


def our_log(pol, n: int = N, seed: int = 0) -> list[list[tuple]]:
    """The same log from our records: timm's LEVEL_TO_ARG of our level, with our sign."""
    rec = pol.sample(torch.arange(n), 0, seed)
    names = [[pol.op_names[k] for k in row] for row in rec.op_ids.tolist()]
    levels, signs = rec.levels.tolist(), rec.signs.tolist()
    resample, applied = rec.resample.tolist(), rec.applied.tolist()
    entries = [
        (i, names[i][k], levels[i][k], signs[i][k], resample[i][k], k)
        for i in range(n)
        for k in range(pol.num_slots)
        if applied[i][k]
    ]
    # one patch for all: _randomly_negate draws once per signed op, in this order
    draws = iter([1.0 if e[3] < 0 else 0.0 for e in entries if TIMM_OPS[e[1]].signed])
    out: list[list[tuple]] = [[] for _ in range(n)]
    with mock.patch.object(taa.random, "random", side_effect=lambda: next(draws)):
        for i, name, level, _, mode, k in entries:
            fn = taa.LEVEL_TO_ARG[name]
            args = () if fn is None else tuple(fn(level, pol.hparams))
            if name == "GaussianBlurRand":
                args = (args[0], 0.1 + (2.0 * args[0] - 0.1) * rec.aux[i, k].item())
            out[i].append((name, args, mode if TIMM_OPS[name].geometric else None))
    return out


def _flat(log):
    return [entry for row in log for entry in row]


def _compare(theirs, ours, min_count: int = 200) -> None:
    t, o = _flat(theirs), _flat(ours)
    # how many ops per image
    per_t = Counter(len(r) for r in theirs)
    per_o = Counter(len(r) for r in ours)
    keys = sorted(set(per_t) | set(per_o))
    table = np.array([[per_t[k] for k in keys], [per_o[k] for k in keys]]) + 0.5
    assert stats.chi2_contingency(table).pvalue > P_MIN, (per_t, per_o)
    # which ops
    ct, co = Counter(e[0] for e in t), Counter(e[0] for e in o)
    names = sorted(set(ct) | set(co))
    table = np.array([[ct[k] for k in names], [co[k] for k in names]]) + 0.5
    assert stats.chi2_contingency(table).pvalue > P_MIN, (ct, co)
    # each op's arguments
    for name in names:
        at = [e[1] for e in t if e[0] == name]
        ao = [e[1] for e in o if e[0] == name]
        if min(len(at), len(ao)) < min_count or not at[0]:
            continue
        for j in range(len(at[0])):
            xs, ys = [a[j] for a in at], [a[j] for a in ao]
            if len(set(xs)) == 1 and len(set(ys)) == 1:
                assert xs[0] == ys[0], name
                continue
            assert stats.ks_2samp(xs, ys).pvalue > P_MIN, (name, j)
    # resampling of the geometric ops
    rt = Counter(e[2] for e in t if e[2] is not None)
    ro = Counter(e[2] for e in o if e[2] is not None)
    modes = sorted(set(rt) | set(ro))
    if len(modes) > 1:
        table = np.array([[rt[k] for k in modes], [ro[k] for k in modes]]) + 0.5
        assert stats.chi2_contingency(table).pvalue > P_MIN, (rt, ro)


@pytest.mark.parametrize(
    "config",
    [
        "rand-m9-mstd0.5-inc1",
        "rand-m9-mstd0.5",
        "rand-m7-n3-p0.8-mstd101",
        "rand-m9-n2-mstd1-tweights",
        "rand-m9-t3aw",
    ],
)
def test_randaugment_laws_match_timm(config):
    pol = build_policy("timm_randaugment", config=config, hparams=dict(HP))
    ours = our_log(pol)
    _compare(timm_log(taa.rand_augment_transform(config, dict(HP))), ours)
    # applied fraction ~ p (binomial, 5 sigma)
    prob = pol.specs[0].prob
    frac = sum(len(r) for r in ours) / (N * pol.num_slots)
    assert abs(frac - prob) < 5 * math.sqrt(prob * (1 - prob) / (N * pol.num_slots)) + 1e-9


@pytest.mark.parametrize("config", ["original", "v0r-mstd0.5", "3a"])
def test_autoaugment_laws_match_timm(config):
    pol = build_policy("timm_autoaugment", config=config, hparams=dict(HP))
    _compare(timm_log(taa.auto_augment_transform(config, dict(HP))), our_log(pol))


@pytest.mark.parametrize("config", ["augmix-m3-w3", "augmix-m5-w2-d2-mstd0.5"])
def test_augmix_laws_match_timm(config):
    hp = dict(HP, translate_pct=0.3)
    pol = build_policy("timm_augmix", config=config, hparams=hp)
    _compare(timm_log(taa.augment_and_mix_transform(config, dict(hp)), n=4000), our_log(pol, 4000))
    # mixing weights: m ~ Beta(a, a), w ~ Dirichlet(a); float32 as timm's
    rec = pol.sample(torch.arange(N), 0, 0)
    assert rec.weights.dtype == torch.float32
    assert torch.allclose(rec.weights[:, 1:].sum(1), torch.ones(N), atol=1e-5)
    rs = np.random.default_rng(0)
    w = pol.width
    assert stats.ks_2samp(rec.weights[:, 0].numpy(), rs.beta(1.0, 1.0, N)).pvalue > P_MIN
    ref = rs.dirichlet([1.0] * w, N)[:, 0]
    assert stats.ks_2samp(rec.weights[:, 1].numpy(), ref).pvalue > P_MIN


def _clipped_normal_moments(
    mean: float, std: float, low: float, high: float
) -> tuple[float, float]:
    xs = np.linspace(mean - 12 * std, mean + 12 * std, 200_001)
    pdf = stats.norm.pdf(xs, mean, std)
    vals = np.clip(xs, low, high)
    integrate = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    m1 = integrate(vals * pdf, xs)
    m2 = integrate(vals**2 * pdf, xs)
    return float(m1), float(m2 - m1 * m1)


@pytest.mark.parametrize(
    ("config", "mean", "std", "high"),
    [
        ("rand-m9-mstd0.5", 9, 0.5, 10),
        ("rand-m9-mstd2-mmax12", 9, 2.0, 12),
        ("rand-m10-mstd3", 10, 3.0, 10),
    ],
)
def test_magnitude_moments(config, mean, std, high):
    """N(m, mstd) clipped to [0, mmax]: the mean and variance of 10,000 drawn levels."""
    pol = build_policy("timm_randaugment", config=config, hparams=dict(HP))
    levels = pol.sample(torch.arange(N), 0, 3).levels.flatten().numpy()
    m1, var = _clipped_normal_moments(mean, std, 0.0, high)
    se = math.sqrt(var / levels.size)
    assert abs(levels.mean() - m1) < 5 * se, (levels.mean(), m1)
    assert abs(levels.var() - var) < 0.1 * var, (levels.var(), var)
    assert levels.min() >= 0 and levels.max() <= high


def test_uniform_magnitude_and_fixed_magnitude():
    pol = build_policy("timm_randaugment", config="rand-m8-mstd101", hparams=dict(HP))
    levels = pol.sample(torch.arange(N), 0, 0).levels.flatten().numpy()
    assert stats.kstest(levels / 8, "uniform").pvalue > P_MIN
    fixed = build_policy("timm_randaugment", config="rand-m8", hparams=dict(HP))
    assert (fixed.sample(torch.arange(100), 0, 0).levels == 8).all()


def test_weighted_choice_is_without_replacement():
    pol = build_policy("timm_randaugment", config="rand-n3-tweights", hparams=dict(HP))
    ids = pol.sample(torch.arange(N), 0, 0).op_ids
    assert (ids[:, 0] != ids[:, 1]).all() and (ids[:, 1] != ids[:, 2]).all()
    assert (ids[:, 0] != ids[:, 2]).all()
    # the first pick follows the weights exactly
    counts = torch.bincount(ids[:, 0], minlength=len(pol.specs)).numpy()
    expected = pol.choice_weights.numpy() * N
    assert stats.chisquare(counts, expected).pvalue > P_MIN
