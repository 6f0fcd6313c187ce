"""Shared cases for the routed-transform tests: one factory per transform (and setting), test
images, and torchvision's per-sample reference for a drawn record."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ff_lightning.augment import build_policy
from ff_lightning.augment.transforms import (
    Chain,
    ColorJitter,
    GaussianBlur,
    PolicyStage,
    RandomAdjustSharpness,
    RandomAffine,
    RandomApply,
    RandomAutocontrast,
    RandomChoice,
    RandomEqualize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomInvert,
    RandomOrder,
    RandomPosterize,
    RandomRotation,
    RandomSolarize,
    RandomVerticalFlip,
    Record,
)

Factory = Callable[[], object]

#: Transforms whose torchvision tensor kernel the routed kernels reproduce exactly.
EXACT: dict[str, Factory] = {
    "jitter": lambda: ColorJitter(0.4, 0.4, 0.4, 0.1),
    "jitter-no-hue": lambda: ColorJitter((0.5, 1.5), 0.3, (0.0, 2.0)),
    "jitter-hue-only": lambda: ColorJitter(hue=(-0.5, 0.5)),
    "grayscale": lambda: RandomGrayscale(0.5),
    "solarize": lambda: RandomSolarize(128.0, 0.5),
    "solarize-frac": lambda: RandomSolarize(100.5, 0.7),
    "posterize": lambda: RandomPosterize(3, 0.5),
    "equalize": lambda: RandomEqualize(0.5),
    "autocontrast": lambda: RandomAutocontrast(0.6),
    "invert": lambda: RandomInvert(0.5),
    "sharpness": lambda: RandomAdjustSharpness(2.0, 0.6),
    "sharpness-blur": lambda: RandomAdjustSharpness(0.1, 0.6),
    "affine-nearest": lambda: RandomAffine(
        25, translate=(0.1, 0.2), scale=(0.8, 1.2), shear=(-8, 8, -4, 4), fill=(10, 200, 30)
    ),
    "affine-nearest-center": lambda: RandomAffine(
        (-40, 10), scale=(0.9, 1.3), shear=6, center=(5.0, 7.5), fill=None
    ),
    "rotation-nearest": lambda: RandomRotation(60, fill=40),
    "rotation-center": lambda: RandomRotation((-30, 30), center=(3.0, 4.0)),
    "rotation-quarters": lambda: RandomRotation((180, 180)),
    "hflip": lambda: RandomHorizontalFlip(0.5),
    "vflip": lambda: RandomVerticalFlip(0.5),
    "apply": lambda: RandomApply([RandomInvert(1.0), RandomPosterize(2, 1.0)], p=0.5),
    "choice": lambda: RandomChoice(
        [RandomInvert(1.0), RandomGrayscale(1.0), RandomSolarize(90, 1.0)], p=[1, 2, 3]
    ),
    "order": lambda: RandomOrder([RandomInvert(1.0), RandomSolarize(100, 1.0), ColorJitter(0.5)]),
    "chain": lambda: Chain([ColorJitter(0.3, 0.3), RandomGrayscale(0.3), RandomHFlipOrder()]),
}

#: Transforms compared by mean absolute difference (bilinear warps, blur).
CLOSE: dict[str, Factory] = {
    "blur": lambda: GaussianBlur(9, (0.1, 2.0)),
    "blur-rect": lambda: GaussianBlur((5, 11), (0.5, 3.0)),
    "affine-bilinear": lambda: RandomAffine(
        30, translate=(0.2, 0.1), scale=(0.7, 1.1), shear=10, interpolation="bilinear", fill=90
    ),
    "affine-bilinear-nofill": lambda: RandomAffine(20, interpolation="bilinear", fill=None),
    "rotation-bilinear": lambda: RandomRotation(90, interpolation=InterpolationMode.BILINEAR),
    "apply-blur": lambda: RandomApply([GaussianBlur(5), ColorJitter(0.2)], p=0.7),
}


def RandomHFlipOrder() -> RandomOrder:  # noqa: N802 (a factory named like the classes)
    return RandomOrder([RandomHorizontalFlip(0.5), RandomVerticalFlip(0.5)])


ALL: dict[str, Factory] = {**EXACT, **CLOSE}


def images(b: int, c: int = 3, h: int = 29, w: int = 37, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus noise, with a flat image, a narrow-range one and a grey one (hue
    and equalise edge cases)."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h)[:, None]
    xx = torch.linspace(0, 1, w)[None, :]
    base = torch.stack([yy * 200 + xx * 40, yy * 0 + xx * 180 + 30, (yy + xx) * 110 + 10])[:c]
    phase = torch.rand(b, c, 1, 1, generator=g) * 40
    noise = torch.randn(b, c, h, w, generator=g) * 12
    x = (base + phase + noise).clamp(0, 255).round().to(torch.uint8)
    if b > 3:
        x[1] = 77
        x[2] = x[2] // 4 + 100
        x[3] = x[3, :1].expand(c, h, w)  # grey: r == g == b
    return x


def _mode(t: object) -> InterpolationMode:
    return InterpolationMode(t.interpolation)  # type: ignore[attr-defined]


def _fill(t: object) -> object:
    fill = t.fill  # type: ignore[attr-defined]
    return fill if fill is None or len(fill) > 1 else fill[0]


def reference(t: object, img: torch.Tensor, rec: Record) -> torch.Tensor:
    """torchvision's tensor kernels on one uint8 ``[C, H, W]`` image with the parameters the
    record (of length 1) holds."""
    if isinstance(t, ColorJitter):
        fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        factors = rec["factors"][0].tolist()
        for k in rec["order"][0].tolist():
            if t.ranges[k] is not None:
                img = fns[k](img, factors[k])
        return img
    if isinstance(t, GaussianBlur):
        sigma = float(rec["sigma"][0])
        return F.gaussian_blur(img, list(t.kernel_size), [sigma, sigma])
    if isinstance(t, RandomAffine):
        p = t.resolve(rec, img.shape[-2], img.shape[-1])[0]
        center = list(t.center) if t.center is not None else None
        return F.affine(img, **p, interpolation=_mode(t), fill=_fill(t), center=center)
    if isinstance(t, RandomRotation):
        center = list(t.center) if t.center is not None else None
        angle = float(rec["angle"][0])
        return F.rotate(img, angle, interpolation=_mode(t), center=center, fill=_fill(t))
    if isinstance(t, RandomApply):
        if bool(rec["applied"][0]):
            for i, m in enumerate(t.transforms):
                img = reference(m, img, rec.part(str(i)))
        return img
    if isinstance(t, RandomChoice):
        c = int(rec["choice"][0])
        return reference(t.transforms[c], img, rec.part(str(c)))
    if isinstance(t, (RandomOrder, Chain)):
        order = rec["order"][0].tolist() if isinstance(t, RandomOrder) else range(len(t.transforms))
        for i in order:
            img = reference(t.transforms[i], img, rec.part(str(i)))
        return img
    if isinstance(t, PolicyStage):
        return t.policy.apply_one(img, t.params(rec))
    if not bool(rec["applied"][0]):
        return img
    gated = {
        RandomGrayscale: lambda: F.rgb_to_grayscale(img, img.shape[0]),
        RandomSolarize: lambda: F.solarize(img, t.threshold),
        RandomPosterize: lambda: F.posterize(img, t.bits),
        RandomEqualize: lambda: F.equalize(img),
        RandomAutocontrast: lambda: F.autocontrast(img),
        RandomInvert: lambda: F.invert(img),
        RandomAdjustSharpness: lambda: F.adjust_sharpness(img, t.sharpness_factor),
        RandomHorizontalFlip: lambda: F.horizontal_flip(img),
        RandomVerticalFlip: lambda: F.vertical_flip(img),
    }
    return gated[type(t)]()


def policy_chain() -> Chain:
    """A chain mixing routed transforms and two policies."""
    return Chain(
        [
            ColorJitter(0.4, 0.4, 0.4, 0.1),
            build_policy("randaugment", num_ops=2),
            RandomGrayscale(0.2),
            build_policy("trivialaugment"),
        ]
    )
