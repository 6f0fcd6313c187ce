"""Per-sample geometric preprocessing done in the DataLoader workers for every sample.

Every sample is decoded, cropped and resized to one fixed size in the worker, whatever its
route, so device batches are dense ``uint8 [B, 3, S, S]`` tensors. The crop and the flip are
drawn from ``(seed, epoch, index)`` alone (principle 1 of the design), so they do not depend on
which worker, which batch or which route a sample takes.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_uniforms(seed: int, epoch: int, index: int, stream: int, n: int) -> list[float]:
    """``n`` uniform floats in [0, 1) that depend only on ``(seed, epoch, index, stream)``."""
    key = _splitmix64(
        _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64)
    )
    key = _splitmix64(key ^ ((stream * 0x632BE59BD9B4E019) & _MASK64))
    out = []
    for i in range(n):
        out.append((_splitmix64(key + i) >> 11) * (1.0 / (1 << 53)))
    return out


# Stream ids keep the crop/flip draws independent of the policy's own draws.
STREAM_CROP = 1_000_001
STREAM_FLIP = 1_000_002


def to_uint8_chw(image: object) -> torch.Tensor | Image.Image:
    """Normalise a dataset item's image to an RGB PIL image or a uint8 ``[3, H, W]`` tensor."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise ValueError(
                f"dataset images must be PIL images or uint8 tensors shaped [C, H, W], got a tensor of shape {tuple(t.shape)}"
            )
        if t.dtype != torch.uint8:
            raise ValueError(
                f"dataset image tensors must have dtype torch.uint8 (values 0-255), got {t.dtype}; "
                "convert with `(x * 255).round().clamp(0, 255).to(torch.uint8)`"
            )
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        elif t.shape[0] == 4:
            t = t[:3]
        elif t.shape[0] != 3:
            raise ValueError(
                f"dataset image tensors must have 1, 3 or 4 channels first ([C, H, W]), got shape {tuple(t.shape)}"
            )
        return t
    raise TypeError(
        f"dataset items must be (PIL.Image or uint8 tensor [C, H, W], int target), got an image of type {type(image).__name__}"
    )


def _size_of(img: torch.Tensor | Image.Image) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.height, img.width
    return int(img.shape[-2]), int(img.shape[-1])


def random_resized_crop_box(
    height: int,
    width: int,
    u: list[float],
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box rule, driven by given uniforms (10 tries of 2 draws)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * k + 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[20] * (height - h + 1))
            left = int(u[21] * (width - w + 1))
            return top, left, h, w
    # Fallback: central crop clamped to the ratio range, as torchvision does.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


N_CROP_UNIFORMS = 22


def train_geometry(
    image: torch.Tensor | Image.Image,
    *,
    size: int,
    seed: int,
    epoch: int,
    index: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
) -> torch.Tensor:
    """Random resized crop to ``size`` x ``size`` and optional horizontal flip; uint8 ``[3, S, S]``."""
    h, w = _size_of(image)
    u = sample_uniforms(seed, epoch, index, STREAM_CROP, N_CROP_UNIFORMS)
    top, left, ch, cw = random_resized_crop_box(h, w, u, scale, ratio)
    if isinstance(image, Image.Image):
        out = image.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        t = TF.pil_to_tensor(out)
    else:
        t = TF.resized_crop(image, top, left, ch, cw, [size, size], antialias=True)
    if hflip and sample_uniforms(seed, epoch, index, STREAM_FLIP, 1)[0] < 0.5:
        t = t.flip(-1)
    return t.contiguous()


def eval_geometry(
    image: torch.Tensor | Image.Image, *, size: int, crop_fraction: float
) -> torch.Tensor:
    """Resize the shorter side to ``size / crop_fraction`` and take the central ``size`` square."""
    resize_to = max(size, int(round(size / crop_fraction)))
    if isinstance(image, Image.Image):
        h, w = image.height, image.width
        if min(h, w) != resize_to:
            if h <= w:
                nh, nw = resize_to, max(1, int(round(w * resize_to / h)))
            else:
                nw, nh = resize_to, max(1, int(round(h * resize_to / w)))
            image = image.resize((nw, nh), Image.BILINEAR)
        t = TF.pil_to_tensor(image)
    else:
        t = image
        if min(t.shape[-2:]) != resize_to:
            t = TF.resize(t, [resize_to], antialias=True)
    return TF.center_crop(t, [size, size]).contiguous()
