"""Normalisation of uint8 batches: ``(x / 255 - mean) / std`` in one fused pass.

:func:`normalize` is the public function (any device, constants copied once per device and
dtype). The device stage's normalisation is the kernel ``"normalize"`` of the kernel table
(:mod:`ff_lightning.augment.dispatch`): torch's fused ``addcmul`` on every device, the native
one-pass loop on host float32 batches where it is loaded (the same values).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ff_lightning.augment import _native
from ff_lightning.augment._device import device_cache, h2d
from ff_lightning.augment.dispatch import kernels_for, register_kernel

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "normalize_into"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """uint8 ``[B, C, H, W]`` (or ``[C, H, W]``) to ``dtype`` ``(x / 255 - mean) / std``.

    The package's one normaliser (the device stage, the benchmark's stock pipeline and users
    call it). Computed as ``x * (1 / (255 std)) - mean / std`` with float32 constants in one
    ``addcmul`` (uint8 read, float32 arithmetic, ``dtype`` written: no float32 copy of a
    bfloat16 batch), through the kernel table: the native one-pass loop on contiguous float32
    host batches where it is loaded, torch's fused ``addcmul`` everywhere else (the same values).
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim not in (3, 4):
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ValueError(
            f"`images` must be a uint8 tensor shaped [B, C, H, W] or [C, H, W], got {got}"
        )
    if not dtype.is_floating_point:
        raise ValueError(f"`dtype` must be a floating dtype, got {dtype}")
    scale, shift = _normalize_constants(
        tuple(torch.as_tensor(mean, dtype=torch.float64).flatten().tolist()),
        tuple(torch.as_tensor(std, dtype=torch.float64).flatten().tolist()),
        images.shape[-3],
        images.device,
    )
    return kernels_for(images.device)["normalize"](images, scale, shift, dtype)


_CONSTANTS: dict[tuple, tuple[Tensor, Tensor]] = {}
device_cache(_CONSTANTS.clear)


def _normalize_constants(
    mean: tuple[float, ...],
    std: tuple[float, ...],
    channels: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """``(1 / (255 std), -mean / std)`` as float32 ``[C, 1, 1]`` on ``device``, cached per
    (values, device): after the first call no copy reaches the device (and the first is one
    pinned, non-blocking copy, so no call synchronises)."""
    key = (mean, std, channels, str(device))
    cached = _CONSTANTS.get(key)
    if cached is not None:
        return cached
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"`mean` and `std` must have {channels} values (one per channel), got {len(mean)} and {len(std)}"
        )
    if not all(s > 0 for s in std):
        raise ValueError(f"`std` must be positive, got {list(std)}")
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    host = torch.stack([1.0 / (255.0 * std_t), -mean_t / std_t]).to(torch.float32)
    scale, shift = h2d(host, device).view(2, channels, 1, 1).unbind(0)
    if len(_CONSTANTS) > 32:
        _CONSTANTS.clear()
    _CONSTANTS[key] = (scale, shift)
    return scale, shift


@register_kernel("normalize", "any", "torch")
def normalize_into(images: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype) -> Tensor:
    """``images * scale + shift`` (uint8 in, ``dtype`` out; ``scale``/``shift`` float32
    ``[C, 1, 1]`` on the images' device) in one fused ``addcmul``: uint8 * float32 promotes to
    float32 inside the kernel, and the result is written in ``dtype`` (bf16 under bf16
    precision) without a second pass over the batch. The device stage's normalisation."""
    out = torch.empty(images.shape, dtype=dtype, device=images.device)
    return torch.addcmul(shift, images, scale, out=out)


@register_kernel("normalize", "cpu", "native", float_loops=True)
def _normalize_native(images: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype) -> Tensor:
    # The same values as `normalize_into` in one pass, for contiguous float32 batches.
    if dtype == torch.float32 and images.ndim == 4 and images.is_contiguous():
        return _native.normalize(images, scale, shift)
    return normalize_into(images, scale, shift, dtype)
