"""Routed transforms from torchvision objects (v2 and v1), and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms as v1
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ff_lightning.augment import build_policy
from ff_lightning.augment import transforms as T
from ff_lightning.augment.transforms import RECOGNISED, from_torchvision, unsupported_reason
from ff_lightning.errors import ConfigError
from tests.transforms_cases import images, reference


def _pairs(mod):
    return [
        (mod.ColorJitter(0.4, (0.5, 1.2), 0.3, 0.1), T.ColorJitter),
        (mod.RandomGrayscale(0.3), T.RandomGrayscale),
        (mod.GaussianBlur((5, 9), (0.3, 1.5)), T.GaussianBlur),
        (mod.RandomSolarize(140.0, p=0.4), T.RandomSolarize),
        (mod.RandomPosterize(5, p=0.4), T.RandomPosterize),
        (mod.RandomEqualize(0.4), T.RandomEqualize),
        (mod.RandomAutocontrast(0.4), T.RandomAutocontrast),
        (mod.RandomInvert(0.4), T.RandomInvert),
        (mod.RandomAdjustSharpness(1.7, p=0.4), T.RandomAdjustSharpness),
        (
            mod.RandomAffine(
                20, (0.1, 0.05), (0.9, 1.1), (-3, 3, -2, 2), InterpolationMode.BILINEAR, fill=7
            ),
            T.RandomAffine,
        ),
        (
            mod.RandomRotation(35, InterpolationMode.NEAREST, center=(3, 4), fill=9),
            T.RandomRotation,
        ),
        (mod.RandomHorizontalFlip(0.4), T.RandomHorizontalFlip),
        (mod.RandomVerticalFlip(0.4), T.RandomVerticalFlip),
        (mod.RandomApply([mod.RandomInvert(1.0), mod.ColorJitter(0.2)], p=0.4), T.RandomApply),
        (
            mod.RandomChoice([mod.RandomInvert(1.0), mod.RandomGrayscale(1.0)], p=[2, 1]),
            T.RandomChoice,
        ),
        (mod.RandomOrder([mod.RandomInvert(1.0), mod.RandomEqualize(1.0)]), T.RandomOrder),
        (mod.Compose([mod.RandomInvert(0.5), mod.GaussianBlur(3)]), T.Chain),
    ]


@pytest.mark.parametrize("module", [v2, v1], ids=["v2", "v1"])
def test_every_recognised_class_converts_with_its_arguments(module) -> None:
    pairs = _pairs(module)
    assert sorted(type(tv).__name__ for tv, _ in pairs) == sorted(RECOGNISED)
    x = images(6, 3, 26, 30)
    for tv, cls in pairs:
        ours = from_torchvision(tv)
        assert type(ours) is cls, type(tv).__name__
        assert unsupported_reason(tv) is None
        rec = ours.sample(torch.arange(6), 0, 0)
        y = ours.apply_batch(x, rec)
        ref = torch.stack([reference(ours, x[i], rec[i]) for i in range(6)])
        assert (y.int() - ref.int()).abs().float().mean() <= 1.0, type(tv).__name__


def test_arguments_are_carried() -> None:
    cj = from_torchvision(v2.ColorJitter(0.4, (0.5, 1.2), 0, 0.1))
    assert cj.ranges == ((0.6, 1.4), (0.5, 1.2), None, (-0.1, 0.1))
    blur = from_torchvision(v1.GaussianBlur(7, 1.5))
    assert blur.kernel_size == (7, 7) and blur.sigma == (1.5, 1.5)
    aff = from_torchvision(
        v2.RandomAffine(10, translate=(0.2, 0.1), scale=(0.5, 2), shear=4, interpolation=2)
    )
    assert aff.degrees == (-10.0, 10.0) and aff.translate == (0.2, 0.1)
    assert aff.scale == (0.5, 2.0) and aff.shear == (-4.0, 4.0)
    assert aff.interpolation == "bilinear" and aff.fill == [0.0]
    choice = from_torchvision(v1.RandomChoice([v1.RandomInvert(), v1.RandomEqualize()]))
    assert choice.p == [0.5, 0.5]
    sol = from_torchvision(v2.RandomSolarize(0.5, p=1.0), value_scale=255)
    assert sol.threshold == 127.5
    rot = from_torchvision(v2.RandomRotation(5, fill={tv_tensors.Image: 127, "others": 0}))
    assert rot.fill == [127.0]
    rot = from_torchvision(v2.RandomRotation(5, fill=(0.5, 0.25, 1.0)), value_scale=255)
    assert rot.fill == [127.5, 63.75, 255.0]


def test_unknown_and_unsupported_give_none_with_a_reason() -> None:
    class MyJitter(v2.ColorJitter):
        pass

    cases = {
        v2.RandomResizedCrop(32): "not a recognised",
        MyJitter(0.1): "not a recognised",
        v2.RandomRotation(30, expand=True): "expand=True",
        v2.RandomAffine(30, interpolation=InterpolationMode.BICUBIC): "'bicubic'",
        v1.RandomRotation(30, interpolation=InterpolationMode.BICUBIC): "'bicubic'",
        v2.RandomApply([v2.RandomInvert(), v2.RandomErasing()]): "member 1",
        v2.RandomChoice([v2.RandomPerspective(), v2.RandomInvert()]): "member 0",
        v2.Compose([v2.RandomInvert(), v2.RandomOrder([v2.ToDtype(torch.float32)])]): "member 1",
        "ColorJitter": "not a recognised",
    }
    for tv, why in cases.items():
        assert from_torchvision(tv) is None, tv
        assert why in unsupported_reason(tv), (tv, unsupported_reason(tv))


@pytest.mark.parametrize(
    ("tv", "match"),
    [
        (v2.RandomSolarize(300), r"RandomSolarize: `threshold` must be a number <= 255"),
        (v1.RandomSolarize(256.0), r"RandomSolarize: `threshold`"),
        (v2.RandomPosterize(9), r"RandomPosterize: `bits` must be an integer in \[0, 8\], got 9"),
        (v2.RandomAdjustSharpness(-0.5), r"RandomAdjustSharpness: `sharpness_factor`"),
        (v2.RandomApply([v2.RandomPosterize(10)]), r"RandomPosterize: `bits`"),
    ],
)
def test_out_of_range_arguments_name_transform_and_argument(tv, match) -> None:
    with pytest.raises(ConfigError, match=match):
        from_torchvision(tv)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: T.ColorJitter(brightness=-0.1),
            r"ColorJitter: `brightness` must be a non-negative",
        ),
        (
            lambda: T.ColorJitter(contrast=(1.5, 0.5)),
            r"ColorJitter: `contrast` must give an increasing",
        ),
        (
            lambda: T.ColorJitter(hue=0.7),
            r"ColorJitter: `hue` must give an increasing range within \[-0.5, 0.5\]",
        ),
        (
            lambda: T.ColorJitter(saturation="lots"),
            r"ColorJitter: `saturation` must be a number or a pair",
        ),
        (lambda: T.GaussianBlur(4), r"GaussianBlur: `kernel_size` values must be odd positive"),
        (lambda: T.GaussianBlur(5, sigma=(2.0, 1.0)), r"GaussianBlur: `sigma` must be positive"),
        (lambda: T.GaussianBlur(5, sigma=0), r"GaussianBlur: `sigma`"),
        (
            lambda: T.RandomInvert(p=1.5),
            r"RandomInvert: `p` must be a probability in \[0, 1\], got 1.5",
        ),
        (lambda: T.RandomGrayscale(p="half"), r"RandomGrayscale: `p`"),
        (lambda: T.RandomAffine(-5), r"RandomAffine: `degrees` must be a non-negative"),
        (
            lambda: T.RandomAffine(5, translate=(1.5, 0)),
            r"RandomAffine: `translate` must be None or a pair in \[0, 1\]",
        ),
        (lambda: T.RandomAffine(5, scale=(0.0, 1.0)), r"RandomAffine: `scale`"),
        (lambda: T.RandomAffine(5, scale=(2.0, 1.0)), r"RandomAffine: `scale`"),
        (
            lambda: T.RandomAffine(5, shear=(1, 2, 3)),
            r"RandomAffine: `shear` must be a number or a sequence of 2 or 4",
        ),
        (
            lambda: T.RandomAffine(5, interpolation="bicubic"),
            r"RandomAffine: `interpolation` must be 'nearest' or 'bilinear'",
        ),
        (
            lambda: T.RandomAffine(5, fill="red"),
            r"RandomAffine: `fill` must be None, a number or a sequence",
        ),
        (lambda: T.RandomRotation(5, center=(1,)), r"RandomRotation: `center`"),
        (lambda: T.RandomRotation(5, expand=True), r"RandomRotation: `expand` must be False"),
        (
            lambda: T.RandomChoice([T.RandomInvert()], p=[-1]),
            r"RandomChoice: `p` must be None or 1 non-negative",
        ),
        (lambda: T.RandomChoice([T.RandomInvert()], p=[1, 2]), r"RandomChoice: `p`"),
        (lambda: T.RandomApply([]), r"RandomApply: `transforms` must hold at least one"),
        (lambda: T.RandomApply([T.RandomInvert()], p=2), r"RandomApply: `p`"),
        (lambda: T.RandomOrder("abc"), r"RandomOrder: `transforms` must be a list"),
        (
            lambda: T.Chain([T.RandomInvert(), v2.RandomInvert()]),
            r"Chain: `transforms\[1\]` must be a routed transform or a Policy, got RandomInvert; convert",
        ),
        (
            lambda: T.ColorJitter(0.1, stream=3),
            r"ColorJitter: `stream` must be an integer >= 16, got 3",
        ),
        (lambda: T.PolicyStage("randaugment"), r"PolicyStage: `policy` must be a Policy"),
    ],
)
def test_bad_arguments(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_policies_join_chains_and_reprs_read_back() -> None:
    chain = T.Chain([from_torchvision(v2.ColorJitter(0.2)), build_policy("augmix")])
    assert isinstance(chain.transforms[1], T.PolicyStage)
    text = repr(chain)
    assert text.startswith("Chain([ColorJitter(brightness=(0.8, 1.2)") and "AugMix(" in text


def test_a_quarter_turn_hands_the_next_op_a_contiguous_batch() -> None:
    """A rotation landing on a quarter turn for every sample returned ``rot90``'s view; a
    following op that writes its input in place then refused it (found with lightly's
    ``RandomRotate(prob=1.0)`` before a solarize)."""
    x = images(4, 3, 12, 12)
    chain = T.Chain(
        [
            from_torchvision(v2.RandomRotation((90, 90))),
            from_torchvision(v2.RandomSolarize(128.0, p=1.0)),
        ]
    )
    out = chain.apply_batch(x, chain.sample(range(4), epoch=0, seed=0))
    turned = torch.rot90(x, 1, dims=(-2, -1))
    assert torch.equal(out, torch.where(turned >= 128, 255 - turned, turned))
