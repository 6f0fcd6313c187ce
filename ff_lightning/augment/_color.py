"""Batched per-sample colour kernels reproducing torchvision v2's uint8 arithmetic.

Every kernel takes contiguous uint8 ``images`` ``[B, C, H, W]``, per-sample parameters with
a leading batch dimension already on the images' device, and a contiguous uint8 ``out`` of
the same shape that it fills (so chunked callers need no extra copy); ``out`` may be
``images`` itself (every kernel reads what it needs before it writes). The float arithmetic
follows torchvision operation by operation: float32, the same rounding, ``a * r + b * (1 - r)``
as one fused multiply-add like its ``add_(..., alpha=)``, truncation on the way back to uint8.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "invert",
    "posterize",
    "sharpness",
    "solarize",
]


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _store(values: Tensor, out: Tensor) -> Tensor:
    """Truncate float32 ``values`` already clamped to ``[0, 255]`` into uint8 ``out``.

    Same result as ``.to(torch.uint8)`` (truncation toward zero); float -> int16 -> uint8 is
    vectorised on CPU and several times faster than the direct cast.
    """
    return out.copy_(values.to(torch.int16))


def _blend(images: Tensor, other: Tensor, ratio: Tensor, alpha: Tensor, out: Tensor) -> Tensor:
    """torchvision's ``_blend``: ``clamp(images * ratio + other * alpha)``, truncated.

    ``ratio``/``alpha`` are float32 ``[B]`` (``alpha == 1 - ratio`` computed in float64);
    ``other`` is float32 ``[B, 1, H, W]``. ``addcmul_`` is one fused multiply-add per
    element, like torchvision's ``add_(other, alpha=...)``.
    """
    acc = images.to(torch.float32).mul_(_per_sample(ratio))
    acc.addcmul_(other, _per_sample(alpha))
    return _store(acc.clamp_(0, 255), out)


def _grayscale(images: Tensor) -> Tensor:
    """Floored float32 luma ``[B, 1, H, W]`` with torchvision's weights and op order (a
    one-channel image is its own luma, as in torchvision)."""
    if images.shape[1] == 1:
        return images.to(torch.float32)
    r, g, b = images.to(torch.float32).unbind(dim=1)
    gray = r.mul_(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)
    return gray.floor_().unsqueeze(1)


def brightness(images: Tensor, factor: Tensor, out: Tensor) -> Tensor:
    """``adjust_brightness`` with per-sample ``factor`` (float32 ``[B]``, non-negative)."""
    acc = torch.mul(images, _per_sample(factor))  # uint8 * float32: one float32 pass
    return _store(acc.clamp_(max=255), out)


def color(images: Tensor, factor: Tensor, alpha: Tensor, out: Tensor) -> Tensor:
    """``adjust_saturation``: blend with the floored grayscale image (identity on one channel,
    as torchvision and PIL)."""
    if images.shape[1] == 1:
        return out.copy_(images)
    return _blend(images, _grayscale(images), factor, alpha, out)


def contrast(images: Tensor, factor: Tensor, alpha: Tensor, out: Tensor) -> Tensor:
    """``adjust_contrast``: blend with the mean of the floored grayscale image."""
    gray = _grayscale(images)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    # A full plane of the mean: addcmul_ with two per-sample scalars is not vectorised.
    return _blend(images, gray.copy_(mean.expand_as(gray)), factor, alpha, out)


def sharpness(images: Tensor, alpha: Tensor, out: Tensor) -> Tensor:
    """``adjust_sharpness``; ``alpha = 1 - factor`` (float32 ``[B]``). Borders are kept.

    torchvision rounds a float 3x3 convolution with ``[[1,1,1],[1,5,1],[1,1,1]] / 13``. The
    weighted sum ``S`` is an integer, ``S / 13`` is never within ``1/26`` of a rounding tie
    and the float error is below ``1e-3``, so ``round(S / 13)`` from an exact integer sum is
    the same value.
    """
    height, width = images.shape[-2:]
    if height <= 2 or width <= 2:
        return out.copy_(images)
    x = images.to(torch.int16)
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]  # [B, C, H, W-2]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # [B, C, H-2, W-2]
    centre = x[..., 1:-1, 1:-1]
    blurred = box.add_(centre, alpha=4).to(torch.float32).mul_(1.0 / 13.0).round_()
    centre_f = centre.to(torch.float32)
    inner = centre_f.addcmul_(blurred.sub_(centre_f), _per_sample(alpha)).clamp_(0, 255)
    _store(inner, out[..., 1:-1, 1:-1])
    for border in (
        (Ellipsis, slice(0, 1), slice(None)),
        (Ellipsis, slice(-1, None), slice(None)),
        (Ellipsis, slice(1, -1), slice(0, 1)),
        (Ellipsis, slice(1, -1), slice(-1, None)),
    ):
        out[border] = images[border]
    return out


def posterize(images: Tensor, out: Tensor, mask: Tensor) -> Tensor:
    """Keep the most significant bits: ``images & mask`` (uint8 ``[B]``, ``(255 << (8 - bits)) & 255``)."""
    return torch.bitwise_and(images, _per_sample(mask), out=out)


def solarize(images: Tensor, out: Tensor, threshold: Tensor, flip: Tensor) -> Tensor:
    """Invert pixels ``>= threshold`` (uint8 ``[B]``) where ``flip`` (uint8 ``[B]``) is 255."""
    # x >= t  <=>  max(x, t) == x; uint8 maximum/eq are vectorised on CPU, ge is not.
    hit = torch.maximum(images, _per_sample(threshold)).eq_(images)
    return torch.bitwise_xor(images, hit.mul_(_per_sample(flip)), out=out)


def invert(images: Tensor, out: Tensor) -> Tensor:
    """``255 - images``."""
    return torch.bitwise_not(images, out=out)


def _apply_lut(images: Tensor, lut: Tensor, out: Tensor, index: Tensor) -> Tensor:
    """``out[b, c, p] = lut[b * C + c, index[b * C + c, p]]``, ``lut`` uint8 ``[B * C, 256]``,
    ``index`` the int64 pixel values ``[B * C, H * W]``."""
    bsz, ch, height, width = images.shape
    torch.gather(lut, 1, index, out=out.view(bsz * ch, height * width))
    return out


def autocontrast(images: Tensor, out: Tensor) -> Tensor:
    """Stretch each channel of each image to the full ``[0, 255]`` range.

    ``(x - lo) / ((hi - lo) / 255)`` in float32, clamped and truncated (channels with
    ``hi == lo`` are left as they are): torchvision's float32 operations, pixel by pixel
    (five vectorised passes; cheaper on CPU than a per-channel lookup table's gather).
    """
    bsz, ch = images.shape[:2]
    lo = images.amin(dim=(2, 3), keepdim=True).to(torch.float32)
    hi = images.amax(dim=(2, 3), keepdim=True).to(torch.float32)
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255).masked_fill_(flat, 1.0)
    lo = lo.masked_fill_(flat, 0.0)
    return _store(images.sub(lo).div_(inv_scale).clamp_(0, 255), out)


def equalize(images: Tensor, out: Tensor) -> Tensor:
    """Histogram equalisation per channel with PIL's (and torchvision's) LUT scheme."""
    bsz, ch, height, width = images.shape
    rows, npix = bsz * ch, height * width
    index = images.view(rows, npix).to(torch.int64)
    hist = torch.zeros(rows, 256, dtype=torch.int32, device=images.device)
    hist.scatter_add_(1, index, hist.new_ones(1, 1).expand(rows, npix))
    cum = hist.cumsum(dim=1, dtype=torch.int64)
    last = cum.argmax(dim=1, keepdim=True)  # first bin holding the total: last non-empty bin
    num_non_max = npix - hist.gather(1, last).to(torch.int64)
    step = num_non_max.div(255, rounding_mode="floor")  # [rows, 1]
    lut = (
        cum[:, :-1]
        .add(step.div(2, rounding_mode="floor"))
        .div_(step.clamp(min=1), rounding_mode="floor")
        .clamp_(0, 255)
    )
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], dim=1)
    # Channels with a single non-empty bin (step == 0) are left unchanged.
    identity = torch.arange(256, device=images.device).expand(rows, 256)
    lut = torch.where(step != 0, lut, identity).to(torch.uint8)
    return _apply_lut(images, lut, out, index)
