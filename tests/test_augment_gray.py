"""One-channel images: every op and policy works on [B, 1, H, W] as torchvision's do."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.augment import build_policy
from ff_lightning.augment.functional import OPS, apply_op
from ff_lightning.augment.policies import tv_apply

MAGNITUDE = {
    "ShearX": 0.3,
    "ShearY": -0.2,
    "TranslateX": 5.0,
    "TranslateY": -7.0,
    "Rotate": 25.0,
    "Brightness": 0.5,
    "Color": 0.7,
    "Contrast": -0.4,
    "Sharpness": 0.8,
    "Posterize": 4.0,
    "Solarize": 0.6,
}


def _gray(b: int = 6, h: int = 28, w: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (b, 1, h, w), generator=g, dtype=torch.uint8)
    return torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).to(torch.uint8)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_each_op_matches_torchvision_on_one_channel(op: str, interpolation: str) -> None:
    x = _gray()
    m = MAGNITUDE.get(op, 0.0)
    mags = torch.tensor([m * (1 - 0.15 * i) for i in range(len(x))])
    got = apply_op(x, op, mags, interpolation=interpolation, fill=[10, 20, 30])
    assert got.shape == x.shape and got.dtype == torch.uint8
    for i in range(len(x)):
        ref = tv_apply(x[i], op, float(mags[i]), interpolation, [10.0])
        diff = (got[i].int() - ref.int()).abs()
        assert float(diff.float().mean()) <= 0.01 and int(diff.max()) <= 1, (op, i)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
def test_policies_keep_one_channel_and_routes_agree(name: str) -> None:
    pol = build_policy(name)
    x = _gray(8)
    p = pol.sample(torch.arange(8), 0, 0)
    out = pol.apply_batch(x, p)
    assert out.shape == (8, 1, 28, 28)
    for i in range(8):
        assert torch.equal(pol.apply_one(x[i], p[i]), out[i])


def test_two_channel_images_are_rejected_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"C = 1 or 3, got \[2, 2, 8, 8\]"):
        apply_op(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "Invert", 0.0)
