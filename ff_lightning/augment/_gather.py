"""Nearest warps and integer shifts on accelerators: one gather from indices cached on the device.

A nearest warp (ShearX/Y, Rotate) or an integer shift (TranslateX/Y) moves pixels without
blending them: every output pixel is a source pixel, or the fill colour. Its source index
(int64 ``[H*W]``: ``1 +`` the source pixel's flat index, 0 for the fill) depends only on the
op's parameters and the image size, and a policy draws few distinct parameters (RandAugment's
fixed magnitude: two matrices per op; TrivialAugment's 31 bins: about sixty). So, as the CPU
route keeps its indices (``_geometry.INDEX_CACHE``, keyed by the float32 grid factors' bits and
the size), the device route keeps each index on the device, keyed the same way
(:data:`DEVICE_INDEX_CACHE`): only a parameter seen for the first time is computed there
(``_geometry.source_index``'s elementwise form, all of a call's new ones in one batched pass);
every later call stacks the cached rows (one op) and gathers the group's pixels (one op) from a
copy of the images with the fill colour in front. A warm warp or shift group costs about six
device ops, whatever its size and parameters, instead of about thirty.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

from ff_lightning.augment import _geometry
from ff_lightning.augment._device import device_cache

__all__ = [
    "DEVICE_INDEX_CACHE",
    "DeviceIndexCache",
    "gather_nearest",
    "shift_device",
    "warp_device",
]


class DeviceIndexCache(_geometry.TensorLRU):
    """Source indices (int64 ``[H*W]``) on devices, by ``(device, key)``; least recently used
    out first beyond ``max_bytes`` (entries a call is using are kept until it returns them)."""

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        super().__init__(max_bytes)
        self.misses = 0  # indices computed (not found)

    def rows(
        self,
        keys: Sequence[Hashable],
        device: torch.device,
        compute: Callable[[list[int]], Tensor],
    ) -> Tensor:
        """int64 ``[len(keys), H*W]`` on ``device``: the index of every key.

        ``compute(positions)`` returns the indices ``[len(positions), H*W]`` of the keys at
        ``positions`` (the first position of each key not cached), on ``device``; it is called
        at most once. One distinct key gives an expanded view (no op), several one ``stack``.
        """
        dev = str(device)
        first: dict[Hashable, int] = {}
        for j, key in enumerate(keys):
            first.setdefault(key, j)
        missing = [j for key, j in first.items() if (dev, key) not in self]
        fresh: dict[Hashable, Tensor] = {}
        if missing:
            self.misses += len(missing)
            computed = compute(missing)
            for row, j in enumerate(missing):
                fresh[keys[j]] = computed[row]
        found: dict[Hashable, Tensor] = {}
        for key in first:
            hit = fresh.get(key)
            if hit is None:
                hit = self.lookup((dev, key))
            found[key] = hit
        for key, index in fresh.items():
            self.store((dev, key), index)
        if len(found) == 1:
            only = next(iter(found.values()))
            return only.view(1, -1).expand(len(keys), only.numel())
        return torch.stack([found[key] for key in keys])


#: The device route's cache (per process; bounded to 128 MiB of device memory).
DEVICE_INDEX_CACHE = DeviceIndexCache()
device_cache(DEVICE_INDEX_CACHE.clear)


def _padded(images: Tensor, fill_u8: Tensor) -> Tensor:
    """``[B, C, 1 + H*W]`` uint8: the fill colour (index 0), then the pixels."""
    bsz, ch = images.shape[:2]
    pad = torch.empty(bsz, ch, 1 + images[0, 0].numel(), dtype=torch.uint8, device=images.device)
    pad[:, :, 0].copy_(fill_u8.view(1, ch).expand(bsz, ch))
    pad[:, :, 1:].copy_(images.view(bsz, ch, -1))
    return pad


def gather_nearest(
    src: Tensor, dst: Tensor, idx: Tensor | None, index: Tensor, fill_u8: Tensor
) -> None:
    """``dst[idx[j]] = pixels of src[idx[j]] picked by index[j]`` (``idx`` None: every row);
    ``index`` int64 ``[G, H*W]`` (0: the fill colour ``fill_u8`` ``[C]``). ``dst`` may be ``src``."""
    _, ch, height, width = src.shape
    part = src if idx is None else src.index_select(0, idx)
    bsz = part.shape[0]
    pad = _padded(part, fill_u8)
    index = index.view(bsz, 1, height * width).expand(bsz, ch, height * width)
    if idx is None:
        torch.gather(pad, 2, index, out=dst.view(bsz, ch, -1))
    else:
        dst.index_copy_(0, idx, torch.gather(pad, 2, index).view(bsz, ch, height, width))


def _rows_of(tensors: Sequence[Tensor], positions: list[int]) -> list[Tensor]:
    """The rows ``positions`` of each tensor (views when they are all of them, one ``cat``
    per tensor otherwise)."""
    if positions == list(range(tensors[0].shape[0])):
        return list(tensors)
    return [torch.cat([t[j : j + 1] for j in positions]) for t in tensors]


def warp_device(
    src: Tensor,
    dst: Tensor,
    idx: Tensor | None,
    factors: Tensor,
    terms: Sequence[Tensor],
    fill_u8: Tensor,
) -> None:
    """Nearest warp of the group rows on any device: ``factors`` float32 ``[G, 3, 2]`` on the
    host (the cache keys, as the CPU route's), ``terms`` their grid terms on the device."""
    height, width = src.shape[-2:]
    keys = factors.view(-1, 6).view(torch.int32).tolist()

    def compute(positions: list[int]) -> Tensor:
        grid = _geometry.grid(*_rows_of(terms, positions))
        return _geometry.source_index(grid, height, width)

    index = DEVICE_INDEX_CACHE.rows(
        [("warp", tuple(k), height, width) for k in keys], src.device, compute
    )
    gather_nearest(src, dst, idx, index, fill_u8)


def _shift_index(shifts: Tensor, height: int, width: int) -> Tensor:
    """int64 ``[n, H*W]`` source indices of integer ``shifts`` (int64 ``[n, 2]`` on the device)."""
    n, device = shifts.shape[0], shifts.device
    tx, ty = shifts[:, 0].view(n, 1, 1), shifts[:, 1].view(n, 1, 1)
    sx = torch.arange(width, device=device).view(1, 1, width) - tx  # [n, 1, W]
    sy = torch.arange(height, device=device).view(1, height, 1) - ty  # [n, H, 1]
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    return (sy * width + sx + 1).mul_(inside).view(n, height * width)


def shift_device(
    src: Tensor, dst: Tensor, idx: Tensor | None, host: Tensor, shifts: Tensor, fill_u8: Tensor
) -> None:
    """Integer translation of the group rows on any device: ``host`` int64 ``[G, 2]`` ``(tx,
    ty)`` on the host (the cache keys), ``shifts`` the same on the device."""
    height, width = src.shape[-2:]

    def compute(positions: list[int]) -> Tensor:
        return _shift_index(_rows_of([shifts], positions)[0], height, width)

    keys = [("shift", tx, ty, height, width) for tx, ty in host.tolist()]
    index = DEVICE_INDEX_CACHE.rows(keys, src.device, compute)
    gather_nearest(src, dst, idx, index, fill_u8)
