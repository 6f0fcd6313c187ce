"""Batched per-sample colour kernels reproducing torchvision v2's uint8 arithmetic.

Every kernel takes contiguous uint8 ``[B, C, H, W]`` images and per-sample parameters with
a leading batch dimension, already on the images' device. The float arithmetic follows
torchvision's operation by operation (float32, same rounding, ``a * r + b * (1 - r)`` as one
fused multiply-add like its ``add_(..., alpha=)``, truncation on the cast back to uint8), so
results agree with torchvision to the pixel except for rare reduction-order effects.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "autocontrast",
    "blend_brightness",
    "blend_color",
    "blend_contrast",
    "equalize",
    "invert",
    "posterize",
    "sharpness",
    "solarize",
]


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(images: Tensor, other: Tensor, ratio: Tensor, alpha: Tensor) -> Tensor:
    """torchvision's ``_blend``: ``clamp(images * ratio + other * alpha)`` truncated to uint8.

    ``ratio``/``alpha`` are float32 ``[B]`` (``alpha == 1 - ratio`` computed in float64).
    ``addcmul`` is one fused multiply-add per element, like torchvision's ``add_(alpha=)``.
    """
    out = images.mul(_per_sample(ratio))
    out = torch.addcmul(out, other, _per_sample(alpha))
    return out.clamp_(0, 255).to(torch.uint8)


def _grayscale(images: Tensor) -> Tensor:
    """Floored float32 luma ``[B, 1, H, W]`` with torchvision's weights and op order."""
    r, g, b = images.unbind(dim=1)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)
    return gray.floor_().unsqueeze(1)


def blend_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``adjust_brightness`` with per-sample ``factor`` (float32 ``[B]``, non-negative)."""
    out = images.mul(_per_sample(factor))
    return out.clamp_(max=255).to(torch.uint8)


def blend_color(images: Tensor, factor: Tensor, alpha: Tensor) -> Tensor:
    """``adjust_saturation``: blend with the floored grayscale image."""
    return _blend(images, _grayscale(images), factor, alpha)


def blend_contrast(images: Tensor, factor: Tensor, alpha: Tensor) -> Tensor:
    """``adjust_contrast``: blend with the mean of the floored grayscale image."""
    mean = _grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor, alpha)


def sharpness(images: Tensor, alpha: Tensor) -> Tensor:
    """``adjust_sharpness``; ``alpha = 1 - factor`` (float32 ``[B]``). Borders are kept.

    torchvision rounds a float 3x3 convolution with ``[[1,1,1],[1,5,1],[1,1,1]] / 13``. The
    weighted sum ``S`` is an integer, ``S / 13`` is never within ``1/26`` of a rounding tie
    and the float error is below ``1e-3``, so ``round(S / 13)`` from an exact integer sum is
    the same value.
    """
    height, width = images.shape[-2:]
    if height <= 2 or width <= 2:
        return images.clone()
    x = images.to(torch.int16)
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]  # [B, C, H, W-2]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # [B, C, H-2, W-2]
    centre = x[..., 1:-1, 1:-1]
    weighted = box.add_(centre, alpha=4)
    blurred = weighted.to(torch.float32).mul_(1.0 / 13.0).round_()
    centre_f = centre.to(torch.float32)
    inner = torch.addcmul(centre_f, blurred.sub_(centre_f), _per_sample(alpha))
    out = images.clone()
    out[..., 1:-1, 1:-1] = inner.clamp_(0, 255).to(torch.uint8)
    return out


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the ``bits`` (int64 ``[B]``, in ``[0, 8]``) most significant bits."""
    mask = (255 << (8 - bits)) & 255
    return images.bitwise_and(_per_sample(mask.to(torch.uint8)))


def solarize(images: Tensor, threshold: Tensor, active: Tensor) -> Tensor:
    """Invert pixels ``>= threshold`` (uint8 ``[B]``) in samples where ``active`` (bool ``[B]``)."""
    flip = _per_sample(torch.where(active, 255, 0).to(torch.uint8))
    hit = images >= _per_sample(threshold)
    return torch.where(hit, images.bitwise_xor(flip), images)


def invert(images: Tensor) -> Tensor:
    """``255 - images``."""
    return images.bitwise_not()


def _apply_lut(images: Tensor, lut: Tensor, index: Tensor | None = None) -> Tensor:
    """``out[b, c, p] = lut[b, c, images[b, c, p]]`` with ``lut`` uint8 ``[B, C, 256]``."""
    bsz, ch, height, width = images.shape
    if index is None:
        index = images.reshape(bsz * ch, height * width).to(torch.int64)
    out = torch.gather(lut.reshape(bsz * ch, 256), 1, index)
    return out.view(bsz, ch, height, width)


def autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel of each image to the full ``[0, 255]`` range."""
    lo = images.amin(dim=(2, 3), keepdim=True).to(torch.float32)  # [B, C, 1, 1]
    hi = images.amax(dim=(2, 3), keepdim=True).to(torch.float32)
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255)
    lo = lo.masked_fill_(flat, 0.0).squeeze(-1)
    inv_scale = inv_scale.masked_fill_(flat, 1.0).squeeze(-1)
    values = torch.arange(256, dtype=torch.float32, device=images.device)
    lut = values.sub(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)  # [B, C, 256]
    return _apply_lut(images, lut)


def equalize(images: Tensor) -> Tensor:
    """Histogram equalisation per channel with PIL's (and torchvision's) LUT scheme."""
    bsz, ch, height, width = images.shape
    rows = bsz * ch
    index = images.reshape(rows, height * width).to(torch.int64)
    hist = torch.zeros(rows, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(1, index, torch.ones(1, 1, dtype=torch.int64, device=images.device).expand_as(index))
    cum = hist.cumsum(dim=1)
    last = cum.argmax(dim=1, keepdim=True)  # first bin holding the maximum: the last non-empty bin
    num_non_max = height * width - hist.gather(1, last)
    step = num_non_max.div(255, rounding_mode="floor")  # [rows, 1]
    lut = (
        cum[:, :-1]
        .add(step.div(2, rounding_mode="floor"))
        .div_(step.clamp(min=1), rounding_mode="floor")
        .clamp_(0, 255)
    )
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], dim=1)
    identity = torch.arange(256, device=images.device).expand(rows, 256)
    lut = torch.where(step != 0, lut, identity).to(torch.uint8)
    return _apply_lut(images, lut.view(bsz, ch, 256), index)
