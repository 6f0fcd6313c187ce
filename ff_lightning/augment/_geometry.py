"""Batched geometric warps with torchvision's exact coordinate conventions.

torchvision's ``affine_image``/``rotate_image`` build the inverse affine matrix in float64
Python arithmetic, cast it to float32, turn it into a sampling grid (pixel centres, image
centre at the origin, ``align_corners=False``) and call ``grid_sample``. Here the matrices
of all samples are built on the host with the same float64 formula (:func:`inverse_affine`),
rescaled on the host in float32 (:func:`grid_factors`), and the grid is evaluated
elementwise in float32 as ``(x * t0 + y * t1) + t2``, the operation order of torchvision's
CPU ``bmm`` (bit-identical on CPU). The grid is never a matrix product, so neither TF32
matmuls nor an enclosing ``torch.autocast`` can change it: every warp runs with autocast
disabled and in explicit float32, identically on every device.

- ``nearest``: the source pixel of every output pixel is found once per distinct matrix.
  On CPU ``grid_sample`` runs on a one-channel image of pixel indices (torchvision's own
  kernel picks the pixel); elsewhere the same pick is computed elementwise with CPU
  ``grid_sample``'s float32 arithmetic (``round((g + 1) * size / 2 - 0.5)``), so every
  device picks the pixel the CPU picks. The uint8 pixels are then gathered from a copy of
  the image with the fill colour in front (index 0), so no mask pass is needed.
- ``bilinear``: ``grid_sample`` runs on the float image, with torchvision's fill handling.
- integer translations are a pure shift for both modes (torchvision's grid lands on pixel
  centres up to float error far below the rounding step): slice copies on CPU, a gather
  elsewhere.

On accelerators the nearest picks and the shifts are cached on the device and gathered by
:mod:`ff_lightning.augment._gather`; which function runs where is the kernel table's choice
(:mod:`ff_lightning.augment.dispatch`, registrations in :mod:`ff_lightning.augment.runners`).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from functools import lru_cache

import torch
from torch import Tensor
from torch.nn.functional import grid_sample

from ff_lightning.augment import _native

__all__ = [
    "INDEX_CACHE",
    "INDEX_CACHE32",
    "atan",
    "axes",
    "degrees",
    "grid",
    "grid_factors",
    "grid_terms",
    "inverse_affine",
    "shift_rows",
    "source_index",
    "source_index_elementwise",
    "warp_bilinear",
    "warp_nearest_rows",
    "warp_nearest_rows_native",
]

# Integers up to this are exact in float32; see `source_index`.
_FLOAT32_EXACT_INT = 1 << 24


def _libm(name: str, values: Tensor) -> Tensor:
    """``math.<name>`` of each (host, float64) value: libm's result, as torchvision's floats get.

    torch's vectorised float64 ``atan``/``tan`` can differ from libm by one ulp; scaled by
    half the image size, that can flip a float32 rounding tie in the matrix's translation
    entry and so one bilinear output level. The few per-sample values are computed with
    :mod:`math` (parameters only, about 0.1 us each).
    """
    fn = getattr(math, name)
    return torch.tensor([fn(v) for v in values.tolist()], dtype=torch.float64)


def atan(values: Tensor) -> Tensor:
    """``math.atan``, elementwise (see :func:`_libm`)."""
    return _libm("atan", values)


def degrees(values: Tensor) -> Tensor:
    """``math.degrees``, elementwise (same constant, same rounding)."""
    return values * (180.0 / math.pi)


def inverse_affine(
    angle: Tensor,
    shear_x: Tensor,
    shear_y: Tensor,
    center_x: float,
    center_y: float,
) -> Tensor:
    """Inverse affine matrices ``[B, 6]`` (float64), as torchvision's ``_get_inverse_affine_matrix``.

    ``angle``, ``shear_x``, ``shear_y`` are float64 ``[B]`` host tensors in degrees; the
    centre is in torchvision's centred pixel coordinates; scale is 1 and translation 0
    (translations are shifts).
    """
    to_rad = math.pi / 180.0  # math.radians' constant
    rot = angle * to_rad
    sx = shear_x * to_rad
    sy = shear_y * to_rad
    cos_sy = _libm("cos", sy)
    tan_sx = _libm("tan", sx)
    rot_minus_sy = rot - sy
    sin_rot, cos_rot = _libm("sin", rot), _libm("cos", rot)
    a = _libm("cos", rot_minus_sy) / cos_sy
    b = -(a * tan_sx + sin_rot)
    c = _libm("sin", rot_minus_sy) / cos_sy
    d = cos_rot - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = center_x - m0 * center_x - m1 * center_y
    m5 = center_y - m3 * center_x - m4 * center_y
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1)


def grid_factors(matrix: Tensor, height: int, width: int) -> Tensor:
    """float32 ``[B, 3, 2]`` host factors ``t[j, k]`` of the grid: ``g_k = (x t0k + y t1k) + t2k``.

    torchvision's ``_affine_grid`` computes ``theta.transpose(1, 2) / [0.5 w, 0.5 h]`` in
    float32; so is this, on the host.
    """
    theta = matrix.to(torch.float32).view(-1, 2, 3)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32)
    return theta.transpose(1, 2).div(scale).contiguous()


@lru_cache(maxsize=64)
def _axes(height: int, width: int) -> tuple[Tensor, Tensor]:
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height)
    return xs, ys


def axes(height: int, width: int) -> tuple[Tensor, Tensor]:
    """torchvision's centred pixel coordinates ``xs [W]``, ``ys [H]`` (host float32, cached).

    Computed on the host with CPU ``linspace`` and copied to other devices, so every device
    starts from the same values.
    """
    return _axes(height, width)


@contextlib.contextmanager
def float32_math(device: torch.device) -> Iterator[None]:
    """Disable an enclosing ``torch.autocast`` for ``device`` (warps are float32 by design)."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def grid_terms(factors: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Host float32 terms of the grid: ``x * t0k`` ``[B, 2, W]``, ``y * t1k`` ``[B, 2, H]``
    and ``t2k`` ``[B, 2]`` (tiny; computed once on the host, identical on every device)."""
    xs, ys = axes(height, width)
    xt = xs.view(1, 1, width) * factors[:, 0, :].unsqueeze(-1)
    yt = ys.view(1, 1, height) * factors[:, 1, :].unsqueeze(-1)
    return xt, yt, factors[:, 2, :].contiguous()


def grid(xt: Tensor, yt: Tensor, t2: Tensor) -> Tensor:
    """Sampling grids ``[B, H, W, 2]`` (float32), bit-identical to torchvision's CPU ``_affine_grid``.

    ``g_k = (x * t0k + y * t1k) + t2k`` from :func:`grid_terms` on the images' device: two
    elementwise float32 passes per coordinate. The result is a view of planar
    ``[2, B, H, W]`` storage: both planes are written contiguously (no interleaving copy)
    and ``grid_sample`` reads strided grids.
    """
    bsz, width, height = xt.shape[0], xt.shape[-1], yt.shape[-1]
    planes = torch.empty(2, bsz, height, width, dtype=torch.float32, device=xt.device)
    for k in range(2):
        torch.add(xt[:, k].view(bsz, 1, width), yt[:, k].view(bsz, height, 1), out=planes[k])
        planes[k].add_(t2[:, k].view(bsz, 1, 1))
    return planes.permute(1, 2, 3, 0)


def source_index(grid_: Tensor, height: int, width: int) -> Tensor:
    """The source pixel nearest-mode ``grid_sample`` picks, as int64 ``[B, H*W]``:
    ``1 + its flat index``, or 0 where the pick falls outside the image.

    CPU: ``grid_sample`` runs on an image whose pixels hold ``1 + their index`` (padding 0).
    Indices must be exact in float32; beyond 2**24 pixels rows and columns are sampled
    apart. Other devices: the same pick with CPU ``grid_sample``'s float32 arithmetic,
    elementwise (the device's own ``grid_sample`` may fuse multiply-adds).
    """
    bsz = grid_.shape[0]
    device = grid_.device
    if device.type != "cpu":
        return source_index_elementwise(grid_, height, width)
    flat_grid = grid_.reshape(1, bsz * height, width, 2)  # one source image serves every sample
    if height * width < _FLOAT32_EXACT_INT:
        iota = torch.arange(1, height * width + 1, dtype=torch.float32, device=device)
        src = grid_sample(
            iota.view(1, 1, height, width),
            flat_grid,
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        )
        return src.view(bsz, height * width).to(torch.int64)
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    coords = torch.stack(
        [rows.view(height, 1).expand(height, width), cols.view(1, width).expand(height, width)]
    )
    src = grid_sample(
        coords.unsqueeze(0), flat_grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    row, col = src.view(2, bsz, height * width).to(torch.int64).unbind(0)
    # Outside: row == col == 0. Inside: (row - 1) * W + (col - 1) + 1.
    return row.sub(1).mul_(width).add_(col).mul_(row > 0)


def source_index_elementwise(grid_: Tensor, height: int, width: int) -> Tensor:
    """:func:`source_index` on any device with CPU ``grid_sample``'s float32 arithmetic:
    ``round((g + 1) * (size / 2) - 0.5)`` (half to even), inside when in ``[0, size - 1]``."""
    gx, gy = grid_.unbind(-1)
    ix = gx.add(1.0).mul_(0.5 * width).sub_(0.5).round_()
    iy = gy.add(1.0).mul_(0.5 * height).sub_(0.5).round_()
    inside = (ix >= 0) & (ix <= width - 1) & (iy >= 0) & (iy <= height - 1)
    index = iy.to(torch.int64).mul_(width).add_(ix.to(torch.int64)).add_(1)
    return index.mul_(inside).view(grid_.shape[0], height * width)


class TensorLRU:
    """Tensors by key, the least recently used out first beyond ``max_bytes`` (a tensor larger
    than the budget is not kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Tensor] = OrderedDict()
        self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def lookup(self, key: Hashable) -> Tensor | None:
        """The tensor stored under ``key`` (now the most recently used), or ``None``."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def store(self, key: Hashable, value: Tensor) -> None:
        size = value.numel() * value.element_size()
        while self._entries and self._bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
        if size <= self.max_bytes:
            self._entries[key] = value
            self._bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


class _IndexCache(TensorLRU):
    """Nearest-warp source indices (``dtype``, ``[1, H*W]``) by matrix and image size, least
    recently used out first beyond ``max_bytes``.

    RandAugment's fixed magnitude gives two matrices per op and size; TrivialAugment's 31 bins
    about sixty. The index is a pure function of the float32 grid factors and the size, so
    a hit is the same tensor a fresh computation gives.
    """

    def __init__(self, max_bytes: int = 64 << 20, dtype: torch.dtype = torch.int64) -> None:
        super().__init__(max_bytes)
        self.dtype = dtype

    def get(self, factors: Tensor, height: int, width: int, bits: tuple | None = None) -> Tensor:
        """The index of one matrix's float32 ``factors`` (``[3, 2]`` or 6 values); ``bits``:
        their int32 bit patterns when the caller has them already (the cache key)."""
        if bits is None:
            bits = tuple(factors.view(torch.int32).view(-1).tolist())
        key = (bits, height, width)
        hit = self.lookup(key)
        if hit is not None:
            return hit
        terms = grid_terms(factors.view(1, 3, 2), height, width)
        index = source_index(grid(*terms), height, width).to(self.dtype)
        self.store(key, index)
        return index


#: The CPU warps' caches (per process: every DataLoader worker has its own): int64 for
#: ``torch.gather``, int32 for the native loop (half the bytes to stream per pixel).
INDEX_CACHE = _IndexCache()
INDEX_CACHE32 = _IndexCache(dtype=torch.int32)


def warp_nearest_rows(
    src: Tensor, dst: Tensor, rows: Sequence[int], factors: Tensor, fill_u8: Tensor
) -> None:
    """CPU, torch kernels: ``dst[b] = warp(src[b])`` for ``b`` in ``rows`` (``factors[j]`` for
    ``rows[j]``), image by image with ``torch.gather`` and the source index of each distinct
    matrix from :data:`INDEX_CACHE`. ``dst`` may be ``src``."""
    _, ch, height, width = src.shape
    flat = factors.view(len(rows), 6)
    keys = flat.view(torch.int32).tolist()  # every row's cache key in one call
    pad = torch.empty(ch, 1 + height * width, dtype=torch.uint8)
    pad[:, 0].copy_(fill_u8)
    body = pad[:, 1:]
    for j, b in enumerate(rows):
        index = INDEX_CACHE.get(flat[j], height, width, tuple(keys[j])).expand(ch, height * width)
        body.copy_(src[b].view(ch, -1))
        torch.gather(pad, 1, index, out=dst[b].view(ch, -1))


def warp_nearest_rows_native(
    src: Tensor, dst: Tensor, rows: Sequence[int], factors: Tensor, fill_u8: Tensor
) -> None:
    """CPU, native loops: :func:`warp_nearest_rows` as one native gather over every row (no
    per-row torch calls), with int32 indices from :data:`INDEX_CACHE32`."""
    _, _, height, width = src.shape
    flat = factors.view(len(rows), 6)
    keys = flat.view(torch.int32).tolist()
    index = [INDEX_CACHE32.get(flat[j], height, width, tuple(keys[j])) for j in range(len(rows))]
    _native.gather(src, dst, rows, index, fill_u8)


def warp_bilinear(
    images: Tensor, out: Tensor, terms: Sequence[Tensor], fill: Tensor | None
) -> Tensor:
    """Bilinear warp of uint8 ``images`` into ``out`` (may be ``images``); ``fill`` float32
    ``[C]`` clamped to ``[0, 255]``, or None for torchvision's ``fill=None``."""
    bsz, ch, height, width = images.shape
    img = images.to(torch.float32)
    if fill is not None:
        # torchvision appends a ones-channel to know how much of each output pixel came
        # from inside the image, then blends the fill colour in by that amount.
        ones = torch.ones(bsz, 1, height, width, dtype=torch.float32, device=images.device)
        img = torch.cat((img, ones), dim=1)
    res = grid_sample(img, grid(*terms), mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill is not None:
        res, mask = res[:, :ch], res[:, ch:]
        fill_t = fill.view(1, ch, 1, 1)
        res = res.sub(fill_t).mul_(mask).add_(fill_t)
    # Values are in [0, 255]: float -> int16 -> uint8 rounds like torchvision's float -> uint8
    # after round_(), and is several times faster on CPU.
    return out.copy_(res.round_().to(torch.int16))


def shift_rows(
    src: Tensor,
    dst: Tensor,
    rows: Sequence[int],
    shifts: Sequence[tuple[int, int]],
    fill: list[int],
) -> None:
    """CPU: translate ``src[b]`` by integer ``(tx, ty)`` into ``dst[b]`` with slice copies."""
    _, ch, height, width = src.shape
    same_fill = all(v == fill[0] for v in fill)
    for b, (tx, ty) in zip(rows, shifts, strict=True):
        s, d = src[b], dst[b]
        w, h = width - abs(tx), height - abs(ty)
        if w <= 0 or h <= 0:
            w = h = 0
        elif d.data_ptr() == s.data_ptr():
            s = s.clone()  # the copy below would overlap itself
        if w < width or h < height:
            if same_fill:
                d.fill_(fill[0])
            else:
                for c in range(ch):
                    d[c].fill_(fill[c])
        if w and h:
            dy, dx = max(ty, 0), max(tx, 0)
            sy, sx = max(-ty, 0), max(-tx, 0)
            d[:, dy : dy + h, dx : dx + w].copy_(s[:, sy : sy + h, sx : sx + w])
