"""Group runners: the kernels that apply one op (or one family of ops) to a group of samples.

A runner is called as ``run(ctx, src, dst, idx, idx_dev, params, host)`` and writes
``op(src[idx])`` into ``dst[idx]`` (``idx`` None: every sample; ``idx`` int64 on the host,
``idx_dev`` the same on the images' device; ``params`` the op's per-sample tensors on the
device, one row per selected sample, and ``host`` the same tensors on the host, which the
kernels read only to key their caches). ``dst`` may be ``src`` (in place).

Each runner registers in the kernel table (:mod:`ff_lightning.augment.dispatch`) under the
name an :class:`~ff_lightning.augment.registry.OpDef` gives in ``run``, once per (device type,
backend): the native loops on host images where they are loaded, the torch kernels on the host
otherwise, and the batched torch kernels (nearest picks cached on the device,
:mod:`ff_lightning.augment._gather`) on every other device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ff_lightning.augment import _color, _gather, _geometry, _native
from ff_lightning.augment.dispatch import Kernels, kernels_for, register_kernel

__all__ = ["Runner", "_Ctx", "_dense", "_rows", "_run_identity", "_select"]

# Values (B*C*H*W) per chunk when running on CPU; see `_dense`.
_CPU_CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class _Ctx:
    """What every op of a call shares: image size, interpolation, fill, and the kernels
    chosen for the images' device (:func:`~ff_lightning.augment.dispatch.kernels_for`)."""

    height: int
    width: int
    channels: int
    interpolation: str
    fill: list[float] | None
    kernels: Kernels = None  # type: ignore[assignment]  # set by functional._context

    def __post_init__(self) -> None:
        if self.kernels is None:
            object.__setattr__(self, "kernels", kernels_for("cpu"))

    @property
    def native(self) -> bool:
        """Whether this call's backend is the native loops (read-only; kernels dispatch
        through :attr:`kernels`, not through this flag)."""
        return self.kernels.backend == "native"


# A group runner (see the module docstring).
Runner = Callable[..., None]


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

    def run(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
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


# ------------------------------------------------------------------ geometric
def _host_rows(src: Tensor, idx: Tensor | None) -> range | list[int]:
    return range(src.shape[0]) if idx is None else idx.tolist()


@register_kernel("affine.nearest", "cpu", "native")
def _warp_rows_native(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    factors, _, _, _, fill = params
    _geometry.warp_nearest_rows_native(src, dst, _host_rows(src, idx), factors, fill)


@register_kernel("affine.nearest", "cpu", "torch")
def _warp_rows(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    factors, _, _, _, fill = params
    _geometry.warp_nearest_rows(src, dst, _host_rows(src, idx), factors, fill)


@register_kernel("affine.nearest", "any", "torch")
def _warp_device(ctx, src, dst, idx, idx_dev, params, host) -> None:
    _, xt, yt, t2, fill = params
    _gather.warp_device(src, dst, idx_dev, host[0], (xt, yt, t2), fill)


@register_kernel("affine.bilinear", "any", "torch")
def _warp_bilinear(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    _, xt, yt, t2, *fill = params
    fill_t = fill[0] if fill else None

    def kernel(images: Tensor, out: Tensor, *terms: Tensor) -> Tensor:
        return _geometry.warp_bilinear(images, out, terms, fill_t)

    _dense(kernel)(ctx, src, dst, idx, idx_dev, (xt, yt, t2))


def _run_warp(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    """ShearX/Y and Rotate: the nearest or bilinear warp the table gives for this device,
    in float32 whatever an enclosing autocast says."""
    kernel = ctx.kernels["affine.nearest" if ctx.interpolation == "nearest" else "affine.bilinear"]
    with _geometry.float32_math(src.device):
        kernel(ctx, src, dst, idx, idx_dev, params, host)


register_kernel("affine", "any", "torch", _run_warp)


@register_kernel("shift", "cpu", "torch")
def _shift_rows(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    shifts, fill = params
    pairs = [tuple(s) for s in shifts.tolist()]
    _geometry.shift_rows(src, dst, _host_rows(src, idx), pairs, fill.tolist())


@register_kernel("shift", "any", "torch")
def _shift_device(ctx, src, dst, idx, idx_dev, params, host) -> None:
    shifts, fill = params
    _gather.shift_device(src, dst, idx_dev, host[0], shifts, fill)


# ------------------------------------------------------------------ colour
@register_kernel("Identity", "any", "torch")
def _run_identity(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    if dst is src:
        return
    if idx is None:
        dst.copy_(src)
    else:
        _rows(dst).index_copy_(0, idx_dev, _rows(src).index_select(0, idx_dev))


def _brightness(x: Tensor, out: Tensor, factor: Tensor) -> Tensor:
    return _color.brightness(x, factor, out)


register_kernel("Brightness", "any", "torch", _dense(_brightness))
register_kernel("Posterize", "any", "torch", _dense(_color.posterize))
register_kernel("Solarize", "any", "torch", _dense(_color.solarize))
register_kernel("Invert", "any", "torch", _dense(_color.invert))
register_kernel("Color", "any", "torch", _dense(lambda x, out, f, a: _color.color(x, f, a, out)))
register_kernel(
    "Sharpness", "any", "torch", _dense(lambda x, out, f, a: _color.sharpness(x, a, out))
)

_color_dense = _dense(lambda x, out, f, a: _color.color(x, f, a, out))


@register_kernel("Color", "cpu", "native", float_loops=True)
def _color_native(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    """The native loop on 3-channel images (its float arithmetic is torch's where it is
    registered), the torch kernel on one channel (the identity)."""
    if src.shape[1] == 3:
        _native.color(src, dst, idx, *params)
    else:
        _color_dense(ctx, src, dst, idx, idx_dev, params)


@register_kernel("Sharpness", "cpu", "native", float_loops=True)
def _sharpness_native(ctx, src, dst, idx, idx_dev, params, host=None) -> None:
    _native.sharpness(src, dst, idx, params[1])
