"""Augmentation spaces of torchvision's v2 auto-augment classes, as data.

Each space is a tuple of :class:`OpSpec` in torchvision's order (``_AUGMENTATION_SPACE``);
:func:`magnitude_table` turns a space into the exact float32 magnitudes torchvision
computes for a given image size, so a bin index means the same thing here as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "AUGMIX_PARTIAL_SPACE",
    "AUGMIX_SPACE",
    "AUTOAUGMENT_SPACE",
    "AUTOAUGMENT_SUBPOLICIES",
    "RANDAUGMENT_SPACE",
    "TRIVIALAUGMENT_SPACE",
    "OpSpec",
    "magnitude_table",
]


@dataclass(frozen=True)
class OpSpec:
    """One op of a space.

    ``kind``: ``"none"`` (no magnitude, torchvision passes 0.0), ``"linear"``
    (``torch.linspace(low, high, num_bins)``) or ``"posterize"``
    (``(low - arange(num_bins) / ((num_bins - 1) / (low - high))).round()``, i.e. bits from
    ``low`` down to ``high``). ``per``: ``"width"``/``"height"`` multiplies ``low`` and
    ``high`` by that image side (Translate). ``signed``: the magnitude is negated with
    probability 0.5.
    """

    name: str
    kind: str = "none"
    low: float = 0.0
    high: float = 0.0
    signed: bool = False
    per: str | None = None


def _lin(
    name: str, high: float, *, low: float = 0.0, signed: bool = True, per: str | None = None
) -> OpSpec:
    return OpSpec(name, "linear", low, high, signed, per)


_TR_RA = 150.0 / 331.0  # torchvision: 150.0 / 331.0 * width

RANDAUGMENT_SPACE: tuple[OpSpec, ...] = (
    OpSpec("Identity"),
    _lin("ShearX", 0.3),
    _lin("ShearY", 0.3),
    _lin("TranslateX", _TR_RA, per="width"),
    _lin("TranslateY", _TR_RA, per="height"),
    _lin("Rotate", 30.0),
    _lin("Brightness", 0.9),
    _lin("Color", 0.9),
    _lin("Contrast", 0.9),
    _lin("Sharpness", 0.9),
    OpSpec("Posterize", "posterize", 8, 4),
    _lin("Solarize", 0.0, low=1.0, signed=False),
    OpSpec("AutoContrast"),
    OpSpec("Equalize"),
)

TRIVIALAUGMENT_SPACE: tuple[OpSpec, ...] = (
    OpSpec("Identity"),
    _lin("ShearX", 0.99),
    _lin("ShearY", 0.99),
    _lin("TranslateX", 32.0),
    _lin("TranslateY", 32.0),
    _lin("Rotate", 135.0),
    _lin("Brightness", 0.99),
    _lin("Color", 0.99),
    _lin("Contrast", 0.99),
    _lin("Sharpness", 0.99),
    OpSpec("Posterize", "posterize", 8, 2),
    _lin("Solarize", 0.0, low=1.0, signed=False),
    OpSpec("AutoContrast"),
    OpSpec("Equalize"),
)

AUTOAUGMENT_SPACE: tuple[OpSpec, ...] = (*RANDAUGMENT_SPACE[1:], OpSpec("Invert"))

AUGMIX_PARTIAL_SPACE: tuple[OpSpec, ...] = (
    _lin("ShearX", 0.3),
    _lin("ShearY", 0.3),
    _lin("TranslateX", 1.0 / 3.0, per="width"),  # torchvision: width / 3.0
    _lin("TranslateY", 1.0 / 3.0, per="height"),
    _lin("Rotate", 30.0),
    OpSpec("Posterize", "posterize", 4, 0),
    _lin("Solarize", 0.0, low=1.0, signed=False),
    OpSpec("AutoContrast"),
    OpSpec("Equalize"),
)

AUGMIX_SPACE: tuple[OpSpec, ...] = (
    *AUGMIX_PARTIAL_SPACE,
    _lin("Brightness", 0.9),
    _lin("Color", 0.9),
    _lin("Contrast", 0.9),
    _lin("Sharpness", 0.9),
)

# AutoAugment sub-policies: ((op, probability, magnitude bin), (op, probability, bin)),
# magnitudes over 10 bins; copied from torchvision's ``AutoAugment._get_policies``.
AUTOAUGMENT_SUBPOLICIES: dict[str, tuple[tuple[tuple[str, float, int | None], ...], ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}


def magnitude_table(space: tuple[OpSpec, ...], num_bins: int, height: int, width: int) -> Tensor:
    """float32 ``[len(space), num_bins]``: torchvision's magnitude of op ``i`` at bin ``j``.

    Rows of ops without a magnitude are 0. Values are unsigned; multiply by the sign.
    """
    rows = []
    for op in space:
        if op.kind == "none":
            rows.append(torch.zeros(num_bins))
        elif op.kind == "posterize":
            steps = torch.arange(num_bins) / ((num_bins - 1) / (op.low - op.high))
            rows.append((op.low - steps).round().int().float())
        else:
            size = {"width": width, "height": height, None: 1}[op.per]
            low = op.low * size if op.per else op.low
            high = op.high * size if op.per else op.high
            rows.append(torch.linspace(low, high, num_bins))
    return torch.stack(rows).to(torch.float32)
