"""The routed transforms draw their parameters with torchvision's laws.

10,000 records from ``sample`` against 10,000 draws of torchvision's own sampler
(``make_params``, ``torch.randperm``, ``torch.multinomial``, ``torch.rand(1) < p``) for the
same arguments: two-sample Kolmogorov-Smirnov tests for continuous parameters, chi-square
tests of homogeneity for discrete ones (orders, choices, pixel shifts), binomial tests for
the application probability. The routed transforms are built from the torchvision objects
(:func:`from_torchvision`), so the conversion is checked on the way.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from ff_lightning.augment.transforms import from_torchvision
from tests.lazy_scipy import stats

N = 10_000
P_MIN = 1e-3


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)


def _ks(ours: torch.Tensor, theirs: list[float] | torch.Tensor) -> float:
    return float(stats.ks_2samp(np.asarray(ours, dtype=np.float64), np.asarray(theirs)).pvalue)


def _homogeneous(ours: list, theirs: list) -> float:
    """Chi-square test that two samples of discrete values come from one law."""
    values = sorted(set(ours) | set(theirs))
    table = np.array([[ours.count(v) for v in values], [theirs.count(v) for v in values]])
    return float(stats.chi2_contingency(table).pvalue)


def _perm_ids(perms) -> list[int]:
    n = len(perms[0])
    index = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
    return [index[tuple(int(v) for v in p)] for p in perms]


def _records(t, n: int = N):
    return t.sample(torch.arange(n), 0, 7)


def test_color_jitter_factors_and_order() -> None:
    tv = v2.ColorJitter(brightness=0.4, contrast=(0.2, 1.7), saturation=0.9, hue=0.3)
    rec = _records(from_torchvision(tv))
    draws = [tv.make_params([]) for _ in range(N)]
    keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
    for k, key in enumerate(keys):
        assert _ks(rec["factors"][:, k], [d[key] for d in draws]) > P_MIN, key
    ours = _perm_ids(rec["order"].tolist())
    theirs = _perm_ids([d["fn_idx"].tolist() for d in draws])
    assert len(set(ours)) == 24
    assert _homogeneous(ours, theirs) > P_MIN


def test_gaussian_blur_sigma() -> None:
    tv = v2.GaussianBlur(23, sigma=(0.1, 2.0))
    rec = _records(from_torchvision(tv))
    theirs = [tv.make_params([])["sigma"][0] for _ in range(N)]
    assert _ks(rec["sigma"], theirs) > P_MIN


def test_affine_angle_shifts_scale_shear() -> None:
    tv = v2.RandomAffine(30, translate=(0.1, 0.3), scale=(0.7, 1.2), shear=(-5, 10, -20, 4))
    ours_t = from_torchvision(tv)
    rec = _records(ours_t)
    h, w = 24, 40
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    draws = [tv.make_params([img]) for _ in range(N)]
    resolved = ours_t.resolve(rec, h, w)
    assert _ks(rec["angle"], [d["angle"] for d in draws]) > P_MIN
    assert _ks(rec["scale"], [d["scale"] for d in draws]) > P_MIN
    for k in range(2):
        assert _ks(rec["shear"][:, k], [d["shear"][k] for d in draws]) > P_MIN
        ours_shift = [p["translate"][k] for p in resolved]
        theirs_shift = [d["translate"][k] for d in draws]
        assert _homogeneous(ours_shift, theirs_shift) > P_MIN


def test_rotation_angle() -> None:
    tv = v2.RandomRotation((-10, 75))
    rec = _records(from_torchvision(tv))
    assert _ks(rec["angle"], [tv.make_params([])["angle"] for _ in range(N)]) > P_MIN


@pytest.mark.parametrize(
    "tv",
    [
        v2.RandomGrayscale(0.3),
        v2.RandomSolarize(100, p=0.3),
        v2.RandomPosterize(4, p=0.3),
        v2.RandomEqualize(0.3),
        v2.RandomAutocontrast(0.3),
        v2.RandomInvert(0.3),
        v2.RandomAdjustSharpness(2.0, p=0.3),
        v2.RandomHorizontalFlip(0.3),
        v2.RandomVerticalFlip(0.3),
        v2.RandomApply([v2.RandomInvert(1.0)], p=0.3),
    ],
    ids=lambda t: type(t).__name__,
)
def test_application_probability(tv) -> None:
    applied = _records(from_torchvision(tv))["applied"]
    theirs = int(sum(bool(torch.rand(1) < 0.3) for _ in range(N)))  # _RandomApplyTransform's law
    assert stats.binomtest(int(applied.sum()), N, 0.3).pvalue > P_MIN
    table = np.array([[int(applied.sum()), N - int(applied.sum())], [theirs, N - theirs]])
    assert stats.chi2_contingency(table).pvalue > P_MIN


def test_random_choice_weights() -> None:
    tv = v2.RandomChoice(
        [v2.RandomInvert(1.0), v2.RandomGrayscale(1.0), v2.RandomEqualize(1.0)], p=[1.0, 3.0, 6.0]
    )
    ours = _records(from_torchvision(tv))["choice"].tolist()
    theirs = [int(torch.multinomial(torch.tensor(tv.p), 1)) for _ in range(N)]
    assert _homogeneous(ours, theirs) > P_MIN


def test_random_order_permutations() -> None:
    tv = v2.RandomOrder([v2.RandomInvert(1.0), v2.RandomGrayscale(1.0), v2.RandomEqualize(1.0)])
    ours = _perm_ids(_records(from_torchvision(tv))["order"].tolist())
    theirs = _perm_ids([torch.randperm(3).tolist() for _ in range(N)])
    assert len(set(ours)) == 6
    assert _homogeneous(ours, theirs) > P_MIN


def test_members_of_a_chain_draw_independently() -> None:
    """Two identical members of one chain get their own streams: uncorrelated factors."""
    from ff_lightning.augment.transforms import Chain, ColorJitter

    chain = Chain([ColorJitter(0.5), ColorJitter(0.5)])
    rec = _records(chain)
    a, b = rec["0.factors"][:, 0], rec["1.factors"][:, 0]
    assert not torch.equal(a, b)
    assert abs(float(stats.pearsonr(a.numpy(), b.numpy()).statistic)) < 0.05
    assert _ks(a, b) > P_MIN
