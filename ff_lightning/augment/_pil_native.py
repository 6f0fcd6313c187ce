"""Native CPU loops with Pillow's arithmetic: affine warps (``_pil_warp.c``); Color, Sharpness,
GaussianBlur's box passes and the sums of Pillow's "L" values for Contrast (``_pil_filters.c``).

Part of the package's one native library (built with the package, or on first use; see
:mod:`ff_lightning.augment._native_load`): with ``FF_LIGHTNING_NATIVE=0``, inside
``_native.disabled()`` or without the library, :func:`lib` returns ``None`` and the callers take
the torch kernels, which give the same bytes.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor

from ff_lightning.augment import _native

__all__ = [
    "RESIZE_FILTERS",
    "affine",
    "box_blur",
    "color",
    "lib",
    "luma_sum",
    "resize_crop",
    "sharpness",
]

_state: dict[str, object] = {"lib": None, "so": None}


class _Libraries:
    """The package's native library, with the Pillow loops' signatures declared."""

    def __init__(self, so: ctypes.CDLL) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        self.ff_pil_affine = so.ff_pil_affine
        self.ff_pil_affine.argtypes = [p, p, i64, p, i64, i64, i64, p, p, p, p]
        self.ff_pil_color = so.ff_pil_color
        self.ff_pil_color.argtypes = [p, p, i64, p, i64, p]
        self.ff_pil_sharpness = so.ff_pil_sharpness
        self.ff_pil_sharpness.argtypes = [p, p, i64, p, i64, i64, i64, p]
        self.ff_pil_box_blur = so.ff_pil_box_blur
        self.ff_pil_box_blur.argtypes = [p, p, i64, p, i64, i64, i64, p]
        self.ff_pil_luma_sum = so.ff_pil_luma_sum
        self.ff_pil_luma_sum.argtypes = [p, i64, p, i64, i64, p]
        self.ff_pil_resize = so.ff_pil_resize
        self.ff_pil_resize.argtypes = [p, i64, i64, i64, i64, p, i64, i64, i64, i64, i64]
        self.ff_pil_resize.restype = ctypes.c_int
        for fn in (self.ff_pil_affine, self.ff_pil_color, self.ff_pil_sharpness):
            fn.restype = None
        self.ff_pil_luma_sum.restype = None
        self.ff_pil_box_blur.restype = ctypes.c_int


def lib() -> _Libraries | None:
    """The Pillow loops of the package's native library, or ``None`` (native loops off or
    unavailable: :mod:`ff_lightning.augment._native` warned once)."""
    so = _native.lib()
    if so is None:
        return None
    if _state.get("so") is not so:
        _state["lib"], _state["so"] = _Libraries(so), so
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


def box_blur(src: Tensor, dst: Tensor, rows: Tensor | None, weights: Tensor) -> bool:
    """ImageFilter.GaussianBlur of rows with int64 ``weights [n, 3]`` (``pil_color.box_weights``);
    ``False`` when the loop is out of memory (nothing written: run the torch kernel)."""
    so = lib()
    assert so is not None
    _native._check(src)
    _native._check(dst)
    weights = _host(weights, torch.int64)
    _, ch, height, width = src.shape
    status = so.ff_pil_box_blur(
        src.data_ptr(),
        dst.data_ptr(),
        weights.shape[0],
        _native._rows_ptr(rows),
        ch,
        height,
        width,
        weights.data_ptr(),
    )
    return status == 0


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


#: Pillow's filter ids :func:`resize_crop` runs (``Image.BILINEAR``, ``Image.BICUBIC``).
RESIZE_FILTERS = frozenset({2, 3})


def resize_crop(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    out: np.ndarray,
    resample: int,
    *,
    mirror: bool = False,
) -> bool:
    """``image.crop(box).resize(out size, resample)`` of Pillow (bilinear or bicubic), written
    planar into ``out`` (uint8 ``[C, S_h, S_w]``, C-contiguous), mirrored left to right when
    ``mirror``. ``image``: the decoded image as a C-contiguous uint8 ``[H, W, C]`` (or
    ``[H, W]``) array; ``box``: ``(left, top, right, bottom)`` inside it. ``False`` when the
    native library is not loaded or is out of memory (nothing written: run Pillow)."""
    so = lib()
    if so is None or resample not in RESIZE_FILTERS:
        return False
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or out.dtype != np.uint8:
        raise ValueError(
            f"`image` must be uint8 [H, W] or [H, W, C] and `out` uint8 [C, H, W], got "
            f"{image.dtype} {image.shape} and {out.dtype} {out.shape}"
        )
    c = 1 if image.ndim == 2 else int(image.shape[2])
    height, width = int(image.shape[0]), int(image.shape[1])
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"crop box {box} is not inside the {width}x{height} image")
    if c not in (1, 3) or out.ndim != 3 or out.shape[0] != c or min(out.shape[1:]) < 1:
        raise ValueError(
            f"`out` must be [C, H, W] with the image's C (1 or 3) and H, W >= 1, got "
            f"{out.shape} for an image of {c} channel(s)"
        )
    if not (image.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("`image` and `out` must be C-contiguous with the same channel count")
    stride = width * c
    start = image.ctypes.data + top * stride + left * c
    order = _pillow_order()
    if order is None:
        return False
    status = so.ff_pil_resize(
        start,
        stride,
        bottom - top,
        right - left,
        c,
        out.ctypes.data,
        int(out.shape[1]),
        int(out.shape[2]),
        int(resample),
        int(bool(mirror)),
        order,
    )
    return status == 0


def _pillow_order() -> int | None:
    """Which order of passes the installed Pillow uses: 1 when it runs the vertical pass first
    for heights shrinking more than twice the width (Pillow 13), 0 when it always starts
    horizontally (earlier releases), ``None`` when the native loop matches neither (then Pillow
    resizes). Found once per process on a small probe image whose result tells them apart."""
    if "order" not in _state:
        _state["order"] = _probe_order()
    return _state["order"]  # type: ignore[return-value]


def _probe_order() -> int | None:
    from PIL import Image

    so = lib()
    if so is None:
        return None
    probe = (np.arange(10 * 5 * 3, dtype=np.int64) * 97 % 251).astype(np.uint8)
    probe = probe.reshape(10, 5, 3)
    want = np.asarray(Image.fromarray(probe, "RGB").resize((7, 4), Image.BICUBIC))
    want = np.ascontiguousarray(want.transpose(2, 0, 1))
    for order in (1, 0):
        out = np.empty((3, 4, 7), dtype=np.uint8)
        status = so.ff_pil_resize(
            probe.ctypes.data, 15, 10, 5, 3, out.ctypes.data, 4, 7, 3, 0, order
        )
        if status == 0 and np.array_equal(out, want):
            return order
    return None
