"""ctypes wrappers of the routed transforms' native loops (``ff_grayscale``, ``ff_hue``,
``ff_blur`` in :file:`ff_lightning/augment/_native.c`), on the library that
:mod:`ff_lightning.augment._native` builds and loads.

Each loop does the float32 operations of its torch kernel
(:mod:`ff_lightning.augment.transforms._kernels`) in the same order, bit for bit; callers use
them through the kernel table (:mod:`ff_lightning.augment.dispatch`), which registers them as
the ``native`` backend (the luma with ``float_loops``).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ff_lightning.augment import _native

__all__ = ["blur", "grayscale", "hue"]

_declared: dict[int, bool] = {}


def _lib() -> ctypes.CDLL:
    so = _native.lib()
    assert so is not None
    if not _declared.get(id(so)):
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        so.ff_grayscale.argtypes = [p, i64, i64]
        so.ff_hue.argtypes = [p, p, i64, p, i64, p]
        so.ff_blur.argtypes = [p, p, i64, p, i64, i64, i64, p, i64, p, i64, p]
        for fn in (so.ff_grayscale, so.ff_hue, so.ff_blur):
            fn.restype = None
        _declared[id(so)] = True
    return so


_check, _rows_ptr = _native._check, _native._rows_ptr


def grayscale(images: Tensor) -> None:
    """In place: every channel of each 3-channel image becomes its truncated luma (torchvision's
    ``rgb_to_grayscale`` with three output channels); needs :func:`_native.fused`."""
    so = _lib()
    _check(images)
    assert images.shape[1] == 3
    so.ff_grayscale(images.data_ptr(), images.shape[0], images[0, 0].numel())


def hue(src: Tensor, dst: Tensor, factor: Tensor, rows: Tensor | None = None) -> None:
    """``adjust_hue`` of the 3-channel images ``src[rows]`` into ``dst[rows]`` (``dst`` may be
    ``src``; ``rows`` None: every image) with float32 ``factor`` (one per row)."""
    so = _lib()
    _check(src)
    _check(dst)
    bsz, ch = src.shape[:2]
    assert ch == 3 and dst.shape == src.shape
    n = bsz if rows is None else rows.shape[0]
    factor = factor.to(torch.float32).contiguous()
    assert factor.numel() == n
    so.ff_hue(
        src.data_ptr(), dst.data_ptr(), n, _rows_ptr(rows), src[0, 0].numel(), factor.data_ptr()
    )


def blur(src: Tensor, dst: Tensor, taps_x: Tensor, taps_y: Tensor) -> None:
    """Separable Gaussian blur (reflect padding) of ``src`` into ``dst`` (may be ``src``) with
    float32 taps ``[n, kx]`` along the width and ``[n, ky]`` along the height."""
    so = _lib()
    _check(src)
    _check(dst)
    n, ch, height, width = src.shape
    assert dst.shape == src.shape
    taps_x = taps_x.to(torch.float32).contiguous()
    taps_y = taps_y.to(torch.float32).contiguous()
    kx, ky = taps_x.shape[1], taps_y.shape[1]
    assert taps_x.shape[0] == n and taps_y.shape[0] == n and kx // 2 < width and ky // 2 < height
    scratch = torch.empty(
        width + kx - 1 + height * width + max(width, height + ky - 1), dtype=torch.float32
    )
    so.ff_blur(
        src.data_ptr(),
        dst.data_ptr(),
        n,
        None,
        ch,
        height,
        width,
        taps_x.data_ptr(),
        kx,
        taps_y.data_ptr(),
        ky,
        scratch.data_ptr(),
    )
