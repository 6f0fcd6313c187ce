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

from ff_lightning.augment._device import HostPack
from ff_lightning.augment.dispatch import kernels_for
from ff_lightning.augment.groups import plan_groups
from ff_lightning.augment.registry import (
    INTERPOLATIONS,
    REGISTRY,
    FillArg,
    OpDef,
    _Ctx,
    _run_identity,
)

__all__ = ["INTERPOLATIONS", "OPS", "REGISTRY", "OpDef", "apply_op", "apply_ops_grouped"]

OPS: tuple[str, ...] = tuple(REGISTRY)


# ==================================================================== validation
def _check_images(images: object, name: str = "images") -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"`{name}` must have dtype torch.uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"`{name}` must have shape [B, C, H, W] with C = 1 or 3, got {list(images.shape)}"
        )
    return images


def _check_op(op: object) -> str:
    if not isinstance(op, str) or op not in REGISTRY:
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
    """Magnitudes as float64 ``[B]`` on the host (small, per sample).

    Magnitudes on an accelerator are read back once (a synchronisation); the policies keep
    theirs on the host.
    """
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
    return magnitude.to("cpu", torch.float64)


# ==================================================================== grouping
def _apply_grouped(
    x: Tensor, ids: Tensor, m: Tensor, names: Sequence[str], ctx: _Ctx, dst: Tensor
) -> Tensor:
    """``dst[i] = op(names[ids[i]])(x[i], m[i])``; ``ids``/``m`` on the host; ``dst`` may be ``x``.

    Samples are grouped by kind of kernel on the host (:mod:`ff_lightning.augment.groups`);
    samples no group covers are copied. All groups' indices and per-sample parameters travel
    to the device in one pinned copy.
    """
    batch = x.shape[0]
    groups = plan_groups(ids, m, names, ctx)
    covered = sum(batch if g.idx is None else g.idx.shape[0] for g in groups)
    rest: Tensor | None = None
    if dst is not x and covered < batch:
        if not groups:
            return dst.copy_(x)
        mask = torch.ones(batch, dtype=torch.bool)
        for g in groups:
            mask[slice(None) if g.idx is None else g.idx] = False
        rest = mask.nonzero().squeeze(1)
    pack = HostPack()
    slots = [(pack.add(g.idx), [pack.add(t) for t in g.tensors]) for g in groups]
    rest_slot = pack.add(rest)
    on_device = pack.to(x.device)  # the one host-to-device copy of this call
    if rest is not None:
        _run_identity(ctx, x, dst, rest, on_device[rest_slot], (), ())
    for g, (idx_slot, param_slots) in zip(groups, slots, strict=True):
        g.run(ctx, x, dst, on_device[idx_slot], [on_device[s] for s in param_slots])
    return dst


def _context(images: Tensor, interpolation: object, fill: object) -> _Ctx:
    return _Ctx(
        height=images.shape[-2],
        width=images.shape[-1],
        channels=images.shape[1],
        interpolation=_check_interpolation(interpolation),
        fill=_check_fill(fill),
        kernels=kernels_for(images.device),  # the backend, chosen once per call
    )


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
        magnitude: float tensor ``[B]`` on any device (read back to the host once when not
            there), or a number / 0-d tensor used for every image; in torchvision's units
            per op (see the module docstring).
        interpolation: ``"nearest"`` or ``"bilinear"``, for the geometric ops.
        fill: colour of the area a geometric op uncovers: a number, 3 numbers, or ``None``
            (torchvision's ``fill=None``: zero padding; differs from ``0`` only for bilinear).

    Returns:
        uint8 ``[B, 3, H, W]`` on ``images.device``, a new contiguous tensor.
    """
    images = _check_images(images)
    op = _check_op(op)
    ctx = _context(images, interpolation, fill)
    m = _check_magnitude(magnitude, images.shape[0])
    x = images.contiguous()
    if x.numel() == 0:
        return x.clone()
    ids = torch.zeros(x.shape[0], dtype=torch.int64)
    return _apply_grouped(x, ids, m, (op,), ctx, torch.empty_like(x))


def apply_ops_grouped(
    images: Tensor,
    op_ids: Tensor,
    magnitudes: Tensor,
    op_names: Sequence[str] = OPS,
    *,
    interpolation: str = "nearest",
    fill: FillArg = 0,
    out: Tensor | None = None,
) -> Tensor:
    """Apply op ``op_names[op_ids[i]]`` with magnitude ``magnitudes[i]`` to image ``i``.

    Samples are grouped by kernel on the host (:mod:`ff_lightning.augment.groups`: one
    lookup-table group, one affine and one shift group, one group per other op); each group
    is transformed in one vectorised call (cache-sized chunks on CPU) and written to its rows
    of the output, with one host-to-device copy per call. Op ids and
    magnitudes on an accelerator are read back once (a synchronisation); keep them on the
    host.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        op_ids: integer ``[B]``, indices into ``op_names``.
        magnitudes: float ``[B]`` (or a number) in torchvision's units for each sample's op.
        op_names: the op names ``op_ids`` refer to; each one of :data:`OPS`.
        interpolation, fill: as for :func:`apply_op`.
        out: contiguous uint8 tensor shaped like ``images`` to write into; may be
            ``images`` itself (in place). Default: a new tensor.

    Returns:
        uint8 ``[B, 3, H, W]`` on ``images.device``: ``out``, or a new contiguous tensor.
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
    ctx = _context(images, interpolation, fill)
    ids = op_ids.to("cpu", torch.int64)  # one synchronisation if on a device: grouping needs them
    if batch and (int(ids.min()) < 0 or int(ids.max()) >= len(names)):
        raise ValueError(
            f"`op_ids` must lie in [0, {len(names) - 1}] (indices into `op_names`), "
            f"got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    if out is not None:
        _check_images(out, "out")
        if out.shape != images.shape or out.device != images.device or not out.is_contiguous():
            raise ValueError(
                f"`out` must be a contiguous tensor shaped {list(images.shape)} on "
                f"{images.device}, got {list(out.shape)} on {out.device}"
            )
    x = images if out is images else images.contiguous()
    if x.numel() == 0:
        return x.clone() if out is None else out
    return _apply_grouped(x, ids, m, names, ctx, torch.empty_like(x) if out is None else out)
