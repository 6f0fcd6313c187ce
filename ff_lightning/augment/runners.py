"""Group runners: the functions that apply one op (or one family of ops) to a group of samples.

A runner is called as ``run(ctx, src, dst, idx, idx_dev, params)`` and writes ``op(src[idx])``
into ``dst[idx]`` (``idx`` None: every sample; ``idx`` int64 on the host, ``idx_dev`` the same
on the images' device; ``params`` the op's per-sample tensors on the device, one row per
selected sample). ``dst`` may be ``src`` (in place). On host images the native loops
(:mod:`ff_lightning.augment._native`) run where they exist; the torch kernels everywhere else.
The op registry (:mod:`ff_lightning.augment.registry`) names each op's runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ff_lightning.augment import _color, _geometry, _native

__all__ = ["Runner", "_Ctx", "_dense", "_rows", "_run_identity", "_select"]

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
    #: host images and the native loops loaded (:mod:`ff_lightning.augment._native`): every
    #: op with a table joins the slot's lookup-table group
    native: bool = False


# A group runner (see the module docstring).
Runner = Callable[
    [_Ctx, Tensor, Tensor, "Tensor | None", "Tensor | None", tuple[Tensor, ...]], None
]


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


def _run_translate(ctx, src, dst, idx, idx_dev, params) -> None:
    shifts, fill = params
    if src.device.type == "cpu":
        rows = range(src.shape[0]) if idx is None else idx.tolist()
        pairs = [tuple(s) for s in shifts.tolist()]
        _geometry.shift_rows(src, dst, rows, pairs, fill.tolist())
    else:
        _geometry.shift_batch(src, dst, idx_dev, shifts, fill)


def _run_identity(ctx, src, dst, idx, idx_dev, params) -> None:
    if dst is src:
        return
    if idx is None:
        dst.copy_(src)
    else:
        _rows(dst).index_copy_(0, idx_dev, _rows(src).index_select(0, idx_dev))


def _brightness(x: Tensor, out: Tensor, factor: Tensor) -> Tensor:
    return _color.brightness(x, factor, out)


_color_dense = _dense(lambda x, out, f, a: _color.color(x, f, a, out))


def _run_color(ctx, src, dst, idx, idx_dev, params) -> None:
    """Native loop on host 3-channel images where its float arithmetic is torch's, else the
    torch kernel."""
    if ctx.native and src.shape[1] == 3 and src.device.type == "cpu" and _native.fused():
        _native.color(src, dst, idx, *params)
    else:
        _color_dense(ctx, src, dst, idx, idx_dev, params)


_sharpness_dense = _dense(lambda x, out, f, a: _color.sharpness(x, a, out))


def _run_sharpness(ctx, src, dst, idx, idx_dev, params) -> None:
    """Native loop on host images where its float arithmetic is torch's, else torch."""
    if ctx.native and src.device.type == "cpu" and _native.fused():
        _native.sharpness(src, dst, idx, params[1])
    else:
        _sharpness_dense(ctx, src, dst, idx, idx_dev, params)
