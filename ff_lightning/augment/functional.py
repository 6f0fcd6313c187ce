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

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ff_lightning.augment import _color, _geometry
from ff_lightning.augment._device import HostPack

__all__ = ["INTERPOLATIONS", "OPS", "REGISTRY", "OpDef", "apply_op", "apply_ops_grouped"]

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear")

FillArg = float | Sequence[float] | None

# Values (B*C*H*W) per chunk when running on CPU; see `_dense`.
_CPU_CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class _Ctx:
    """What every op of a call shares: image size, interpolation, fill."""

    height: int
    width: int
    channels: int
    interpolation: str
    fill: list[float] | None


# ==================================================================== the op registry
# Group runners: ``run(ctx, src, dst, idx, idx_dev, params)`` writes ``op(src[idx])`` into
# ``dst[idx]`` (``idx`` None: every sample; ``idx`` int64 on the host, ``idx_dev`` the same
# on the images' device; ``params`` the op's per-sample tensors on the device, one row per
# selected sample). ``dst`` may be ``src`` (in-place).
Runner = Callable[
    [_Ctx, Tensor, Tensor, "Tensor | None", "Tensor | None", tuple[Tensor, ...]], None
]


@dataclass(frozen=True)
class OpDef:
    """One auto-augment op: everything the package knows about it, in one place.

    Attributes:
        name: torchvision's op name.
        kind: ``"identity"``, ``"geometric"`` or ``"colour"``.
        cost: rough single-thread CPU time per 224 px image relative to Brightness, from
            ``recipes/benchmark_augment.py --ops`` with the batched kernels (used to route
            the costliest samples; see ``Policy.estimate_cost``).
        prepare: host float64 magnitudes ``[G]`` -> the kernel's per-sample host tensors.
        run: the group runner (see above).
        noop: host float64 magnitudes -> bool mask of samples on which the op is exactly
            the identity (``None``: never, or not worth knowing).
        reference: torchvision v2's kernel on one ``[3, H, W]`` image with a Python-float
            magnitude, as ``_AutoAugmentBase._apply_image_or_video_transform`` calls it.
    """

    name: str
    kind: str
    cost: float
    prepare: Callable[[Tensor, _Ctx], tuple[Tensor, ...]]
    run: Runner
    noop: Callable[[Tensor], Tensor] | None
    reference: Callable[[Tensor, float, str, FillArg], Tensor]


def _rows(images: Tensor) -> Tensor:
    """``images`` viewed as ``[B, N]`` rows of the widest of int32/uint8 that fits.

    ``index_select``/``index_copy_`` copy element by element on CPU; on 4-byte elements
    they are about five times faster than on bytes.
    """
    rows = images.view(images.shape[0], -1)
    if rows.shape[1] % 4 == 0 and rows.storage_offset() % 4 == 0:
        return rows.view(torch.int32)
    return rows


def _select(images: Tensor, idx: Tensor) -> Tensor:
    return _rows(images).index_select(0, idx).view(torch.uint8).view(-1, *images.shape[1:])


def _dense(kernel: Callable[..., Tensor]) -> Runner:
    """A group runner for a kernel ``kernel(images, out, *params)`` on contiguous batches.

    On CPU the kernels are memory-bound: float32 temporaries of a whole batch (38 MB for
    64 images of 224x224) fall out of the caches and, above glibc's mmap threshold, are
    page-faulted in afresh on every call. Chunks of about ``_CPU_CHUNK_ELEMENTS`` values
    keep every temporary (and the gathered rows of a group) cache-resident. Accelerators
    get the whole group at once. Gathered rows are transformed in place.
    """

    def run(ctx, src, dst, idx, idx_dev, params) -> None:
        n = src.shape[0] if idx is None else idx.shape[0]
        per = n
        if src.device.type == "cpu":
            per = max(1, _CPU_CHUNK_ELEMENTS // src[0].numel())
        for start in range(0, n, per):
            stop = min(start + per, n)
            ps = params if per == n else tuple(p[start:stop] for p in params)
            if idx is None:
                if per == n:
                    kernel(src, dst, *ps)
                else:
                    kernel(src[start:stop], dst[start:stop], *ps)
                continue
            ii = idx_dev if per == n else idx_dev[start:stop]
            part = _select(src, ii)
            kernel(part, part, *ps)
            _rows(dst).index_copy_(0, ii, _rows(part))

    return run


def _fill_u8(fill: list[float] | None, channels: int) -> list[int]:
    """The fill colour as torchvision lands it in uint8 for ``nearest`` (clamped, rounded)."""
    values = [0.0] if fill is None else fill
    if len(values) != channels:
        values = values[:1]  # one number for every channel (a grayscale image's only channel)
    t = torch.tensor(values, dtype=torch.float32).clamp_(0, 255).round_()
    return t.to(torch.uint8).expand(channels).tolist()


def _geometric_fill(ctx: _Ctx) -> tuple[Tensor, ...]:
    """The fill the warp kernels take: uint8 ``[C]`` (nearest) or float32 ``[C]`` (bilinear)."""
    if ctx.interpolation == "nearest":
        return (torch.tensor(_fill_u8(ctx.fill, ctx.channels), dtype=torch.uint8),)
    if ctx.fill is None:
        return ()
    values = ctx.fill if len(ctx.fill) == ctx.channels else ctx.fill[:1]
    fill = torch.tensor(values, dtype=torch.float32).clamp_(0, 255)
    return (fill.expand(ctx.channels).contiguous(),)


def _prepare_warp(matrix: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
    factors = _geometry.grid_factors(matrix, ctx.height, ctx.width)
    terms = _geometry.grid_terms(factors, ctx.height, ctx.width)
    return (factors, *terms, *_geometric_fill(ctx))


def _prepare_shear(axis: int) -> Callable[[Tensor, _Ctx], tuple[Tensor, ...]]:
    def prepare(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
        zeros = torch.zeros_like(m)
        shear = _geometry.degrees(_geometry.atan(m))
        sx, sy = (shear, zeros) if axis == 0 else (zeros, shear)
        # torchvision's auto-augment shears about pixel (0, 0): centre [0, 0] in pixels.
        matrix = _geometry.inverse_affine(zeros, sx, sy, -0.5 * ctx.width, -0.5 * ctx.height)
        return _prepare_warp(matrix, ctx)

    return prepare


def _prepare_rotate(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
    zeros = torch.zeros_like(m)
    # rotate_image takes angle % 360 and passes -angle to the affine matrix.
    matrix = _geometry.inverse_affine(-torch.remainder(m, 360.0), zeros, zeros, 0.0, 0.0)
    return _prepare_warp(matrix, ctx)


def _run_warp(ctx, src, dst, idx, idx_dev, params) -> None:
    factors, xt, yt, t2, *fill = params
    with _geometry.float32_math(src.device):
        if ctx.interpolation == "nearest":
            if src.device.type == "cpu":
                rows = range(src.shape[0]) if idx is None else idx.tolist()
                _geometry.warp_nearest_rows(src, dst, rows, factors, fill[0])
            else:
                _geometry.warp_nearest_batch(src, dst, idx_dev, (xt, yt, t2), fill[0])
            return
        fill_t = fill[0] if fill else None

        def kernel(images: Tensor, out: Tensor, *terms: Tensor) -> Tensor:
            return _geometry.warp_bilinear(images, out, terms, fill_t)

        _dense(kernel)(ctx, src, dst, idx, idx_dev, (xt, yt, t2))


def _prepare_translate(axis: int) -> Callable[[Tensor, _Ctx], tuple[Tensor, ...]]:
    def prepare(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
        shifts = torch.zeros(m.shape[0], 2, dtype=torch.int64)
        shifts[:, axis] = torch.trunc(m).to(torch.int64)
        fill = torch.tensor(_fill_u8(ctx.fill, ctx.channels), dtype=torch.uint8)
        return shifts, fill

    return prepare


def _run_translate(ctx, src, dst, idx, idx_dev, params) -> None:
    shifts, fill = params
    if src.device.type == "cpu":
        rows = range(src.shape[0]) if idx is None else idx.tolist()
        pairs = [tuple(s) for s in shifts.tolist()]
        _geometry.shift_rows(src, dst, rows, pairs, fill.tolist())
    else:
        _geometry.shift_batch(src, dst, idx_dev, shifts, fill)


def _prepare_blend(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
    factor = (1.0 + m).clamp_(min=0.0)  # float64 like torchvision's Python floats
    alpha = 1.0 - factor
    return factor.to(torch.float32), alpha.to(torch.float32)


def _prepare_posterize(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
    bits = torch.trunc(m).clamp_(0, 8).to(torch.int64)
    return (((255 << (8 - bits)) & 255).to(torch.uint8),)


def _prepare_solarize(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
    # torchvision compares the uint8 pixels with float(255 * m) cast to float32.
    threshold = torch.ceil((255.0 * m).to(torch.float32))
    flip = (threshold <= 255).to(torch.uint8).mul_(255)
    return threshold.clamp_(0, 255).to(torch.uint8), flip


def _no_params(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
    return ()


def _run_identity(ctx, src, dst, idx, idx_dev, params) -> None:
    if dst is src:
        return
    if idx is None:
        dst.copy_(src)
    else:
        _rows(dst).index_copy_(0, idx_dev, _rows(src).index_select(0, idx_dev))


def _zero(m: Tensor) -> Tensor:
    return m == 0


def _zero_shift(m: Tensor) -> Tensor:
    return torch.trunc(m) == 0


def _zero_angle(m: Tensor) -> Tensor:
    return torch.remainder(m, 360.0) == 0


def _tv():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    return TF, InterpolationMode


def _ref_identity(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
    return image


def _ref_shear(axis: int):
    def ref(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
        TF, Mode = _tv()
        shear = [0.0, 0.0]
        shear[axis] = math.degrees(math.atan(m))
        return TF.affine_image(image, 0.0, [0, 0], 1.0, shear, Mode(interpolation), fill, [0, 0])

    return ref


def _ref_translate(axis: int):
    def ref(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
        TF, Mode = _tv()
        t = [0, 0]
        t[axis] = int(m)
        return TF.affine_image(image, 0.0, t, 1.0, [0.0, 0.0], Mode(interpolation), fill)

    return ref


def _ref_rotate(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
    TF, Mode = _tv()
    return TF.rotate_image(image, m, Mode(interpolation), fill=fill)


def _ref(fn_name: str, convert: Callable[[float], float | int] | None = None):
    def ref(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
        fn = getattr(_tv()[0], fn_name)
        return fn(image) if convert is None else fn(image, convert(m))

    return ref


def _op(name, kind, cost, prepare, run, noop, reference) -> tuple[str, OpDef]:
    return name, OpDef(name, kind, cost, prepare, run, noop, reference)


#: Every op, in torchvision's order; ``OPS`` is its tuple of names.
REGISTRY: dict[str, OpDef] = dict(
    [
        _op("Identity", "identity", 0.0, _no_params, _run_identity, None, _ref_identity),
        _op("ShearX", "geometric", 2.0, _prepare_shear(0), _run_warp, _zero, _ref_shear(0)),
        _op("ShearY", "geometric", 2.0, _prepare_shear(1), _run_warp, _zero, _ref_shear(1)),
        _op(
            "TranslateX",
            "geometric",
            0.5,
            _prepare_translate(0),
            _run_translate,
            _zero_shift,
            _ref_translate(0),
        ),
        _op(
            "TranslateY",
            "geometric",
            0.5,
            _prepare_translate(1),
            _run_translate,
            _zero_shift,
            _ref_translate(1),
        ),
        _op("Rotate", "geometric", 2.0, _prepare_rotate, _run_warp, _zero_angle, _ref_rotate),
        _op(
            "Brightness",
            "colour",
            1.0,
            _prepare_blend,
            _dense(lambda x, out, f, a: _color.brightness(x, f, out)),
            _zero,
            _ref("adjust_brightness_image", lambda m: 1.0 + m),
        ),
        _op(
            "Color",
            "colour",
            1.8,
            _prepare_blend,
            _dense(lambda x, out, f, a: _color.color(x, f, a, out)),
            _zero,
            _ref("adjust_saturation_image", lambda m: 1.0 + m),
        ),
        _op(
            "Contrast",
            "colour",
            2.0,
            _prepare_blend,
            _dense(lambda x, out, f, a: _color.contrast(x, f, a, out)),
            _zero,
            _ref("adjust_contrast_image", lambda m: 1.0 + m),
        ),
        _op(
            "Sharpness",
            "colour",
            3.6,
            _prepare_blend,
            _dense(lambda x, out, f, a: _color.sharpness(x, a, out)),
            _zero,
            _ref("adjust_sharpness_image", lambda m: 1.0 + m),
        ),
        _op(
            "Posterize",
            "colour",
            0.2,
            _prepare_posterize,
            _dense(_color.posterize),
            None,
            _ref("posterize_image", int),
        ),
        _op(
            "Solarize",
            "colour",
            0.6,
            _prepare_solarize,
            _dense(_color.solarize),
            None,
            _ref("solarize_image", lambda m: 255.0 * m),
        ),
        _op(
            "AutoContrast",
            "colour",
            1.8,
            _no_params,
            _dense(_color.autocontrast),
            None,
            _ref("autocontrast_image"),
        ),
        _op(
            "Equalize",
            "colour",
            4.1,
            _no_params,
            _dense(_color.equalize),
            None,
            _ref("equalize_image"),
        ),
        _op(
            "Invert", "colour", 0.15, _no_params, _dense(_color.invert), None, _ref("invert_image")
        ),
    ]
)

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

    Samples are grouped by op on the host; samples on which an op is exactly the identity
    join the identity group when they are many. All groups' indices and per-sample
    parameters travel to the device in one pinned copy.
    """
    batch = x.shape[0]
    distinct = ids.unique().tolist()
    groups: list[tuple[OpDef, Tensor | None]] = []
    covered = 0
    for k in distinct:
        op = REGISTRY[names[k]]
        if op.kind == "identity":
            continue
        idx = None if len(distinct) == 1 else (ids == k).nonzero().squeeze(1)
        if op.noop is not None:
            mk = m if idx is None else m[idx]
            active = ~op.noop(mk)
            count = int(active.sum())
            if count == 0:
                continue
            if 2 * count <= mk.shape[0]:  # few active: restrict the group to them
                idx = active.nonzero().squeeze(1) if idx is None else idx[active]
        groups.append((op, idx))
        covered += batch if idx is None else idx.shape[0]
    rest: Tensor | None = None
    if dst is not x and covered < batch:
        if not groups:
            return dst.copy_(x)
        mask = torch.ones(batch, dtype=torch.bool)
        for _, idx in groups:
            mask[slice(None) if idx is None else idx] = False
        rest = mask.nonzero().squeeze(1)
    pack = HostPack()
    slots = []
    for op, idx in groups:
        mk = m if idx is None else m[idx]
        slots.append((pack.add(idx), [pack.add(t) for t in op.prepare(mk, ctx)]))
    rest_slot = pack.add(rest)
    on_device = pack.to(x.device)  # the one host-to-device copy of this call
    if rest is not None:
        _run_identity(ctx, x, dst, rest, on_device[rest_slot], ())
    for (op, idx), (idx_slot, param_slots) in zip(groups, slots, strict=True):
        params = tuple(on_device[s] for s in param_slots)
        op.run(ctx, x, dst, idx, on_device[idx_slot], params)
    return dst


def _context(images: Tensor, interpolation: object, fill: object) -> _Ctx:
    return _Ctx(
        height=images.shape[-2],
        width=images.shape[-1],
        channels=images.shape[1],
        interpolation=_check_interpolation(interpolation),
        fill=_check_fill(fill),
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

    Samples are grouped by op on the host; each group is transformed in one vectorised
    call (cache-sized chunks on CPU) and written to its rows of the output, so the cost is
    one vectorised call per distinct op and one host-to-device copy per call. Op ids and
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
