"""Native CPU loops with Pillow's arithmetic: affine warps (``_pil_warp.c``); Color, Sharpness,
GaussianBlur's box passes and the sums of Pillow's "L" values for Contrast (``_pil_filters.c``).

Compiled and cached like :mod:`ff_lightning.augment._native` (same compiler, cache folder and
switch: with ``FF_LIGHTNING_NATIVE=0``, inside ``_native.disabled()`` or without a compiler,
:func:`lib` returns ``None`` and the callers take the torch kernels, which give the same bytes).
"""

from __future__ import annotations

import ctypes
import subprocess
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ff_lightning.augment import _native

__all__ = ["affine", "box_blur", "color", "lib", "luma_sum", "sharpness"]

_SOURCES = (Path(__file__).with_name("_pil_warp.c"), Path(__file__).with_name("_pil_filters.c"))
_state: dict[str, object] = {"tried": False, "lib": None}


class _Libraries:
    """The two compiled files' functions under one name space."""

    def __init__(self, warp: ctypes.CDLL, filters: ctypes.CDLL) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        self.ff_pil_affine = warp.ff_pil_affine
        self.ff_pil_affine.argtypes = [p, p, i64, p, i64, i64, i64, p, p, p, p]
        self.ff_pil_color = filters.ff_pil_color
        self.ff_pil_color.argtypes = [p, p, i64, p, i64, p]
        self.ff_pil_sharpness = filters.ff_pil_sharpness
        self.ff_pil_sharpness.argtypes = [p, p, i64, p, i64, i64, i64, p]
        self.ff_pil_box_blur = filters.ff_pil_box_blur
        self.ff_pil_box_blur.argtypes = [p, p, i64, p, i64, i64, i64, p]
        self.ff_pil_luma_sum = filters.ff_pil_luma_sum
        self.ff_pil_luma_sum.argtypes = [p, i64, p, i64, i64, p]
        for fn in (self.ff_pil_affine, self.ff_pil_color, self.ff_pil_sharpness):
            fn.restype = None
        self.ff_pil_box_blur.restype = self.ff_pil_luma_sum.restype = None


def lib() -> _Libraries | None:
    """The loaded libraries, or ``None`` (native loops off or unavailable: warned once)."""
    if _native.lib() is None:
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["lib"] = _Libraries(*(_native._build(path) for path in _SOURCES))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            warnings.warn(
                f"ff_lightning: native PIL loops unavailable ({exc}); using the torch kernels "
                "(same results, slower on CPU).",
                RuntimeWarning,
                stacklevel=2,
            )
    return _state["lib"]  # type: ignore[return-value]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _host(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to("cpu", dtype).contiguous()


def affine(
    src: Tensor,
    dst: Tensor,
    rows: Tensor | None,
    coef: Tensor,
    mode: Tensor,
    fixed: Tensor,
    fill: Tensor,
) -> None:
    """``dst[rows[j]] = warp(src[rows[j]])``: float64 ``coef [n, 6]`` (Pillow's affine data),
    int64 ``mode [n]`` (0, 2, 3), int64 ``fixed [n, 6]`` (see ``pil_warp``), uint8 ``fill [C]``."""
    so = lib()
    assert so is not None
    _native._check(src)
    _native._check(dst)
    _, ch, height, width = src.shape
    n = coef.shape[0]
    coef, mode, fixed = (
        _host(coef, torch.float64),
        _host(mode, torch.int64),
        _host(fixed, torch.int64),
    )
    fill = _host(fill, torch.uint8)
    so.ff_pil_affine(
        src.data_ptr(),
        dst.data_ptr(),
        n,
        _native._rows_ptr(rows),
        ch,
        height,
        width,
        coef.data_ptr(),
        mode.data_ptr(),
        fixed.data_ptr(),
        fill.data_ptr(),
    )


def color(src: Tensor, dst: Tensor, rows: Tensor | None, alpha: Tensor) -> None:
    """ImageEnhance.Color of three-channel rows with float32 factors ``alpha [n]``."""
    so = lib()
    assert so is not None and src.shape[1] == 3
    _native._check(src)
    _native._check(dst)
    alpha = _host(alpha, torch.float32)
    so.ff_pil_color(
        src.data_ptr(),
        dst.data_ptr(),
        alpha.shape[0],
        _native._rows_ptr(rows),
        src[0, 0].numel(),
        alpha.data_ptr(),
    )


def sharpness(src: Tensor, dst: Tensor, rows: Tensor | None, alpha: Tensor) -> None:
    """ImageEnhance.Sharpness of rows with float32 factors ``alpha [n]``."""
    so = lib()
    assert so is not None
    _native._check(src)
    _native._check(dst)
    alpha = _host(alpha, torch.float32)
    _, ch, height, width = src.shape
    so.ff_pil_sharpness(
        src.data_ptr(),
        dst.data_ptr(),
        alpha.shape[0],
        _native._rows_ptr(rows),
        ch,
        height,
        width,
        alpha.data_ptr(),
    )


def box_blur(src: Tensor, dst: Tensor, rows: Tensor | None, weights: Tensor) -> None:
    """ImageFilter.GaussianBlur of rows with int64 ``weights [n, 3]`` (``pil_color.box_weights``)."""
    so = lib()
    assert so is not None
    _native._check(src)
    _native._check(dst)
    weights = _host(weights, torch.int64)
    _, ch, height, width = src.shape
    so.ff_pil_box_blur(
        src.data_ptr(),
        dst.data_ptr(),
        weights.shape[0],
        _native._rows_ptr(rows),
        ch,
        height,
        width,
        weights.data_ptr(),
    )


def luma_sum(src: Tensor, rows: Tensor) -> Tensor:
    """int64 ``[n]``: the sum of Pillow's "L" values of each image ``src[rows]``."""
    so = lib()
    assert so is not None
    _native._check(src)
    out = torch.empty(rows.shape[0], dtype=torch.int64)
    ch = src.shape[1]
    so.ff_pil_luma_sum(
        src.data_ptr(),
        rows.shape[0],
        _native._rows_ptr(rows),
        ch,
        src[0, 0].numel(),
        out.data_ptr(),
    )
    return out
