"""Routed per-pixel colour transforms, each applied with probability ``p`` per sample.

torchvision v2's ``RandomSolarize``, ``RandomPosterize``, ``RandomEqualize``,
``RandomAutocontrast``, ``RandomInvert``, ``RandomAdjustSharpness`` and ``RandomGrayscale``.
Their parameters are fixed by the transform; a sample's record is whether it is applied
(``applied`` bool ``[B]``, drawn like torchvision's ``torch.rand(1) < p``).

The first six are auto-augment ops with a fixed magnitude: the applied samples go through
:func:`~ff_lightning.augment.functional.apply_ops_grouped` (table ops in one lookup, native
loops on the host, one host-to-device copy per call elsewhere), so they share the kernels,
and the fidelity, of the policies. RandomGrayscale has its own kernel: the truncated luma
(torchvision's float32 operations) in every channel; one channel is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ff_lightning.augment import _color
from ff_lightning.augment.dispatch import kernels_for, register_kernel
from ff_lightning.augment.functional import REGISTRY, apply_ops_grouped
from ff_lightning.augment.transforms import _native_ops
from ff_lightning.augment.transforms.base import (
    COSTS,
    FIRST_STREAM,
    GatedTransform,
    named,
    run_rows,
)
from ff_lightning.augment.transforms.record import Record
from ff_lightning.validation import check_float, check_int

__all__ = [
    "RandomAdjustSharpness",
    "RandomAutocontrast",
    "RandomEqualize",
    "RandomGrayscale",
    "RandomInvert",
    "RandomPosterize",
    "RandomSolarize",
    "grayscale",
]


def _exact_magnitude(target: float, forward: Callable[[float], float], inverse: float) -> float:
    """A float64 ``m`` near ``inverse`` with ``forward(m) == target`` when one exists (the
    registry's ops take ``1 + m`` or ``255 * m``; the nearest float64 may miss by an ulp)."""
    for step in (0, 1, -1, 2, -2):
        m = inverse
        for _ in range(abs(step)):
            m = math.nextafter(m, math.inf if step > 0 else -math.inf)
        if forward(m) == target:
            return m
    return inverse


class _RegistryOp(GatedTransform):
    """A gated auto-augment op of the registry with one magnitude for every sample (its cost
    is the registry's)."""

    op: str = "Identity"

    @property
    def unit_cost(self) -> float:  # type: ignore[override]
        return REGISTRY[self.op].cost

    def _magnitude(self) -> float:
        return 0.0

    def _apply_rows(self, x: Tensor, rows: Tensor, rec: Record) -> Tensor:
        ids = rec["applied"].to(torch.int64)  # 1: the op, 0: Identity (no group, untouched)
        mags = torch.full((len(rec),), self._magnitude(), dtype=torch.float64)
        return apply_ops_grouped(x, ids, mags, ("Identity", self.op), out=x)


class RandomEqualize(_RegistryOp):
    """torchvision's ``RandomEqualize(p)``: histogram equalisation per channel."""

    op = "Equalize"


class RandomAutocontrast(_RegistryOp):
    """torchvision's ``RandomAutocontrast(p)``: each channel stretched to ``[0, 255]``."""

    op = "AutoContrast"


class RandomInvert(_RegistryOp):
    """torchvision's ``RandomInvert(p)``: ``255 - x``."""

    op = "Invert"


class RandomPosterize(_RegistryOp):
    """torchvision's ``RandomPosterize(bits, p)``: keep the ``bits`` high bits (0 to 8)."""

    op = "Posterize"

    def __init__(self, bits: int, p: float = 0.5, *, stream: int = FIRST_STREAM) -> None:
        super().__init__(p, stream=stream)
        with named(self.name):
            self.bits = check_int("bits", bits, 0, 8)

    def _magnitude(self) -> float:
        return float(self.bits)

    def _extra_repr(self) -> str:
        return f"bits={self.bits}, p={self.p}"


class RandomSolarize(_RegistryOp):
    """torchvision's ``RandomSolarize(threshold, p)``: pixels ``>= threshold`` inverted.

    ``threshold`` is in uint8 levels (at most 255, as torchvision requires for uint8 images;
    a negative threshold inverts every pixel).
    """

    op = "Solarize"

    def __init__(self, threshold: float, p: float = 0.5, *, stream: int = FIRST_STREAM) -> None:
        super().__init__(p, stream=stream)
        with named(self.name):
            self.threshold = check_float(
                "threshold", threshold, high=255.0, fix="uint8 images have values up to 255"
            )
        self._m = _exact_magnitude(self.threshold, lambda m: 255.0 * m, self.threshold / 255.0)

    def _magnitude(self) -> float:
        return self._m

    def _extra_repr(self) -> str:
        return f"threshold={self.threshold}, p={self.p}"


class RandomAdjustSharpness(_RegistryOp):
    """torchvision's ``RandomAdjustSharpness(sharpness_factor, p)`` (borders kept)."""

    op = "Sharpness"

    def __init__(
        self, sharpness_factor: float, p: float = 0.5, *, stream: int = FIRST_STREAM
    ) -> None:
        super().__init__(p, stream=stream)
        with named(self.name):
            self.sharpness_factor = check_float("sharpness_factor", sharpness_factor, low=0.0)
        self._m = _exact_magnitude(
            self.sharpness_factor, lambda m: 1.0 + m, self.sharpness_factor - 1.0
        )

    def _magnitude(self) -> float:
        return self._m

    def _extra_repr(self) -> str:
        return f"sharpness_factor={self.sharpness_factor}, p={self.p}"


def grayscale(images: Tensor) -> Tensor:
    """``rgb_to_grayscale(images, num_output_channels=C)`` of uint8 ``[B, C, H, W]``, in place
    (``images`` is written and returned): the luma ``0.2989 r + 0.587 g + 0.114 b`` in
    torchvision's float32 operations, truncated, in every channel; one channel is unchanged."""
    if images.shape[1] == 1 or images.numel() == 0:
        return images
    return kernels_for(images.device)["transform.grayscale"](images)


@register_kernel("transform.grayscale", "cpu", "native", float_loops=True)
def _grayscale_native(images: Tensor) -> Tensor:
    if not images.is_contiguous():
        return _grayscale_torch(images)
    _native_ops.grayscale(images)
    return images


@register_kernel("transform.grayscale", "any", "torch")
def _grayscale_torch(images: Tensor) -> Tensor:
    luma = _color._grayscale(images).to(torch.uint8)  # floored: truncation of the float luma
    return images.copy_(luma.expand_as(images))


class RandomGrayscale(GatedTransform):
    """torchvision's ``RandomGrayscale(p=0.1)``: the luma in every channel (the number of
    channels is kept)."""

    unit_cost = COSTS["grayscale"]

    def __init__(self, p: float = 0.1, *, stream: int = FIRST_STREAM) -> None:
        super().__init__(p, stream=stream)

    def _apply_rows(self, x: Tensor, rows: Tensor, rec: Record) -> Tensor:
        return run_rows(grayscale, x, rows)
