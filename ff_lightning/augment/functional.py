"""Batched per-sample auto-augment kernels with torchvision v2 semantics.

:func:`apply_op` transforms every image of a uint8 batch ``[B, 3, H, W]`` with the same op
and its own magnitude, in a few batched tensor operations (no loop over samples), on any
device. For each sample the result equals what torchvision's v2 auto-augment transforms
(``_AutoAugmentBase._apply_image_or_video_transform``) produce for that image and
magnitude: the float32 arithmetic is reproduced operation by operation (bit-identical on
CPU in the tests), so at most rare one-level rounding differences remain elsewhere.

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
from ff_lightning.augment._device import h2d

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
_NO_TEMPORARIES = frozenset({"Identity", "Posterize", "Invert"})  # one uint8 pass, no chunks

FillArg = float | Sequence[float] | None

# Values (B*C*H*W) per chunk when running on CPU; see `_run`.
_CPU_CHUNK_ELEMENTS = 1 << 19


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
    """Samples on which ``op`` is not exactly the identity; ``None`` when not worth knowing.

    Posterize, Solarize and the ops without magnitude are cheap or never the identity.
    """
    if op == "Identity":
        return torch.zeros_like(m, dtype=torch.bool)
    if op in ("TranslateX", "TranslateY"):
        return torch.trunc(m) != 0
    if op == "Rotate":
        return torch.remainder(m, 360.0) != 0
    if op in _GEOMETRIC or op in _BLENDS:
        return m != 0
    return None


def _apply(
    images: Tensor, op: str, m: Tensor, interpolation: str, fill: list[float] | None, out: Tensor
) -> Tensor:
    """Dispatch ``op`` on contiguous uint8 ``images`` with float64 magnitudes ``m`` into ``out``."""
    device = images.device
    height, width = images.shape[-2:]
    zeros = torch.zeros_like(m)
    if op == "Identity":
        return out.copy_(images)
    if op in ("TranslateX", "TranslateY"):
        pixels = torch.trunc(m).to(torch.int64)
        tx, ty = (pixels, zeros.long()) if op == "TranslateX" else (zeros.long(), pixels)
        return _geometry.shift(images, tx, ty, fill, out)
    if op in ("ShearX", "ShearY"):
        shear = _geometry.degrees(_geometry.atan(m))
        sx, sy = (shear, zeros) if op == "ShearX" else (zeros, shear)
        # torchvision's auto-augment shears about pixel (0, 0): centre [0, 0] in pixels.
        matrix = _geometry.inverse_affine(zeros, sx, sy, -0.5 * width, -0.5 * height)
        return _geometry.warp(images, matrix, interpolation, fill, out)
    if op == "Rotate":
        # rotate_image takes angle % 360 and passes -angle to the affine matrix.
        angle = -torch.remainder(m, 360.0)
        matrix = _geometry.inverse_affine(angle, zeros, zeros, 0.0, 0.0)
        return _geometry.warp(images, matrix, interpolation, fill, out)
    if op in _BLENDS:
        factor = (1.0 + m).clamp_(min=0.0)  # float64 like torchvision's Python floats
        alpha = 1.0 - factor
        factor = h2d(factor.to(torch.float32), device)
        alpha = h2d(alpha.to(torch.float32), device)
        if op == "Brightness":
            return _color.brightness(images, factor, out)
        if op == "Color":
            return _color.color(images, factor, alpha, out)
        if op == "Contrast":
            return _color.contrast(images, factor, alpha, out)
        return _color.sharpness(images, alpha, out)
    if op == "Posterize":
        bits = h2d(torch.trunc(m).clamp_(0, 8).to(torch.int64), device)
        return _color.posterize(images, bits, out)
    if op == "Solarize":
        # torchvision compares the uint8 pixels with float(255 * m) cast to float32.
        threshold = torch.ceil((255.0 * m).to(torch.float32))
        active = h2d(threshold <= 255, device)
        threshold = h2d(threshold.clamp_(0, 255).to(torch.uint8), device)
        return _color.solarize(images, threshold, active, out)
    if op == "AutoContrast":
        return _color.autocontrast(images, out)
    if op == "Equalize":
        return _color.equalize(images, out)
    return _color.invert(images, out)  # "Invert"


def _run(
    images: Tensor, op: str, m: Tensor, interpolation: str, fill: list[float] | None, out: Tensor
) -> Tensor:
    """:func:`_apply`, in cache-sized chunks of samples on CPU.

    On CPU the kernels are memory-bound: float32 temporaries of a whole batch (38 MB for
    64 images of 224x224) fall out of the caches and, above glibc's mmap threshold, are
    page-faulted in afresh on every call, which made the batched kernels several times
    slower than torchvision's per-image loop. Chunks of about ``_CPU_CHUNK_ELEMENTS``
    values keep every temporary cache-resident. Accelerators get the whole batch at once.
    """
    batch = images.shape[0]
    per = max(1, _CPU_CHUNK_ELEMENTS // images[0].numel())
    if images.device.type != "cpu" or per >= batch or op in _NO_TEMPORARIES:
        return _apply(images, op, m, interpolation, fill, out)
    for start in range(0, batch, per):
        stop = min(start + per, batch)
        _apply(images[start:stop], op, m[start:stop], interpolation, fill, out[start:stop])
    return out


def _rows(images: Tensor) -> Tensor:
    """``images`` viewed as ``[B, N]`` rows of the widest of int32/uint8 that fits.

    ``index_select``/``index_copy_`` copy element by element on CPU; on 4-byte elements
    they are about five times faster than on bytes.
    """
    rows = images.view(images.shape[0], -1)
    if rows.shape[1] % 4 == 0 and rows.storage_offset() % 4 == 0:
        return rows.view(torch.int32)
    return rows


def _apply_subset(
    images: Tensor,
    op: str,
    m: Tensor,
    idx: Tensor,
    interpolation: str,
    fill: list[float] | None,
    out: Tensor,
) -> None:
    """``out[idx] = op(images[idx], m[idx])``; ``idx`` int64 on CPU, ``out`` a copy of ``images``."""
    idx_dev = h2d(idx, images.device)
    part = _rows(images).index_select(0, idx_dev).view(torch.uint8).view(-1, *images.shape[1:])
    part_out = torch.empty_like(part)
    _run(part, op, m.index_select(0, idx.to(m.device)), interpolation, fill, part_out)
    _rows(out).index_copy_(0, idx_dev, _rows(part_out))


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
        uint8 ``[B, 3, H, W]`` on ``images.device``, a new contiguous tensor.
    """
    images = _check_images(images)
    op = _check_op(op)
    interpolation = _check_interpolation(interpolation)
    fill = _check_fill(fill)
    m = _check_magnitude(magnitude, images.shape[0])
    x = images.contiguous()
    if x.numel() == 0:
        return x.clone()
    if m.device.type == "cpu":
        # Skip samples on which the op is exactly the identity when they are many (free to
        # find out here; with magnitudes on an accelerator it would cost a synchronisation).
        active = _active(op, m)
        if active is not None:
            count = int(active.sum())
            if count == 0:
                return x.clone()
            if 2 * count <= x.shape[0]:
                out = x.clone()
                _apply_subset(x, op, m, active.nonzero().squeeze(1), interpolation, fill, out)
                return out
    return _run(x, op, m, interpolation, fill, torch.empty_like(x))


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

    Samples are grouped by op; each group is gathered with ``index_select``, transformed in
    one batched call and written back, so the cost is one vectorised call per distinct op.
    Reading the op ids costs one device synchronisation when they live on an accelerator.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        op_ids: integer ``[B]``, indices into ``op_names``.
        magnitudes: float ``[B]`` (or a number) in torchvision's units for each sample's op.
        op_names: the op names ``op_ids`` refer to; each one of :data:`OPS`.
        interpolation, fill: as for :func:`apply_op`.

    Returns:
        uint8 ``[B, 3, H, W]`` on ``images.device``, a new contiguous tensor.
    """
    images = _check_images(images)
    names = [_check_op(name) for name in op_names]
    batch = images.shape[0]
    if not isinstance(op_ids, Tensor) or op_ids.is_floating_point() or op_ids.dtype == torch.bool:
        got = f"dtype {op_ids.dtype}" if isinstance(op_ids, Tensor) else type(op_ids).__name__
        raise TypeError(f"`op_ids` must be an integer tensor of shape [B], got {got}")
    if op_ids.shape != (batch,):
        raise ValueError(f"`op_ids` must have shape [B] with B={batch}, got {list(op_ids.shape)}")
    m = _check_magnitude(magnitudes, batch)
    interpolation = _check_interpolation(interpolation)
    fill = _check_fill(fill)
    ids = op_ids.to("cpu", torch.int64)  # one synchronisation: the grouping needs the ids
    if batch and (int(ids.min()) < 0 or int(ids.max()) >= len(names)):
        raise ValueError(
            f"`op_ids` must lie in [0, {len(names) - 1}] (indices into `op_names`), "
            f"got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    x = images.contiguous()
    if x.numel() == 0:
        return x.clone()
    distinct = ids.unique().tolist()
    if len(distinct) == 1:
        return apply_op(x, names[distinct[0]], m, interpolation=interpolation, fill=fill)
    out = x.clone()
    for k in distinct:
        if names[k] != "Identity":
            idx = (ids == k).nonzero().squeeze(1)
            _apply_subset(x, names[k], m, idx, interpolation, fill, out)
    return out
