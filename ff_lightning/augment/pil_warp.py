"""Batched affine warps with Pillow's ``Image.transform`` semantics, each sample its own matrix.

timm's geometric ops (and DeepAA's) call ``img.transform(size, Image.AFFINE, data, resample,
fillcolor=...)`` or ``img.rotate(...)``. Pillow maps output pixel ``(x, y)`` to the input point
``(a0 (x + .5) + a1 (y + .5) + a2, a3 (x + .5) + a4 (y + .5) + a5)`` (``data`` = ``a``) and:

- ``bilinear`` (2) / ``bicubic`` (3): a point outside ``[0, W) x [0, H)`` keeps the fill colour;
  inside, the taps are clamped to the image (edge pixels repeat), the cubic is Pillow's
  ``a = -1`` kernel in Horner form (torch's ``grid_sample`` uses ``a = -0.75``), all in float64;
  bilinear truncates to uint8, bicubic clamps then truncates.
- ``nearest`` (0): no shear (``a1 == a3 == 0``): per-column and per-row positions from running
  float64 sums; otherwise 16.16 fixed-point positions. Both integer plans are made on the host
  (a few numbers per sample) exactly as Pillow makes them.

:func:`warp` runs the native loop on host images (``_pil_native``) and torch elsewhere; both
perform the same IEEE operations in the same order, so they give the same bytes (the tests
compare them, and both against Pillow). The matrices are built on the host by
:func:`shear`, :func:`translate`, :func:`rotate` and :func:`crop_resize` with Pillow's own
float arithmetic. Nothing here reads a device value: plans come from host tensors and travel
with :class:`~ff_lightning.augment._device.HostPack` in one copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ff_lightning.augment import _pil_native
from ff_lightning.augment._device import HostPack
from ff_lightning.augment.dispatch import kernels_for

__all__ = [
    "IDENTITY",
    "RESAMPLE",
    "crop_resize",
    "nearest_plan",
    "rotate",
    "shear",
    "translate",
    "WarpGroup",
    "warp",
]

#: Pillow's resampling ids by name (``Image.Resampling``): the ones ``transform`` accepts.
RESAMPLE: dict[str, int] = {"nearest": 0, "bilinear": 2, "bicubic": 3}

IDENTITY: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

_AXIS = -(2**63)  # marks the axis-aligned nearest plan (the C side reads INT64_MIN)
#: Pixels per torch chunk: float64 temporaries of a chunk stay in the caches on CPU and under
#: a few hundred MB on an accelerator.
_CHUNK_PIXELS = {"cpu": 1 << 16, "other": 1 << 20}


# ==================================================================== matrices (host, Pillow's math)
def shear(factor: float, axis: int) -> tuple[float, ...]:
    """``transform(AFFINE, (1, f, 0, 0, 1, 0))`` (x) or ``(1, 0, 0, f, 1, 0)`` (y): about pixel (0, 0)."""
    return (1.0, factor, 0.0, 0.0, 1.0, 0.0) if axis == 0 else (1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate(tx: float, ty: float) -> tuple[float, ...]:
    """``transform(AFFINE, (1, 0, tx, 0, 1, ty))``: output pixel ``x`` reads input ``x + tx``."""
    return (1.0, 0.0, tx, 0.0, 1.0, ty)


def rotate(degrees: float, width: int, height: int) -> tuple[float, ...]:
    """The matrix ``Image.rotate(degrees)`` (about the centre, no expand) hands to ``transform``.

    Pillow short-cuts 0, 180 and (square images) 90/270 degrees with copies and transposes; the
    warp of these matrices gives the same pixels (its positions are exact there).
    """
    angle = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    m = [cos, sin, 0.0, round(-math.sin(angle), 15), cos, 0.0]
    cx, cy = width / 2, height / 2
    # The centre moved by the rotation, then back: Pillow's `transform(-cx, -cy)` + centre.
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
    return tuple(m)


def crop_resize(left: float, top: float, box_w: float, box_h: float, width: int, height: int):
    """Resample the box ``(left, top, box_w, box_h)`` to the whole ``width x height`` image (an
    affine ``EXTENT`` transform: ``(box_w / width, 0, left, 0, box_h / height, top)``)."""
    return (box_w / width, 0.0, float(left), 0.0, box_h / height, float(top))


# ==================================================================== nearest plans (host)
def _fix(v: float) -> int:
    """Pillow's 16.16 ``FIX``: ``FLOOR(v * 65536.0 + 0.5)``."""
    return math.floor(v * 65536.0 + 0.5)


def nearest_plan(coef: Sequence[float]) -> tuple[int, ...]:
    """The six int64 terms of the nearest warp of one matrix.

    Axis-aligned (``a1 == a3 == 0``): ``(_AXIS, 0, ...)``, the positions come from running sums
    (:func:`_axis_tables`). Otherwise Pillow's fixed-point terms ``FIX(a0), FIX(a1), FIX(a3),
    FIX(a4), FIX(a2 + a0/2 + a1/2), FIX(a5 + a3/2 + a4/2)``: ``x_in = (t4 + y t1 + x t0) >> 16``.
    """
    a0, a1, a2, a3, a4, a5 = (float(v) for v in coef)
    if a1 == 0 and a3 == 0:
        return (_AXIS, 0, 0, 0, 0, 0)
    return (
        _fix(a0),
        _fix(a1),
        _fix(a3),
        _fix(a4),
        _fix(a2 + a0 * 0.5 + a1 * 0.5),
        _fix(a5 + a3 * 0.5 + a4 * 0.5),
    )


def _axis_tables(coef: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """int64 ``[n, W]`` columns and ``[n, H]`` rows read by the axis-aligned nearest warp (-1:
    outside): ``COORD`` of the running float64 sums ``a2 + a0/2 + k a0`` (Pillow adds ``a0`` once
    per column, so the sums are accumulated the same way here)."""
    rows_x, rows_y = [], []
    for a0, _, a2, _, a4, a5 in coef.tolist():
        xs = np.add.accumulate(np.concatenate([[a2 + a0 * 0.5], np.full(width - 1, a0)]))
        ys = np.add.accumulate(np.concatenate([[a5 + a4 * 0.5], np.full(height - 1, a4)]))
        rows_x.append(np.where((xs >= 0) & (xs < width), np.floor(xs), -1))
        rows_y.append(np.where((ys >= 0) & (ys < height), np.floor(ys), -1))
    return (
        torch.from_numpy(np.asarray(rows_x, dtype=np.int64)).view(-1, width),
        torch.from_numpy(np.asarray(rows_y, dtype=np.int64)).view(-1, height),
    )


# ==================================================================== torch kernels (any device)
def _cubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    """Pillow's ``BICUBIC`` macro, operation by operation (float64)."""
    p2 = v3 - v1  # -v1 + v3 (same rounding: one exact negation, one add)
    p3 = (v1 - v2) * 2 + v3 - v4
    p4 = v2 - v1 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _coords(a: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """float64 ``[n, H, W]`` input positions: ``(a0 (x+.5) + a1 (y+.5)) + a2`` (Pillow's order)."""
    dev = a.device
    xin = torch.arange(width, dtype=torch.float64, device=dev).add_(0.5).view(1, 1, width)
    yin = torch.arange(height, dtype=torch.float64, device=dev).add_(0.5).view(1, height, 1)
    c = a.view(-1, 6, 1, 1)
    xs = (c[:, 0] * xin + c[:, 1] * yin) + c[:, 2]
    ys = (c[:, 3] * xin + c[:, 4] * yin) + c[:, 5]
    return xs, ys


def _interp(part: Tensor, a: Tensor, mode: int, fill: Tensor) -> Tensor:
    """Bilinear or bicubic warp of ``part`` uint8 ``[n, C, H, W]`` with float64 ``a [n, 6]``."""
    n, ch, height, width = part.shape
    xs, ys = _coords(a, height, width)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    xs, ys = xs - 0.5, ys - 0.5
    ix, iy = torch.floor(xs), torch.floor(ys)
    dx, dy = (xs - ix).unsqueeze(1), (ys - iy).unsqueeze(1)
    ix, iy = ix.to(torch.int64), iy.to(torch.int64)
    flat = part.reshape(n, ch, height * width)

    def tap(r: Tensor, c: Tensor) -> Tensor:
        index = (r * width + c).view(n, 1, height * width).expand(n, ch, height * width)
        return flat.gather(2, index).view(n, ch, height, width).to(torch.float64)

    taps = (0, 1) if mode == 2 else (-1, 0, 1, 2)
    cols = [ix.add(k).clamp_(0, width - 1) for k in taps]
    rows = [iy.add(k).clamp_(0, height - 1) for k in taps]
    if mode == 2:
        line = []
        for r in rows:
            left, right = tap(r, cols[0]), tap(r, cols[1])
            line.append(left + (right - left) * dx)
        value = (line[0] + (line[1] - line[0]) * dy).clamp_(0, 255)  # a no-op: a convex mix
    else:
        line = [_cubic(*(tap(r, c) for c in cols), dx) for r in rows]
        value = _cubic(*line, dy).clamp_(0, 255)
    out = value.to(torch.uint8)  # truncation toward zero, as Pillow's (UINT8) casts
    return torch.where(inside.unsqueeze(1), out, fill.view(1, ch, 1, 1))


def _nearest(part: Tensor, index: Tensor, inside: Tensor, fill: Tensor) -> Tensor:
    n, ch, height, width = part.shape
    index = index.clamp(0, height * width - 1).view(n, 1, -1).expand(n, ch, height * width)
    out = part.reshape(n, ch, height * width).gather(2, index).view(n, ch, height, width)
    return torch.where(inside.view(n, 1, height, width), out, fill.view(1, ch, 1, 1))


def _nearest_fixed(part: Tensor, terms: Tensor, fill: Tensor) -> Tensor:
    n, _, height, width = part.shape
    dev = part.device
    t = terms.view(n, 6, 1, 1)
    y = torch.arange(height, dtype=torch.int64, device=dev).view(1, height, 1)
    x = torch.arange(width, dtype=torch.int64, device=dev).view(1, 1, width)
    xi = (t[:, 4] + y * t[:, 1] + x * t[:, 0]) >> 16  # arithmetic shift: floor, as Pillow
    yi = (t[:, 5] + y * t[:, 3] + x * t[:, 2]) >> 16
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    return _nearest(part, yi * width + xi, inside, fill)


def _nearest_axis(part: Tensor, cols: Tensor, rows: Tensor, fill: Tensor) -> Tensor:
    n, _, height, width = part.shape
    inside = (rows.view(n, height, 1) >= 0) & (cols.view(n, 1, width) >= 0)
    return _nearest(part, rows.view(n, height, 1) * width + cols.view(n, 1, width), inside, fill)


# ==================================================================== entry points
class WarpGroup:
    """Rows of one op slot to warp, planned on the host; their host tensors join ``pack`` (the
    slot's one host-to-device copy) and :meth:`run` applies them once the pack is on the device.

    Args:
        rows: host int64 ``[n]`` batch rows (distinct), or None for all rows.
        coef: host float64 ``[n, 6]``: Pillow's affine data per row.
        mode: ``n`` Pillow resampling ids (0 nearest, 2 bilinear, 3 bicubic).
        height, width: image size; ``device``: the images' device (host images take the native
            loop when it is loaded).
        fill_slot: the pack slot of the uint8 ``[C]`` fill colour.
    """

    def __init__(
        self,
        rows: Tensor | None,
        coef: Tensor,
        mode: Sequence[int],
        height: int,
        width: int,
        device: torch.device,
        pack: HostPack,
        fill_slot: int,
    ) -> None:
        native = kernels_for(device).backend == "native"  # the call's backend
        self.rows, self.coef, self.fill_slot, self.native = rows, coef, fill_slot, native
        self.plans = torch.tensor(
            [
                nearest_plan(c) if m == 0 else (0,) * 6
                for c, m in zip(coef.tolist(), mode, strict=True)
            ],
            dtype=torch.int64,
        ).view(-1, 6)
        self.modes = torch.tensor(list(mode), dtype=torch.int64)
        self.jobs: list[tuple[str, int, list[int]]] = []
        if native:
            return
        all_rows = torch.arange(coef.shape[0]) if rows is None else rows
        axis = (self.modes == 0) & (self.plans[:, 0] == _AXIS)
        kinds = (
            ("axis", axis),
            ("fixed", (self.modes == 0) & ~axis),
            ("bilinear", self.modes == 2),
            ("bicubic", self.modes == 3),
        )
        per = max(1, _CHUNK_PIXELS["cpu" if device.type == "cpu" else "other"] // (height * width))
        for name, mask in kinds:
            sel = mask.nonzero().squeeze(1)
            for start in range(0, sel.numel(), per):
                part = sel[start : start + per]
                if name == "axis":
                    extra = _axis_tables(coef[part], height, width)
                else:
                    extra = (self.plans[part],) if name == "fixed" else (coef[part],)
                self.jobs.append((name, pack.add(all_rows[part]), [pack.add(t) for t in extra]))

    def run(self, src: Tensor, dst: Tensor, on_device: list[Tensor | None]) -> None:
        fill = on_device[self.fill_slot]
        if self.native:
            _pil_native.affine(src, dst, self.rows, self.coef, self.modes, self.plans, fill)
            return
        for name, idx_slot, slots in self.jobs:
            idx = on_device[idx_slot]
            part = src.index_select(0, idx)
            args = [on_device[s] for s in slots]
            if name == "axis":
                out = _nearest_axis(part, args[0], args[1], fill)
            elif name == "fixed":
                out = _nearest_fixed(part, args[0], fill)
            else:
                out = _interp(part, args[0], RESAMPLE[name], fill)
            dst.index_copy_(0, idx, out)


def warp(
    src: Tensor,
    dst: Tensor,
    rows: Tensor | None,
    coef: Tensor,
    mode: Sequence[int],
    fill: Tensor,
) -> None:
    """``dst[rows[j]] = transform(src[rows[j]], coef[j], mode[j])`` (``rows`` None: every row).

    ``src``/``dst``: contiguous uint8 ``[B, C, H, W]`` on one device (``dst`` may be ``src``);
    ``fill``: host uint8 ``[C]``; the rest as :class:`WarpGroup`.
    """
    if coef.shape[0] == 0:
        return
    pack = HostPack()
    fill_slot = pack.add(fill)
    group = WarpGroup(rows, coef, mode, src.shape[-2], src.shape[-1], src.device, pack, fill_slot)
    group.run(src, dst, pack.to(src.device))  # the one host-to-device copy of this call
