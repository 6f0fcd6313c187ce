"""Batched colour kernels with Pillow's arithmetic (``ImageOps``, ``ImageEnhance``, ``ImageFilter``).

timm's and DeepAA's ops run Pillow, whose uint8 arithmetic differs from torchvision's tensor
kernels (the package's :mod:`ff_lightning.augment._color`): ``Image.blend`` computes
``deg + alpha * (img - deg)`` in float32 and truncates; the "L" conversion is ITU-R 601-2 in
16-bit fixed point, rounded (torchvision floors a float luma); Contrast blends with the
*rounded integer* mean of L; AutoContrast stretches with float64 ``int(v * scale + offset)``.
Every function here reproduces Pillow's result for each sample with its own parameter.

- **tables**: Posterize, Solarize, SolarizeAdd, Invert, Brightness (parameters only, built on the
  host per distinct value and cached), Contrast, AutoContrast and Equalize (from per-image
  statistics, built on the images' device): uint8 ``[n, 1 or C, 256]`` applied in one lookup.
- **direct**: Color (blend with L), Sharpness (blend with the SMOOTH filter), GaussianBlur
  (Pillow's three extended box passes per axis, each rounded to uint8).

Direct kernels take uint8 ``part [n, C, H, W]`` and per-sample host-made parameters already on
its device, and return a new tensor; nothing reads a device value back.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "autocontrast_tables",
    "blend",
    "box_radius",
    "color",
    "contrast_tables",
    "gaussian_blur",
    "luma_sum",
    "param_table",
    "sharpness",
]


# ==================================================================== blend
def blend(deg: Tensor, img: Tensor, alpha: Tensor) -> Tensor:
    """``Image.blend(deg, img, alpha)``: ``deg + alpha * (img - deg)`` in float32, clamped to
    ``[0, 255]`` and truncated (inside ``[0, 1]`` Pillow skips the clamp; the value never leaves
    the range there). ``deg``/``img`` integer tensors, ``alpha`` float32 broadcastable."""
    diff = (img.to(torch.int32) - deg.to(torch.int32)).to(torch.float32)
    value = deg.to(torch.float32) + diff * alpha  # two roundings, as Pillow's float expression
    return value.clamp_(0, 255).to(torch.uint8)


# ==================================================================== parameter tables (host)
_RAMP = np.arange(256)
_TABLES: dict[tuple, Tensor] = {}


def _table(op: str, args: tuple[float, ...]) -> np.ndarray:
    if op == "Posterize":  # ImageOps.posterize: keep `bits` high bits (<= 0 bits: all zero)
        bits = int(args[0])
        if bits >= 8:
            return _RAMP.copy()
        return _RAMP & (~((1 << (8 - bits)) - 1) if bits > 0 else 0)
    if op == "Solarize":  # values >= threshold inverted
        return np.where(_RAMP < args[0], _RAMP, 255 - _RAMP)
    if op == "SolarizeAdd":  # timm: values < threshold get `add` (capped at 255)
        add, threshold = args
        return np.where(_RAMP < threshold, np.minimum(255, _RAMP + int(add)), _RAMP)
    if op == "Invert":
        return 255 - _RAMP
    if op == "Brightness":  # blend with black
        ramp = torch.arange(256, dtype=torch.int32)
        return blend(
            torch.zeros_like(ramp), ramp, torch.tensor(args[0], dtype=torch.float32)
        ).numpy()
    raise ValueError(f"`op` {op!r} has no parameter table")


def param_table(op: str, args: tuple[float, ...]) -> Tensor:
    """uint8 ``[1, 256]`` host table of a parameter-only op (cached per op and value)."""
    key = (op, *args)
    hit = _TABLES.get(key)
    if hit is None:
        if len(_TABLES) > 4096:
            _TABLES.clear()
        hit = torch.from_numpy(np.asarray(_table(op, args), dtype=np.uint8).reshape(1, 256))
        _TABLES[key] = hit
    return hit


# ==================================================================== statistics tables (device)
def luma(part: Tensor) -> Tensor:
    """int32 ``[n, 1, H, W]``: Pillow's ``convert("L")`` (a one-channel image is its own L)."""
    x = part.to(torch.int32)
    if part.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def luma_sum(part: Tensor) -> Tensor:
    """int64 ``[n]``: the sum of each image's L values (exact)."""
    return luma(part).sum(dim=(1, 2, 3), dtype=torch.int64)


def contrast_tables(lsum: Tensor, pixels: int, alpha: Tensor) -> Tensor:
    """ImageEnhance.Contrast: uint8 ``[n, 1, 256]`` tables blending each value with the image's
    mean L rounded to an integer (``int(mean + 0.5)``, the mean a float64 division)."""
    total = lsum.to(torch.float64)
    # A tensor divisor: torch divides by a host scalar as a multiplication by its reciprocal on
    # some devices (one more rounding); Pillow (Python) divides once.
    mean = torch.floor(total / torch.full_like(total, pixels) + 0.5).to(torch.int32).view(-1, 1, 1)
    ramp = torch.arange(256, dtype=torch.int32, device=lsum.device).view(1, 1, 256)
    return blend(mean, ramp, alpha.view(-1, 1, 1))


def autocontrast_tables(hist: Tensor) -> Tensor:
    """ImageOps.autocontrast (cutoff 0) per channel from int64 ``hist [n, C, 256]``: ``lo``/``hi``
    the first/last non-empty bins; ``int(v * 255/(hi - lo) - lo * 255/(hi - lo))`` in float64,
    clamped; identity where ``hi <= lo``."""
    present = hist > 0
    bins = torch.arange(256, device=hist.device)
    lo = torch.where(present, bins, 256).amin(-1, keepdim=True)
    hi = torch.where(present, bins, -1).amax(-1, keepdim=True)
    flat = hi <= lo
    span = (hi - lo).clamp(min=1).to(torch.float64)
    scale = torch.full_like(span, 255.0) / span  # tensor / tensor: one IEEE division, as Python
    offset = -lo.to(torch.float64) * scale
    value = torch.trunc(bins.to(torch.float64) * scale + offset).clamp_(0, 255)
    return torch.where(flat, bins.expand_as(value), value.to(torch.int64)).to(torch.uint8)


# ==================================================================== direct kernels
def color(part: Tensor, alpha: Tensor) -> Tensor:
    """ImageEnhance.Color: blend with L (identity on one-channel images, as Pillow's "L")."""
    if part.shape[1] == 1:
        return part.clone()
    return blend(luma(part), part, alpha.view(-1, 1, 1, 1))


def sharpness(part: Tensor, alpha: Tensor) -> Tensor:
    """ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (``[1 1 1; 1 5 1; 1 1 1] / 13``,
    rounded: ``(2 S + 13) // 26`` of the exact integer sum ``S``; border pixels kept)."""
    height, width = part.shape[-2:]
    out = part.clone()
    if height <= 2 or width <= 2:
        return out
    x = part.to(torch.int32)
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    centre = x[..., 1:-1, 1:-1]
    smooth = (box + 4 * centre) * 2 + 13
    smooth = torch.div(smooth, 26, rounding_mode="floor")
    out[..., 1:-1, 1:-1] = blend(smooth, centre, alpha.view(-1, 1, 1, 1))
    return out


# ==================================================================== Gaussian blur
def box_radius(sigma: float, passes: int = 3) -> float:
    """Pillow's ``_gaussian_blur_radius`` (float32 C arithmetic): the extended box radius whose
    ``passes`` box blurs approximate a Gaussian of standard deviation ``sigma``."""
    f32 = np.float32
    radius = f32(sigma)
    sigma2 = f32(radius * radius / f32(passes))
    big_l = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f32(math.floor((float(big_l) - 1.0) / 2.0))
    a = (f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * sigma2)
    a = f32(a / (f32(6) * (sigma2 - (small_l + f32(1)) * (small_l + f32(1)))))
    return float(f32(small_l + a))


def box_weights(radius: float) -> tuple[int, int, int]:
    """``(r, ww, fw)`` of Pillow's horizontal box pass for a float box radius: the integer
    radius, the 2**24-scaled weight of the ``2r + 1`` inner taps and of the two outer taps."""
    f32 = np.float32
    r = int(f32(radius))
    ww = int(f32(1 << 24) / (f32(radius) * f32(2) + f32(1)))
    fw = ((1 << 24) - (2 * r + 1) * ww) // 2
    return r, ww, fw


def _box_pass(x: Tensor, r: Tensor, ww: Tensor, fw: Tensor, rmax: int) -> Tensor:
    """One horizontal pass on int64 ``x [n, L, W]`` with per-sample ``r``/``ww``/``fw`` ``[n]``:
    ``(sum(x[k], |k - i| <= r) ww + (x[i-r-1] + x[i+r+1]) fw + 2**23) >> 24``, positions
    clamped to the line (Pillow repeats the edge pixels)."""
    n, lines, width = x.shape
    pad = rmax + 1
    left = x[..., :1].expand(n, lines, pad)
    right = x[..., -1:].expand(n, lines, pad)
    padded = torch.cat([left, x, right], dim=-1)  # padded[j] = x[clamp(j - pad)]
    prefix = torch.nn.functional.pad(padded.cumsum(-1), (1, 0))  # prefix[j] = sum(padded[:j])
    pos = torch.arange(width, device=x.device).view(1, 1, width) + pad
    rr = r.view(n, 1, 1)
    hi = (pos + rr + 1).expand(n, lines, width)
    lo = (pos - rr).expand(n, lines, width)
    inner = prefix.gather(-1, hi) - prefix.gather(-1, lo)
    outer = padded.gather(-1, lo - 1) + padded.gather(-1, hi)
    bulk = inner * ww.view(n, 1, 1) + outer * fw.view(n, 1, 1)
    return (bulk + (1 << 23)) >> 24


def gaussian_blur(part: Tensor, weights: Tensor, rmax: int) -> Tensor:
    """ImageFilter.GaussianBlur: three box passes along rows, then three along columns, each
    rounded to uint8. ``weights`` int64 ``[n, 3]``: :func:`box_weights` per sample (made on the
    host, which also gives ``rmax``, their largest ``r``); ``ww == 0`` marks a zero radius (a
    copy, as Pillow's ``GaussianBlur(0)``)."""
    n, ch, height, width = part.shape
    r, ww, fw = weights.unbind(1)
    x = part.to(torch.int64).reshape(n, ch * height, width)
    for _ in range(3):
        x = _box_pass(x, r, ww, fw, rmax)
    x = x.view(n, ch, height, width).transpose(-1, -2).reshape(n, ch * width, height)
    for _ in range(3):
        x = _box_pass(x, r, ww, fw, rmax)
    out = x.view(n, ch, width, height).transpose(-1, -2).to(torch.uint8)
    return torch.where((ww == 0).view(n, 1, 1, 1), part, out)
