"""Batched uint8 kernels of the routed transforms that the op registry does not have: hue,
Gaussian blur with a sigma per sample, and the per-sample flips.

Each takes uint8 ``[n, C, H, W]`` and per-sample parameters (one row each) on the images'
device, and computes every sample with the same float32 operations in the same order
whatever the batch, so a sample's result does not depend on the other samples (routes are
bit-identical). On host images the native loops (``_native_ops``, in ``_native.c``) do the
same arithmetic in one pass per image; the tests compare both bit for bit.

- :func:`hue`: torchvision's ``adjust_hue_image`` (RGB -> HSV, hue shift, HSV -> RGB, scaled
  back with ``255.999``), operation by operation: elementwise float32 operations without
  fused multiply-adds, so the same on every route and equal to torchvision on CPU.
- :func:`blur`: torchvision's ``gaussian_blur_image`` as two 1-D passes (the 2-D kernel is
  the outer product of the two 1-D kernels) with reflect padding; taps are summed in order as
  separate multiplies and adds (no fused multiply-add, so CPU, native loop and accelerator
  agree). The separable sum differs from torchvision's 2-D convolution by float rounding
  only: rare one-level differences after rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import pad

from ff_lightning.augment._device import HostPack, h2d
from ff_lightning.augment.dispatch import kernels_for, register_kernel
from ff_lightning.augment.transforms import _native_ops
from ff_lightning.augment.transforms.base import run_rows

__all__ = ["blur", "first_live_tap", "gaussian_taps", "hue"]

# hsv -> rgb: which of (v, p, q, t) each output channel takes, by sector i = floor(6 h) % 6.
_SECTORS = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))
_SELECT: dict[str, Tensor] = {}


def _select(device: torch.device) -> Tensor:
    key = str(device)
    table = _SELECT.get(key)
    if table is None:
        # Built once per device (pinned, non-blocking copy).
        table = _SELECT.setdefault(key, h2d(torch.tensor(_SECTORS, dtype=torch.int64), device))
    return table


def _hue_torch(images: Tensor, factor: Tensor) -> Tensor:
    """:func:`hue` with torch operations (any device); ``factor`` float32 ``[n]``."""
    n = images.shape[0]
    x = images.to(torch.float32).mul_(1.0 / 255)
    r, g, _ = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    eqc = maxc == minc
    crange = maxc - minc
    ones = torch.ones_like(maxc)
    s = crange / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, crange).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / div).unbind(1)
    neq_r = maxc != r
    eq_g = maxc == g
    h = (bc - gc).mul_(~neq_r)  # the red sector
    h.add_(rc.add(2.0).sub_(bc).mul_(eq_g & neq_r))  # green
    h.add_(gc.add(4.0).sub_(rc).mul_(neq_r & ~eq_g))  # blue
    h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    h.add_(factor.view(n, 1, 1)).remainder_(1.0)
    # HSV -> RGB, with v = maxc
    h6 = h.mul_(6)
    sector = torch.floor(h6)
    f = h6.sub_(sector)
    sxf = s * f
    one_minus_s = torch.sub(1.0, s)
    q = torch.sub(1.0, sxf).mul_(maxc).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(maxc).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(maxc).clamp_(0.0, 1.0)
    sector = sector.to(torch.int64).remainder_(6)
    vpqt = torch.stack((maxc, p, q, t), dim=1)
    pick = _select(images.device)[:, sector].movedim(0, 1)  # [n, 3, H, W]
    rgb = vpqt.gather(1, pick)
    return rgb.mul_(255.0 + 1.0 - 1e-3).to(torch.uint8)


def hue(images: Tensor, factor: Tensor, rows: Tensor) -> Tensor:
    """``adjust_hue`` of the images ``images[rows]``, in place (``images``: contiguous uint8
    ``[B, C, H, W]``; ``rows``: host int64; ``factor``: host float32, one per row, in
    ``[-0.5, 0.5]``). One channel: the identity (as torchvision)."""
    if images.shape[1] == 1 or rows.numel() == 0:
        return images
    return kernels_for(images.device)["transform.hue"](images, factor, rows)


@register_kernel("transform.hue", "cpu", "native")
def _hue_native(images: Tensor, factor: Tensor, rows: Tensor) -> Tensor:
    _native_ops.hue(images, images, factor, rows)  # straight on the rows: no gather
    return images


@register_kernel("transform.hue", "any", "torch")
def _hue_rows_torch(images: Tensor, factor: Tensor, rows: Tensor) -> Tensor:
    pack = HostPack()
    slots = pack.add(rows), pack.add(factor.to(torch.float32))
    moved = pack.to(images.device)  # one pinned, non-blocking copy
    dev_factor = moved[slots[1]]
    return run_rows(
        lambda part: part.copy_(_hue_torch(part, dev_factor)), images, rows, moved[slots[0]]
    )


def gaussian_taps(kernel_size: int, sigma: Tensor) -> Tensor:
    """float32 ``[n, kernel_size]``: torchvision's 1-D Gaussian kernel of each sigma
    (``softmax(-(x / sigma)^2)`` over ``x = linspace(-lim, lim)``, ``lim = (k - 1) / (2 sqrt 2)``),
    row by row with the same float32 operations."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32)
    sigma = sigma.to(torch.float32).view(-1, 1)
    return torch.softmax(x.view(1, -1).div(sigma).pow(2).neg(), dim=1)


def _pass(x: Tensor, taps: Tensor, dim: int, span: int | None) -> Tensor:
    """One 1-D pass along ``dim`` (-1 or -2) of reflect-padded float32 ``x``: taps in order,
    each a separate multiply and add. ``span``: the first tap that is not zero in every row
    (host int; zero taps change nothing, so the edges where all rows are zero are skipped)."""
    k = taps.shape[1]
    size = x.shape[dim] - (k - 1)
    w = taps.view(-1, 1, 1, 1, k).unbind(-1)
    first = 0 if span is None else span
    acc = x.narrow(dim, first, size) * w[first]
    for j in range(first + 1, k - first):
        acc.add_(x.narrow(dim, j, size) * w[j])
    return acc


def first_live_tap(taps: Tensor) -> int:
    """The first tap that is not zero in every row (host taps; the centre at least)."""
    live = (taps != 0).any(0).nonzero()
    return int(live[0]) if live.numel() else taps.shape[1] // 2


def _blur_torch(
    images: Tensor, taps_x: Tensor, taps_y: Tensor, spans: tuple[int, int] | None = None
) -> Tensor:
    rx, ry = taps_x.shape[1] // 2, taps_y.shape[1] // 2
    sx, sy = spans if spans is not None else (None, None)
    x = pad(images.to(torch.float32), [rx, rx, 0, 0], mode="reflect")
    x = _pass(x, taps_x, -1, sx)
    x = pad(x, [0, 0, ry, ry], mode="reflect")
    x = _pass(x, taps_y, -2, sy)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def blur(
    images: Tensor,
    taps_x: Tensor,
    taps_y: Tensor,
    out: Tensor,
    spans: tuple[int, int] | None = None,
) -> Tensor:
    """Gaussian blur of uint8 ``[n, C, H, W]`` with per-sample float32 taps ``[n, kx]`` along
    the width and ``[n, ky]`` along the height (odd sizes, on the images' device) into ``out``
    (may be ``images``). Reflect padding needs ``kx // 2 < W`` and ``ky // 2 < H``.
    ``spans``: per axis, the first tap not zero in every row (host ints; the torch route skips
    the edge taps before it, which changes nothing)."""
    h, w = images.shape[-2:]
    kx, ky = taps_x.shape[1], taps_y.shape[1]
    if kx // 2 >= w or ky // 2 >= h:
        raise ValueError(
            f"a {kx}x{ky} blur kernel needs images larger than {kx // 2}x{ky // 2} for reflect "
            f"padding, got {w}x{h}"
        )
    if images.numel() == 0:
        return out
    return kernels_for(images.device)["transform.blur"](images, taps_x, taps_y, out, spans)


@register_kernel("transform.blur", "cpu", "native")
def _blur_native(images: Tensor, taps_x: Tensor, taps_y: Tensor, out: Tensor, spans) -> Tensor:  # noqa: ANN001
    _native_ops.blur(images.contiguous(), out, taps_x, taps_y)
    return out


@register_kernel("transform.blur", "cpu", "torch")
def _blur_host(images: Tensor, taps_x: Tensor, taps_y: Tensor, out: Tensor, spans) -> Tensor:  # noqa: ANN001
    # One image at a time: the float temporaries stay cache-resident (several times faster
    # than whole-batch passes); the same operations per image.
    for i in range(images.shape[0]):
        tx, ty = taps_x[i : i + 1], taps_y[i : i + 1]
        own = (first_live_tap(tx), first_live_tap(ty))  # this image's zero edge taps
        out[i : i + 1].copy_(_blur_torch(images[i : i + 1], tx, ty, own))
    return out


@register_kernel("transform.blur", "any", "torch")
def _blur_device(images: Tensor, taps_x: Tensor, taps_y: Tensor, out: Tensor, spans) -> Tensor:  # noqa: ANN001
    return out.copy_(_blur_torch(images, taps_x, taps_y, spans))
