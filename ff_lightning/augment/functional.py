"""Batched per-sample auto-augment kernels with torchvision v2 semantics.

:func:`apply_op` transforms every image of a uint8 batch ``[B, 3, H, W]`` with the same op
and its own magnitude, in a few batched tensor operations (no loop over samples), on any
device. For each sample the result equals what torchvision's v2 auto-augment transforms
(``_AutoAugmentBase._apply_image_or_video_transform``) produce for that image and
magnitude, up to rare one-level rounding differences.

Magnitude units (signed, exactly what torchvision's policies draw, per op):

============  ==========================================================================
op            magnitude ``m`` of a sample and what is applied
============  ==========================================================================
Identity      ignored
ShearX/Y      shear ``tan(angle)``: ``affine(shear=degrees(atan(m)))`` about pixel (0, 0)
TranslateX/Y  pixels; ``int(m)`` (truncated toward zero)
Rotate        degrees, counter-clockwise, about the image centre
Brightness    ``adjust_brightness(factor=1 + m)``
Color         ``adjust_saturation(factor=1 + m)``
Contrast      ``adjust_contrast(factor=1 + m)``
Sharpness     ``adjust_sharpness(factor=1 + m)``
Posterize     bits kept, ``int(m)``
Solarize      fraction of the maximum: pixels ``>= 255 * m`` are inverted (the threshold
              compared in float32, as torchvision does)
AutoContrast  ignored
Equalize      ignored
Invert        ignored
============  ==========================================================================

Where torchvision would raise for an out-of-range value, the value is clamped instead
(checking would need a device synchronisation): factors ``1 + m`` below 0 become 0,
Posterize bits are clamped to ``[0, 8]`` (8 and above is the identity), and a Solarize
magnitude above 1 puts the threshold above every pixel (the identity).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ff_lightning.augment import _color, _geometry

__all__ = ["INTERPOLATIONS", "OPS", "apply_op", "apply_ops_grouped"]

OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear")

_GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
_BLENDS = frozenset({"Brightness", "Color", "Contrast", "Sharpness"})

FillArg = float | Sequence[float] | None


def _check_images(images: object, name: str = "images") -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"`{name}` must have dtype torch.uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`{name}` must have shape [B, 3, H, W], got {list(images.shape)}")
    return images


def _check_op(op: object) -> str:
    if not isinstance(op, str) or op not in OPS:
        raise ValueError(f"`op` must be one of {OPS}, got {op!r}")
    return op


def _check_interpolation(interpolation: object) -> str:
    value = getattr(interpolation, "value", interpolation)  # accept torchvision's enum too
    if value not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return value


def _check_fill(fill: object) -> list[float] | None:
    if fill is None:
        return None
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        return [float(fill)]
    if isinstance(fill, Sequence) and not isinstance(fill, str):
        if len(fill) in (1, 3) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in fill
        ):
            return [float(v) for v in fill]
    raise ValueError(f"`fill` must be None, a number or a sequence of 1 or 3 numbers, got {fill!r}")


def _check_magnitude(magnitude: object, batch: int) -> Tensor:
    """Magnitudes as float64 ``[B]`` on a device that supports float64 (small, per sample)."""
    if isinstance(magnitude, numbers.Real) and not isinstance(magnitude, bool):
        return torch.full((batch,), float(magnitude), dtype=torch.float64)
    if not isinstance(magnitude, Tensor):
        raise TypeError(
            f"`magnitude` must be a float tensor of shape [B] or a number, got {type(magnitude).__name__}"
        )
    if magnitude.dtype == torch.bool or magnitude.is_complex():
        raise TypeError(f"`magnitude` must be a real-valued tensor, got dtype {magnitude.dtype}")
    if magnitude.ndim == 0:
        magnitude = magnitude.expand(batch)
    elif magnitude.ndim != 1 or magnitude.shape[0] != batch:
        raise ValueError(
            f"`magnitude` must have shape [B] with B={batch} (one value per image), "
            f"got {list(magnitude.shape)}"
        )
    if magnitude.device.type == "mps":  # MPS has no float64; the parameters are tiny anyway
        magnitude = magnitude.cpu()
    return magnitude.to(torch.float64)


def _active(op: str, m: Tensor) -> Tensor | None:
    """Samples on which ``op`` is not exactly the identity; ``None`` if all may be active."""
    if op == "Identity":
        return torch.zeros_like(m, dtype=torch.bool)
    if op in ("TranslateX", "TranslateY", "Posterize"):
        value = torch.trunc(m)
        return value < 8 if op == "Posterize" else value != 0
    if op == "Solarize":
        return m <= 1.0
    if op in _GEOMETRIC or op in _BLENDS:
        return (torch.remainder(m, 360.0) if op == "Rotate" else m) != 0
    return None


def _factors(m: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(1 + m, 1 - (1 + m))`` in float64 (like torchvision's Python floats), as float32."""
    factor = (1.0 + m).clamp_(min=0.0)
    alpha = 1.0 - factor
    return factor.to(torch.float32).to(device), alpha.to(torch.float32).to(device)


def _apply(images: Tensor, op: str, m: Tensor, interpolation: str, fill: list[float] | None) -> Tensor:
    """Dispatch ``op`` on contiguous uint8 ``images`` with float64 magnitudes ``m``."""
    device = images.device
    height, width = images.shape[-2:]
    zeros = torch.zeros_like(m)
    if op == "Identity":
        return images.clone()
    if op in ("TranslateX", "TranslateY"):
        pixels = torch.trunc(m).to(torch.int64)
        tx, ty = (pixels, zeros.long()) if op == "TranslateX" else (zeros.long(), pixels)
        return _geometry.shift(images, tx, ty, fill)
    if op in ("ShearX", "ShearY"):
        shear = torch.rad2deg(torch.atan(m))
        sx, sy = (shear, zeros) if op == "ShearX" else (zeros, shear)
        # torchvision's auto-augment shears about pixel (0, 0): centre [0, 0] in pixels.
        matrix = _geometry.inverse_affine(zeros, sx, sy, -0.5 * width, -0.5 * height)
        return _geometry.warp(images, matrix, interpolation, fill)
    if op == "Rotate":
        # rotate_image takes angle % 360 and passes -angle to the affine matrix.
        angle = -torch.remainder(m, 360.0)
        matrix = _geometry.inverse_affine(angle, zeros, zeros, 0.0, 0.0)
        return _geometry.warp(images, matrix, interpolation, fill)
    if op == "Brightness":
        factor, _ = _factors(m, device)
        return _color.blend_brightness(images, factor)
    if op == "Color":
        return _color.blend_color(images, *_factors(m, device))
    if op == "Contrast":
        return _color.blend_contrast(images, *_factors(m, device))
    if op == "Sharpness":
        _, alpha = _factors(m, device)
        return _color.sharpness(images, alpha)
    if op == "Posterize":
        bits = torch.trunc(m).clamp_(0, 8).to(torch.int64).to(device)
        return _color.posterize(images, bits)
    if op == "Solarize":
        # torchvision compares the uint8 pixels with float(255 * m) cast to float32.
        threshold = torch.ceil((255.0 * m).to(torch.float32))
        active = (threshold <= 255).to(device)
        threshold = threshold.clamp_(0, 255).to(torch.uint8).to(device)
        return _color.solarize(images, threshold, active)
    if op == "AutoContrast":
        return _color.autocontrast(images)
    if op == "Equalize":
        return _color.equalize(images)
    return _color.invert(images)  # "Invert"


def apply_op(
    images: Tensor,
    op: str,
    magnitude: Tensor | float,
    *,
    interpolation: str = "nearest",
    fill: FillArg = 0,
) -> Tensor:
    """Apply auto-augment op ``op`` to each image with its own magnitude.

    Args:
        images: uint8 ``[B, 3, H, W]`` on any device (any strides; ``B`` may be 0).
        op: one of :data:`OPS`.
        magnitude: float tensor ``[B]`` on any device, or a number / 0-d tensor used for
            every image; in torchvision's units per op (see the module docstring).
        interpolation: ``"nearest"`` or ``"bilinear"``, for the geometric ops.
        fill: colour of the area a geometric op uncovers: a number, 3 numbers, or ``None``
            (torchvision's ``fill=None``: zero padding; differs from ``0`` only for bilinear).

    Returns:
        uint8 ``[B, 3, H, W]`` on ``images.device``, a new tensor (never the input).
    """
    images = _check_images(images)
    op = _check_op(op)
    interpolation = _check_interpolation(interpolation)
    fill = _check_fill(fill)
    m = _check_magnitude(magnitude, images.shape[0])
    x = images.contiguous()
    if x.shape[0] == 0 or x.shape[-1] == 0 or x.shape[-2] == 0:
        return x.clone()
    if m.device.type != "cpu":
        # Finding no-op samples would cost a device synchronisation: process all of them.
        return _apply(x, op, m, interpolation, fill)
    active = _active(op, m)
    if active is None or bool(active.all()):
        return _apply(x, op, m, interpolation, fill)
    out = x.clone()
    if bool(active.any()):
        idx = active.nonzero().squeeze(1)
        idx_dev = idx.to(x.device)
        part = _apply(x.index_select(0, idx_dev), op, m.index_select(0, idx), interpolation, fill)
        out.index_copy_(0, idx_dev, part)
    return out


def apply_ops_grouped(
    images: Tensor,
    op_ids: Tensor,
    magnitudes: Tensor,
    op_names: Sequence[str] = OPS,
    *,
    interpolation: str = "nearest",
    fill: FillArg = 0,
) -> Tensor:
    """Apply op ``op_names[op_ids[i]]`` with magnitude ``magnitudes[i]`` to image ``i``.

    Samples are grouped by op; each group is gathered with ``index_select``, transformed by
    one :func:`apply_op` call and written back, so the cost is one batched call per distinct
    op. Reading the op ids costs one device synchronisation when they live on an accelerator.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        op_ids: integer ``[B]``, indices into ``op_names``.
        magnitudes: float ``[B]`` in torchvision's units for each sample's op.
        op_names: the op names ``op_ids`` refer to; each one of :data:`OPS`.
        interpolation, fill: as for :func:`apply_op`.

    Returns:
        uint8 ``[B, 3, H, W]`` on ``images.device``.
    """
    images = _check_images(images)
    names = [_check_op(name) for name in op_names]
    batch = images.shape[0]
    if not isinstance(op_ids, Tensor) or op_ids.is_floating_point() or op_ids.dtype == torch.bool:
        raise TypeError(f"`op_ids` must be an integer tensor of shape [B], got {op_ids!r}")
    if op_ids.shape != (batch,):
        raise ValueError(f"`op_ids` must have shape [B] with B={batch}, got {list(op_ids.shape)}")
    mags = _check_magnitude(magnitudes, batch)
    interpolation = _check_interpolation(interpolation)
    ids = op_ids.to("cpu", torch.int64)  # one synchronisation: the grouping needs the ids
    if batch and (int(ids.min()) < 0 or int(ids.max()) >= len(names)):
        raise ValueError(
            f"`op_ids` must lie in [0, {len(names) - 1}] (indices into `op_names`), "
            f"got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    x = images.contiguous()
    groups = [(k, (ids == k).nonzero().squeeze(1)) for k in ids.unique().tolist()]
    if len(groups) == 1:
        return apply_op(x, names[groups[0][0]], mags, interpolation=interpolation, fill=fill)
    out = x.clone()
    for k, idx in groups:
        if names[k] == "Identity":
            continue
        idx_dev = idx.to(x.device)
        idx_mag = idx.to(mags.device)
        part = apply_op(
            x.index_select(0, idx_dev),
            names[k],
            mags.index_select(0, idx_mag),
            interpolation=interpolation,
            fill=fill,
        )
        out.index_copy_(0, idx_dev, part)
    return out
