"""The op registry: one entry per auto-augment op, everything the kernels know about it.

Each :class:`OpDef` holds the op's name, kind (identity / geometric / colour), relative CPU
cost (routing's "costliest first" reads it), how its per-sample parameters are prepared on the
host, the kernel that runs a group of samples, the test for "this magnitude is the identity"
and torchvision's per-image reference (tests, and the ``apply_one_backend="torchvision"``
option). :mod:`ff_lightning.augment.functional` validates; :mod:`ff_lightning.augment.groups`
groups a slot's samples by kernel and calls these entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ff_lightning.augment import _color, _geometry  # noqa: F401 - _color registers the tables
from ff_lightning.augment.reference import (
    _ref,
    _ref_identity,
    _ref_rotate,
    _ref_shear,
    _ref_translate,
)
from ff_lightning.augment.runners import Runner, _Ctx, _rows, _run_identity, _select

__all__ = [
    "INTERPOLATIONS",
    "REGISTRY",
    "FillArg",
    "OpDef",
    "Runner",
    "_Ctx",
    "_rows",
    "_run_identity",
    "_select",
]

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear")

FillArg = float | Sequence[float] | None

# ==================================================================== the op registry
# Table builders: ``lut(stats, *params)`` (``stats``: ``_color.TableStats``); see ``OpDef.lut``.
# The kernels named below register in ``runners`` (group runners) and ``_color`` (tables).
LutBuilder = Callable[..., Tensor]


@dataclass(frozen=True)
class OpDef:
    """One auto-augment op: everything the package knows about it, in one place.

    Attributes:
        name: torchvision's op name.
        kind: ``"identity"``, ``"geometric"`` or ``"colour"``.
        cost: rough single-thread CPU time per 224 px image relative to Brightness with the
            native CPU loops, where DataLoader workers run (measured one op at a time on a
            batch of 32 on the 2-core development machine; used to route the costliest
            samples, see ``Policy.estimate_cost``). With the torch kernels Sharpness and
            Equalize cost relatively more.
        prepare: host float64 magnitudes ``[G]`` -> the kernel's per-sample host tensors.
        run: the name of the op's group runner in the kernel table
            (:mod:`ff_lightning.augment.dispatch`; ``ctx.kernels[run]`` gives the runner for
            the call's device and backend), or a runner called on every device as it is.
        noop: magnitude (a Python float) -> whether the op is exactly the identity there
            (``None``: never, or not worth knowing).
        reference: torchvision v2's kernel on one ``[3, H, W]`` image with a Python-float
            magnitude, as ``_AutoAugmentBase._apply_image_or_video_transform`` calls it.
        lut: for ops that map each pixel value through a per-sample (or per-channel) table:
            the name of the table builder in the kernel table (or the builder itself),
            ``lut(stats, *params)`` -> uint8 ``[n, 1 or C, 256]`` (see
            :mod:`ff_lightning.augment._color`). Every such op of a slot is applied in one
            lookup (``ff_lightning.augment.groups``): always when ``run`` is ``None``, and,
            for ops that also have a direct kernel, where the lookup runs natively
            (``ctx.kernels.is_native("lut.group")``: cheaper than torch's table gather,
            dearer than the native lookup).
        family: ops that share ``run`` ("affine": Shear/Rotate, "shift": Translate): samples
            of every op of a family run as one group, their per-sample tensors concatenated.
        per_sample: how many of the leading prepared tensors have one row per sample (the
            rest, the fill colour, are shared); ``None``: all of them.
    """

    name: str
    kind: str
    cost: float
    prepare: Callable[[Tensor, _Ctx], tuple[Tensor, ...]]
    run: str | Runner | None
    noop: Callable[[float], bool] | None
    reference: Callable[[Tensor, float, str, FillArg], Tensor]
    lut: str | LutBuilder | None = None
    family: str | None = None
    per_sample: int | None = None


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


def _prepare_translate(axis: int) -> Callable[[Tensor, _Ctx], tuple[Tensor, ...]]:
    def prepare(m: Tensor, ctx: _Ctx) -> tuple[Tensor, ...]:
        shifts = torch.zeros(m.shape[0], 2, dtype=torch.int64)
        shifts[:, axis] = torch.trunc(m).to(torch.int64)
        fill = torch.tensor(_fill_u8(ctx.fill, ctx.channels), dtype=torch.uint8)
        return shifts, fill

    return prepare


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


def _zero(m: float) -> bool:
    return m == 0


def _zero_shift(m: float) -> bool:
    return math.trunc(m) == 0


def _zero_angle(m: float) -> bool:
    return m % 360.0 == 0  # Python's % has torch.remainder's sign convention


def _op(name, kind, cost, prepare, run, noop, reference, **extra) -> tuple[str, OpDef]:
    return name, OpDef(name, kind, cost, prepare, run, noop, reference, **extra)


def _lut_op(name, cost, prepare, lut, noop, reference) -> tuple[str, OpDef]:
    return _op(name, "colour", cost, prepare, None, noop, reference, lut=lut)


_AFFINE = {"family": "affine", "per_sample": 4}  # factors, x terms, y terms, offsets
_SHIFT = {"family": "shift", "per_sample": 1}  # (tx, ty)

#: Every op, in torchvision's order; ``OPS`` is its tuple of names.
REGISTRY: dict[str, OpDef] = dict(
    [
        _op("Identity", "identity", 0.0, _no_params, "Identity", None, _ref_identity),
        _op(
            "ShearX",
            "geometric",
            2.5,
            _prepare_shear(0),
            "affine",
            _zero,
            _ref_shear(0),
            **_AFFINE,
        ),
        _op(
            "ShearY",
            "geometric",
            2.6,
            _prepare_shear(1),
            "affine",
            _zero,
            _ref_shear(1),
            **_AFFINE,
        ),
        _op(
            "TranslateX",
            "geometric",
            1.3,
            _prepare_translate(0),
            "shift",
            _zero_shift,
            _ref_translate(0),
            **_SHIFT,
        ),
        _op(
            "TranslateY",
            "geometric",
            1.3,
            _prepare_translate(1),
            "shift",
            _zero_shift,
            _ref_translate(1),
            **_SHIFT,
        ),
        _op(
            "Rotate",
            "geometric",
            2.5,
            _prepare_rotate,
            "affine",
            _zero_angle,
            _ref_rotate,
            **_AFFINE,
        ),
        _op(
            "Brightness",
            "colour",
            1.0,
            lambda m, ctx: _prepare_blend(m, ctx)[:1],
            "Brightness",
            _zero,
            _ref("adjust_brightness_image", lambda m: 1.0 + m),
            lut="Brightness.table",
        ),
        _op(
            "Color",
            "colour",
            0.8,
            _prepare_blend,
            "Color",
            _zero,
            _ref("adjust_saturation_image", lambda m: 1.0 + m),
        ),
        _lut_op(
            "Contrast",
            1.2,
            _prepare_blend,
            "Contrast.table",
            _zero,
            _ref("adjust_contrast_image", lambda m: 1.0 + m),
        ),
        _op(
            "Sharpness",
            "colour",
            2.4,
            _prepare_blend,
            "Sharpness",
            _zero,
            _ref("adjust_sharpness_image", lambda m: 1.0 + m),
        ),
        _op(
            "Posterize",
            "colour",
            0.9,
            _prepare_posterize,
            "Posterize",
            None,
            _ref("posterize_image", int),
            lut="Posterize.table",
        ),
        _op(
            "Solarize",
            "colour",
            1.1,
            _prepare_solarize,
            "Solarize",
            None,
            _ref("solarize_image", lambda m: 255.0 * m),
            lut="Solarize.table",
        ),
        _lut_op(
            "AutoContrast",
            2.3,
            _no_params,
            "AutoContrast.table",
            None,
            _ref("autocontrast_image"),
        ),
        _lut_op("Equalize", 2.2, _no_params, "Equalize.table", None, _ref("equalize_image")),
        _op(
            "Invert",
            "colour",
            1.1,
            _no_params,
            "Invert",
            None,
            _ref("invert_image"),
            lut="Invert.table",
        ),
    ]
)
