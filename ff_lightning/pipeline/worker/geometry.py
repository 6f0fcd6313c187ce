"""Geometric preprocessing done in the DataLoader workers: decode, crop/resize, flip.

Every sample is cropped and resized to one fixed size in the worker, whatever its route, so
device batches are dense ``uint8 [B, 3, S, S]`` tensors. The crop box and the flip are drawn
from ``(seed, epoch, index)`` alone with :mod:`ff_lightning.augment.rng` (principle 1 of the
design), in one vectorised call per batch, so they do not depend on which worker, which batch
or which route a sample takes.

Cost per sample (the stock pipeline's ``RandomResizedCrop`` + flip on PIL is the yardstick):
the crop and resize of torchvision's PIL kernel run by the native loop with Pillow's arithmetic
(the same bytes, written planar into the batch buffer, no intermediate image), and a batched
flip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ff_lightning.augment import _pil_native, rng
from ff_lightning.pipeline.worker.items import channels_of, to_uint8_chw

__all__ = [
    "N_CROP_UNIFORMS",
    "crop_boxes",
    "crop_into",
    "pil_crop_into",
    "eval_geometry",
    "flip_flags",
    "orient",
    "oriented_size",
    "place_decoded",
    "random_resized_crop_box",
    "size_of",
    "channels_of",
    "to_uint8_chw",
    "train_geometry_batch",
]

N_CROP_UNIFORMS = 22  # 10 tries of (scale, log-ratio), then the crop position


def size_of(img: torch.Tensor | Image.Image) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.height, img.width
    return int(img.shape[-2]), int(img.shape[-1])


def random_resized_crop_box(
    height: int,
    width: int,
    u: Sequence[float],
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


def crop_boxes(
    sizes: Sequence[tuple[int, int]],
    *,
    seed: int,
    epoch: int,
    indices: torch.Tensor | Sequence[int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> list[tuple[int, int, int, int]]:
    """``(top, left, height, width)`` of every sample's crop; one RNG call for the batch."""
    u = rng.uniform(seed, epoch, indices, rng.STREAM_CROP, N_CROP_UNIFORMS, dtype=torch.float64)
    return [
        random_resized_crop_box(h, w, row, scale, ratio)
        for (h, w), row in zip(sizes, u.tolist(), strict=True)
    ]


def flip_flags(
    seed: int, epoch: int, indices: torch.Tensor | Sequence[int], p: float = 0.5
) -> torch.Tensor:
    """bool ``[B]``: which samples are flipped horizontally (probability ``p`` each)."""
    return rng.uniform(seed, epoch, indices, rng.STREAM_FLIP, 1)[:, 0] < p


def train_geometry_batch(
    images: Sequence[torch.Tensor | Image.Image],
    *,
    size: int,
    seed: int,
    epoch: int,
    indices: torch.Tensor | Sequence[int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool | float,
) -> torch.Tensor:
    """Random resized crop of every image to ``size`` x ``size``, then the flips: uint8 ``[B, 3, S, S]``."""
    boxes = crop_boxes(
        [size_of(im) for im in images],
        seed=seed,
        epoch=epoch,
        indices=indices,
        scale=scale,
        ratio=ratio,
    )
    n = len(images)
    channels = channels_of(images[0]) if n else 3
    out = torch.empty(n, channels, size, size, dtype=torch.uint8)
    crop_into(out, list(range(n)), images, boxes)
    p = (0.5 if hflip else 0.0) if isinstance(hflip, bool) else float(hflip)
    if p and n:
        flips = flip_flags(seed, epoch, indices, p).nonzero().squeeze(1)
        if flips.numel():
            out[flips] = out[flips].flip(-1)
    return out


def pil_crop_into(
    image: Image.Image,
    box: tuple[int, int, int, int],
    dst: np.ndarray,
    resample: int,
    *,
    mirror: bool = False,
) -> None:
    """torchvision's PIL resized crop: ``image.crop(box)`` resized to ``dst``'s size with
    ``resample`` (not resized when it has that size already), written into ``dst`` (uint8
    ``[C, H, W]``), mirrored left to right when ``mirror``. Bilinear and bicubic crops of RGB /
    L images run the native loop with Pillow's arithmetic (the same bytes, checked against the
    installed Pillow once per process); the rest go through Pillow and are copied band by band
    (Pillow packs a band contiguously: no strided transpose). A one-channel image fills every
    channel of ``dst``."""
    c, height, width = dst.shape
    bands = image.getbands()
    if (
        image.mode in ("RGB", "L")
        and len(bands) == c
        and dst.flags.c_contiguous
        and _pil_native.resize_crop(np.asarray(image), box, dst, resample, mirror=mirror)
    ):
        return
    res = image.crop(box)
    if res.size != (width, height):
        res = res.resize((width, height), resample)
    if res.mode in ("RGB", "L") and len(bands) == c:
        for k, band in enumerate(bands):
            plane = np.frombuffer(res.tobytes("raw", band), dtype=np.uint8)
            plane = plane.reshape(height, width)
            dst[k] = plane[:, ::-1] if mirror else plane
        return
    arr = np.asarray(res).reshape(height, width, -1).transpose(2, 0, 1)
    dst[...] = arr[:, :, ::-1] if mirror else arr


def crop_into(
    out: torch.Tensor,
    positions: Sequence[int],
    images: Sequence[torch.Tensor | Image.Image],
    boxes: Sequence[tuple[int, int, int, int]],
) -> None:
    """Crop ``images[j]`` to ``boxes[j]`` and resize it into ``out[positions[j]]`` (no flip),
    as torchvision's ``resized_crop`` (bilinear, antialiased) does: PIL images through
    :func:`pil_crop_into`, tensors through the tensor kernel."""
    size = int(out.shape[-1])
    for p, image, (top, left, h, w) in zip(positions, images, boxes, strict=True):
        if isinstance(image, Image.Image):
            box = (left, top, left + w, top + h)
            pil_crop_into(image, box, out[p].numpy(), Image.BILINEAR)
        else:
            out[p] = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)


# EXIF orientation (tag 0x0112) -> the tensor ops that undo it, as PIL.ImageOps.exif_transpose
# does: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
# 8 rotate 90 counter-clockwise.
def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` (1-8) to a ``[C, H, W]`` tensor as ``exif_transpose`` does."""
    o = int(orientation)
    if o == 2:
        return image.flip(-1)
    if o == 3:
        return image.flip(-2, -1)
    if o == 4:
        return image.flip(-2)
    if o == 5:
        return image.transpose(-2, -1)
    if o == 6:
        return image.rot90(-1, (-2, -1))
    if o == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if o == 8:
        return image.rot90(1, (-2, -1))
    return image


def oriented_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    """``(height, width)`` of a stored ``height x width`` image once ``orientation`` is applied."""
    return (width, height) if int(orientation) in (5, 6, 7, 8) else (height, width)


def place_decoded(
    image: torch.Tensor,
    orientation: int,
    box: Sequence[int],
    size: int,
    flip: bool,
) -> torch.Tensor:
    """The one kernel for a decoded JPEG, on either route: orient, crop ``box`` (in oriented
    coordinates) and resize to ``size`` x ``size`` (antialiased bilinear), then flip."""
    top, left, h, w = (int(v) for v in box)
    x = orient(image, orientation)
    if top < 0 or left < 0 or top + h > x.shape[-2] or left + w > x.shape[-1] or x.ndim != 3:
        # A box beyond the image: torchvision pads the crop; let it.
        x = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
        return x.flip(-1) if flip else x
    x = _resize_aa(x[:, top : top + h, left : left + w], size)
    return x.flip(-1) if flip else x


def _resize_aa(image: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``resize_image(antialias=True)`` (bilinear) of a uint8 ``[C, H, W]`` crop
    to ``size x size``, without its per-call Python: uint8 straight through ``interpolate``
    on CPU, float32 then rounded back elsewhere, as torchvision does."""
    if tuple(image.shape[-2:]) == (size, size):
        return image.clone()  # torchvision returns the input unchanged; a copy owns its memory
    x = image.unsqueeze(0)
    if x.device.type != "cpu":
        x = x.to(torch.float32)
    x = torch.nn.functional.interpolate(
        x, size=[size, size], mode="bilinear", align_corners=False, antialias=True
    )
    if x.dtype != torch.uint8:
        x = x.round_().to(torch.uint8)
    return x[0]


def eval_geometry(
    image: torch.Tensor | Image.Image,
    *,
    size: int,
    crop_fraction: float,
    resize_to: int | None = None,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Resize the shorter side to ``resize_to`` (default ``size / crop_fraction``) and take the
    central ``size`` square; ``interpolation``: ``bilinear`` (default), ``bicubic``, ``nearest``."""
    if resize_to is None:
        resize_to = max(size, int(round(size / crop_fraction)))
    pil_mode = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
    if isinstance(image, Image.Image):
        h, w = image.height, image.width
        if min(h, w) != resize_to:
            if h <= w:
                nh, nw = resize_to, max(1, int(round(w * resize_to / h)))
            else:
                nw, nh = resize_to, max(1, int(round(h * resize_to / w)))
            image = image.resize((nw, nh), pil_mode[interpolation])
        t = TF.pil_to_tensor(image)
    else:
        t = image
        if min(t.shape[-2:]) != resize_to:
            mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
            t = TF.resize(
                t, [resize_to], mode.get(interpolation, InterpolationMode.NEAREST), antialias=True
            )
    return TF.center_crop(t, [size, size]).contiguous()
