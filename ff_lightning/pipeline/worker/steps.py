"""What the worker does to every sample before the routed stage: its geometry, and the user's
own transforms it keeps.

- :class:`WorkerGeometry` says how a decoded image becomes a fixed ``size`` x ``size`` one: a
  random resized crop (torchvision's and timm's), resize + centre crop, (resize +) random crop
  with padding, a plain resize, or nothing (the image already has its size), then a horizontal
  flip with probability ``hflip``. Every random choice is drawn from ``(seed, epoch, index)``.
  The random resized crop of PIL images (bilinear or bicubic) runs the native loop with
  Pillow's arithmetic, straight into the planar batch; tensors take
  :func:`~ff_lightning.pipeline.worker.geometry.train_geometry_batch`; the other crops run per
  sample through torchvision's functional kernels (PIL images stay PIL until the end).
- :class:`WorkerTransforms` holds transforms the compiler could not place elsewhere (an
  unknown transform, and every transform before it): the worker runs the user's own objects per
  sample, in order, with the global RNGs (torch, ``random``, NumPy) seeded from
  ``(seed, epoch, index)`` and restored afterwards, so a sample looks the same whatever process
  or batch loads it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ff_lightning.augment import rng
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.worker.geometry import (
    N_CROP_UNIFORMS,
    flip_flags,
    pil_crop_into,
    random_resized_crop_box,
    size_of,
    train_geometry_batch,
)

__all__ = [
    "CROPS",
    "INTERPOLATIONS",
    "STREAM_INTERP",
    "STREAM_USER",
    "WorkerGeometry",
    "WorkerTransforms",
    "apply_cpu_share",
    "geometry_batch",
    "geometry_one",
    "run_user_transforms",
    "user_image",
]

CROPS = ("random_resized", "resize_center", "random", "resize", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")
STREAM_INTERP = 5  # the per-sample resampling choice of interpolation="random" (timm)
STREAM_USER = 6  # the seed of the user's own transforms run in the worker

_PIL_FILTERS = {
    InterpolationMode.BILINEAR: Image.BILINEAR,
    InterpolationMode.BICUBIC: Image.BICUBIC,
    InterpolationMode.NEAREST: Image.NEAREST,
}
_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class WorkerGeometry:
    """Decode and bring every sample to ``size`` x ``size`` in the workers.

    Attributes:
        size: side of the output.
        crop_scale, crop_ratio: the random resized crop's area and aspect ranges.
        hflip: probability of a horizontal flip after the crop (0 disables; a bool means 0.5).
        val_crop_fraction: evaluation resizes the short side to ``size / fraction`` (unless
            ``val_resize_to`` is given), then crops the centre.
        channels: channels of the output.
        device_decode: the device-routed baseline JPEGs leave the workers undecoded.
        crop: one of :data:`CROPS` (the training crop).
        resize_to: short side to resize to first (``resize_center``, ``random``).
        padding: ``(left, top, right, bottom)`` padding before a random crop.
        pad_fill, padding_mode: the padding's value and torchvision's mode.
        interpolation: one of :data:`INTERPOLATIONS` (``random``: bilinear or bicubic per
            sample, as timm's ``RandomResizedCropAndInterpolation``).
        val_resize_to, val_interpolation: the evaluation resize (``None``: from the fraction).
    """

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float | bool = 0.5
    val_crop_fraction: float = 0.875
    channels: int = 3
    device_decode: bool = False
    crop: str = "random_resized"
    resize_to: int | None = None
    padding: tuple[int, int, int, int] | None = None
    pad_fill: float = 0.0
    padding_mode: str = "constant"
    interpolation: str = "bilinear"
    val_resize_to: int | None = None
    val_interpolation: str = "bilinear"

    where = "workers"

    @property
    def flip_p(self) -> float:
        if isinstance(self.hflip, bool):
            return 0.5 if self.hflip else 0.0
        return float(self.hflip)

    @property
    def fast(self) -> bool:
        """The batched path applies (a bilinear random resized crop)."""
        return self.crop == "random_resized" and self.interpolation == "bilinear"

    def describe(self) -> str:
        s = f"{self.size}x{self.size}"
        interp = "" if self.interpolation == "bilinear" else f", {self.interpolation}"
        what = {
            "random_resized": f"random resized crop to {s} (scale {tuple(self.crop_scale)}, "
            f"ratio ({self.crop_ratio[0]:.3g}, {self.crop_ratio[1]:.3g}){interp})",
            "resize_center": (f"resize to {self.resize_to}{interp}, " if self.resize_to else "")
            + f"centre crop {s}",
            "random": (f"resize to {self.resize_to}, " if self.resize_to else "")
            + (f"pad {self.padding}, " if self.padding else "")
            + f"random crop {s}",
            "resize": f"resize to {s}{interp}",
            "none": f"the images are {s} as they come (or as the transforms below make them)",
        }[self.crop]
        flip = f", horizontal flip p={self.flip_p:g}" if self.flip_p else ""
        decode = " (the device share's baseline JPEGs decoded on the device)" * self.device_decode
        return f"decode{decode}, {what}{flip}, {self.channels} channel(s)"


def _interp(geo: WorkerGeometry, index: int, seed: int, epoch: int) -> InterpolationMode:
    if geo.interpolation != "random":
        return _MODES[geo.interpolation]
    u = float(rng.uniform(seed, epoch, [index], STREAM_INTERP, 1)[0, 0])
    return _MODES["bilinear"] if u < 0.5 else _MODES["bicubic"]


def _as_tensor(image: torch.Tensor | Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image


def geometry_one(
    image: torch.Tensor | Image.Image,
    geo: WorkerGeometry,
    u: Sequence[float],
    *,
    seed: int,
    epoch: int,
    index: int,
) -> torch.Tensor:
    """One training sample through ``geo``'s crop (no flip): uint8 ``[C, S, S]``. ``u``: the
    sample's :data:`~ff_lightning.pipeline.worker.geometry.N_CROP_UNIFORMS` crop uniforms."""
    size, crop = geo.size, geo.crop
    mode = _interp(geo, index, seed, epoch)
    if crop == "random_resized":
        h, w = size_of(image)
        top, left, ch, cw = random_resized_crop_box(h, w, u, geo.crop_scale, geo.crop_ratio)
        out = TF.resized_crop(image, top, left, ch, cw, [size, size], mode, antialias=True)
    elif crop == "resize_center":
        if geo.resize_to:
            image = TF.resize(image, [geo.resize_to], mode, antialias=True)
        out = TF.center_crop(image, [size, size])
    elif crop == "random":
        if geo.resize_to:
            image = TF.resize(image, [geo.resize_to], mode, antialias=True)
        if geo.padding:
            image = TF.pad(
                image, list(geo.padding), fill=geo.pad_fill, padding_mode=geo.padding_mode
            )
        h, w = size_of(image)
        if h < size or w < size:  # torchvision's pad_if_needed is off: say what is wrong
            raise ValueError(
                f"a random crop of {size}x{size} needs images at least that big, got {w}x{h}"
            )
        top, left = (
            int(u[N_CROP_UNIFORMS - 2] * (h - size + 1)),
            int(u[N_CROP_UNIFORMS - 1] * (w - size + 1)),
        )
        out = TF.crop(image, top, left, size, size)
    elif crop == "resize":
        out = TF.resize(image, [size, size], mode, antialias=True)
    else:
        out = image
    return _as_tensor(out).contiguous()


@dataclass(frozen=True)
class WorkerTransforms:
    """The user's own transforms the workers run per sample, in order (the compiler keeps an
    unknown transform here, with every transform before it). ``floats``: their output is a
    float tensor (they include the tensor conversion or the normalisation)."""

    transforms: tuple[Any, ...]
    floats: bool = False

    where = "workers"

    def describe(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms)
        return f"your own transforms, per sample, as written: {names}"


def _seed_of(seed: int, epoch: int, index: int) -> int:
    b = rng.bits(seed, epoch, [index], STREAM_USER, 2)[0].tolist()
    return (int(b[0]) << 31) ^ int(b[1])


def run_user_transforms(
    transforms: Sequence[Any], image: Any, *, seed: int, epoch: int, index: int
) -> Any:
    """``image`` through ``transforms`` in order, with torch's, Python's and NumPy's global RNGs
    seeded from ``(seed, epoch, index)`` (and restored afterwards)."""
    key = _seed_of(seed, epoch, index)
    saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    torch.manual_seed(key)
    random.seed(key)
    np.random.seed(key % (1 << 32))
    try:
        for t in transforms:
            image = t(image)
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])
    return image


def user_image(image: Any, index: int, geo: WorkerGeometry) -> torch.Tensor:
    """A worker-side result as a ``[C, S, S]`` tensor, or a ConfigError naming the item."""
    if isinstance(image, Image.Image):
        image = TF.pil_to_tensor(image)
    size, c = geo.size, geo.channels
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != (c, size, size):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(
            f"dataset item {index}: the worker-side transforms gave {got}, the pipeline needs "
            f"({c}, {size}, {size}) for every sample; end them with a crop or resize to "
            f"{size}, or set `image_size`"
        )
    return image.contiguous()


def geometry_batch(
    loaded: Sequence[Any],
    indices: torch.Tensor,
    epoch: int,
    *,
    geometry: WorkerGeometry,
    prefix: WorkerTransforms | None,
    seed: int,
) -> torch.Tensor:
    """Every loaded image through ``geometry`` (or the user's own ``prefix`` transforms), with
    every random choice drawn from ``(seed, epoch, index)``: uint8 ``[B, C, S, S]``."""
    geo, idx = geometry, indices.tolist()
    if prefix is not None:
        images = [
            user_image(
                run_user_transforms(prefix.transforms, im, seed=seed, epoch=epoch, index=i),
                i,
                geo,
            )
            for im, i in zip(loaded, idx, strict=True)
        ]
        return torch.stack(images)
    pil = all(isinstance(im, Image.Image) for im in loaded)
    if geo.fast and not pil:  # tensors: torchvision's antialiased tensor kernel per sample
        return train_geometry_batch(
            loaded,
            size=geo.size,
            seed=seed,
            epoch=epoch,
            indices=indices,
            scale=geo.crop_scale,
            ratio=geo.crop_ratio,
            hflip=geo.flip_p,
        )
    u = rng.uniform(seed, epoch, indices, rng.STREAM_CROP, N_CROP_UNIFORMS, dtype=torch.float64)
    if geo.crop == "random_resized" and pil:
        mirror = flip_flags(seed, epoch, indices, geo.flip_p).tolist() if geo.flip_p else None
        return _random_resized_pil(
            loaded, geo, u.tolist(), seed=seed, epoch=epoch, indices=idx, flips=mirror
        )
    images = [
        user_image(geometry_one(im, geo, row, seed=seed, epoch=epoch, index=i), i, geo)
        for im, row, i in zip(loaded, u.tolist(), idx, strict=True)
    ]
    out = torch.stack(images)
    if geo.flip_p and len(idx):
        flips = flip_flags(seed, epoch, indices, geo.flip_p).nonzero().squeeze(1)
        if flips.numel():
            out[flips] = out[flips].flip(-1)
    return out


def _random_resized_pil(
    images: Sequence[Image.Image],
    geo: WorkerGeometry,
    u: Sequence[Sequence[float]],
    *,
    seed: int,
    epoch: int,
    indices: Sequence[int],
    flips: Sequence[bool] | None = None,
) -> torch.Tensor:
    """:func:`geometry_one`'s random resized crop of PIL images (torchvision's PIL kernel,
    :func:`~ff_lightning.pipeline.worker.geometry.pil_crop_into`), each written straight into
    one planar batch buffer and mirrored on the way where ``flips`` says: uint8
    ``[B, C, S, S]``."""
    size, n, c = geo.size, len(images), geo.channels
    chw = np.empty((n, c, size, size), dtype=np.uint8)
    for j, (image, row, index) in enumerate(zip(images, u, indices, strict=True)):
        top, left, h, w = random_resized_crop_box(
            image.height, image.width, row, geo.crop_scale, geo.crop_ratio
        )
        resample = _PIL_FILTERS[_interp(geo, index, seed, epoch)]
        box = (left, top, left + w, top + h)
        if len(image.getbands()) != c:  # raises the error that names the item
            user_image(image.crop(box).resize((size, size), resample), index, geo)
        pil_crop_into(image, box, chw[j], resample, mirror=bool(flips and flips[j]))
    return torch.from_numpy(chw)


def apply_cpu_share(
    policy: Any, images: torch.Tensor, params: Any, device_index: torch.Tensor
) -> torch.Tensor:
    """The CPU route of the worker: ONE batched ``policy.apply_batch`` over the samples not at
    ``device_index`` (written back into ``images``; all of them: a new tensor)."""
    b, k = int(images.shape[0]), int(device_index.numel())
    if k >= b or images.is_floating_point():  # floats: the user's transforms did it all
        return images
    if k == 0:
        return policy.apply_batch(images, params)
    keep = torch.ones(b, dtype=torch.bool)
    keep[device_index] = False
    cpu_index = keep.nonzero().squeeze(1)
    images[cpu_index] = policy.apply_batch(images[cpu_index], params[cpu_index])
    return images
