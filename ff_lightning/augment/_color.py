"""Batched per-sample colour kernels reproducing torchvision v2's uint8 arithmetic.

Two kinds:

- **lookup tables.** Contrast, AutoContrast and Equalize map each pixel value through a
  function of the value and of per-image (AutoContrast, Equalize: per-channel) statistics.
  Their ``*_lut`` builders evaluate torchvision's arithmetic once on the 256 possible values
  from a :class:`TableStats` and return uint8 tables ``[n, 1 or C, 256]``; :func:`apply_luts`
  then maps the samples of all three ops in one gather (see ``ff_lightning.augment.groups``).
  On host images with the native loops (:mod:`ff_lightning.augment._native`) the statistics,
  the tables and the lookup are native, and Brightness, Posterize, Solarize and Invert join the
  same lookup through :func:`kernel_lut` (their direct kernels run on the 256 values). The
  builders register in the kernel table (``ff_lightning.augment.dispatch``) as ``"<Op>.table"``.
- **direct kernels.** Brightness, Posterize, Solarize and Invert (one or two cheap passes: with
  torch, a table's gather would cost more per pixel than they do), Color (blend with the luma)
  and Sharpness (3x3 blur) take contiguous uint8 ``images`` ``[B, C, H, W]`` and a contiguous
  uint8 ``out`` of the same shape that they fill; ``out`` may be ``images`` itself. On host
  images Color and Sharpness have native loops with the same arithmetic.

The float arithmetic follows torchvision operation by operation: float32, the same rounding,
``a * r + b * (1 - r)`` as one fused multiply-add like its ``add_(..., alpha=)``, truncation on
the way back to uint8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.functional import avg_pool2d

from ff_lightning.augment import _native
from ff_lightning.augment._device import device_cache, device_cache_dict
from ff_lightning.augment.dispatch import register_kernel

__all__ = [
    "TableStats",
    "apply_luts",
    "autocontrast_lut",
    "brightness",
    "color",
    "contrast_lut",
    "equalize_lut",
    "histograms",
    "invert",
    "kernel_lut",
    "lut_index",
    "posterize",
    "sharpness",
    "solarize",
]


def _cpu(t: Tensor) -> bool:
    """Whether ``t``'s kernels take their CPU formulation (the same values either way; tests
    switch it off to check the accelerator formulations on CPU values)."""
    return t.device.type == "cpu"


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _store(values: Tensor, out: Tensor) -> Tensor:
    """Truncate float32 ``values`` already clamped to ``[0, 255]`` into uint8 ``out``.

    Same result as ``.to(torch.uint8)`` (truncation toward zero). On CPU float -> int16 ->
    uint8 is vectorised and several times faster than the direct cast; elsewhere the direct
    cast is one kernel instead of two.
    """
    if not _cpu(values):
        return out.copy_(values)
    return out.copy_(values.to(torch.int16))


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` (shaped alike) are the same elements: an in-place call."""
    host = a.device.type == "cpu"  # device tensors: by identity (fake ones have no address)
    return a is b or (host and a.data_ptr() == b.data_ptr() and a.stride() == b.stride())


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


def color(images: Tensor, factor: Tensor, alpha: Tensor, out: Tensor) -> Tensor:
    """``adjust_saturation``: blend with the floored grayscale image (identity on one channel,
    as torchvision and PIL)."""
    if images.shape[1] == 1:
        return out.copy_(images)
    return _blend(images, _grayscale(images), factor, alpha, out)


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
    if _cpu(images):
        # Integer sums in int16: the fastest exact sum on CPU.
        x = images.to(torch.int16)
        rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]  # [B, C, H, W-2]
        box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # [B, C, H-2, W-2]
        centre = x[..., 1:-1, 1:-1]
        blurred = box.add_(centre, alpha=4).to(torch.float32).mul_(1.0 / 13.0).round_()
        centre_f = centre.to(torch.float32)
    else:
        # The same exact integer sum in two kernels instead of seven: a 3x3 sum pooling of
        # the float32 image (at most 9 * 255, exact), plus four times the centre.
        xf = images.to(torch.float32)
        centre_f = xf[..., 1:-1, 1:-1]
        box = avg_pool2d(xf, 3, stride=1, divisor_override=1)  # [B, C, H-2, W-2]
        blurred = box.add_(centre_f, alpha=4).mul_(1.0 / 13.0).round_()
    inner = centre_f.addcmul_(blurred.sub_(centre_f), _per_sample(alpha)).clamp_(0, 255)
    _store(inner, out[..., 1:-1, 1:-1])
    if not _same(out, images):  # in place, the borders are already there
        for border in (
            (Ellipsis, slice(0, 1), slice(None)),
            (Ellipsis, slice(-1, None), slice(None)),
            (Ellipsis, slice(1, -1), slice(0, 1)),
            (Ellipsis, slice(1, -1), slice(-1, None)),
        ):
            out[border] = images[border]
    return out


def brightness(images: Tensor, factor: Tensor, out: Tensor) -> Tensor:
    """``adjust_brightness`` with per-sample ``factor`` (float32 ``[B]``, non-negative)."""
    acc = torch.mul(images, _per_sample(factor))  # uint8 * float32: one float32 pass
    return _store(acc.clamp_(max=255), out)


def posterize(images: Tensor, out: Tensor, mask: Tensor) -> Tensor:
    """Keep the most significant bits: ``images & mask`` (uint8 ``[B]``)."""
    return torch.bitwise_and(images, _per_sample(mask), out=out)


def solarize(images: Tensor, out: Tensor, threshold: Tensor, flip: Tensor) -> Tensor:
    """Invert pixels ``>= threshold`` (uint8 ``[B]``) where ``flip`` (uint8 ``[B]``) is 255."""
    if not _cpu(images):
        hit = torch.mul(torch.ge(images, _per_sample(threshold)), _per_sample(flip))
        return torch.bitwise_xor(images, hit, out=out)
    # x >= t  <=>  max(x, t) == x; uint8 maximum/eq are vectorised on CPU, ge is not.
    hit = torch.maximum(images, _per_sample(threshold)).eq_(images)
    return torch.bitwise_xor(images, hit.mul_(_per_sample(flip)), out=out)


def invert(images: Tensor, out: Tensor) -> Tensor:
    """``255 - images``."""
    return torch.bitwise_not(images, out=out)


# ==================================================================== lookup tables
_RAMPS: dict[tuple[str, torch.dtype], Tensor] = {}
device_cache(_RAMPS.clear)


def _ramp(device: torch.device, dtype: torch.dtype = torch.uint8) -> Tensor:
    """``[1, 1, 256]``: every pixel value once, in ``dtype`` (kept per device: a constant)."""
    key = (str(device), dtype)
    ramp = _RAMPS.get(key)
    if ramp is None:
        ramp = torch.arange(256, dtype=torch.int64, device=device).to(dtype).view(1, 1, 256)
        _RAMPS[key] = ramp
    return ramp


class TableStats:
    """What a table builder may read of its ``n`` samples; each quantity is computed when first
    asked. ``images``: uint8 ``[n, C, H, W]``; ``hist``: int64 ``[n, C, 256]`` per-channel
    histograms; ``luma_mean``: float32 ``[n]`` (from ``luma_sum``, int64 ``[n]`` exact sums,
    when given). Which kernel computes each (native loops or torch) is the caller's choice
    (``ff_lightning.augment.groups``); builders only read them."""

    def __init__(
        self,
        n: int,
        channels: int,
        pixels: int,
        device: torch.device,
        images: Callable[[], Tensor],
        hist: Callable[[], Tensor],
        luma_sum: Callable[[], Tensor] | None = None,
    ) -> None:
        self.n, self.channels, self.pixels, self.device = n, channels, pixels, device
        self._images_fn, self._hist_fn = images, hist
        self._luma_sum = luma_sum
        self._images: Tensor | None = None
        self._hist: Tensor | None = None

    def images(self) -> Tensor:
        if self._images is None:
            self._images = self._images_fn()
        return self._images

    def hist(self) -> Tensor:
        if self._hist is None:
            self._hist = self._hist_fn()
        return self._hist

    def luma_mean(self) -> Tensor:
        """float32 ``[n]``: the mean of each image's floored luma, as CPU torch's ``mean``.

        CPU ``mean`` is the float32 sum divided once by the count; CUDA's multiplies the sum
        by ``fl(1 / N)``, which can differ by one ulp and move a Contrast table entry by one
        level between the routes. So the mean is written as that sum and that division on
        every device. The floored luma values are integers: below ``2**24`` their float32
        sum is exact whatever the summation order, so both routes get the same mean.
        """
        if self._luma_sum is not None and 255 * self.pixels < 1 << 24:
            return self._luma_sum().to(torch.float32).div_(self.pixels)
        return _grayscale(self.images()).sum(dim=(1, 2, 3)).div_(self.pixels)

    def minmax(self) -> tuple[Tensor, Tensor]:
        """Per-channel ``(lo, hi)`` ``[n, C]`` of the images."""
        images = self.images()
        return images.amin(dim=(2, 3)), images.amax(dim=(2, 3))


def histograms(index: Tensor, base: int, rows: int) -> Tensor:
    """int64 ``[rows, 256]`` histograms from :func:`lut_index` rows ``base:base + rows`` (their
    values are offset by ``256 * row``): one ``bincount`` (CPU) or ``index_add_`` (elsewhere,
    no synchronisation)."""
    top = (base + rows) * 256
    flat = index.reshape(-1)
    if _cpu(flat):
        hist = torch.bincount(flat, minlength=top)
    else:
        hist = torch.zeros(top, dtype=torch.int64, device=flat.device)
        hist.index_add_(0, flat, hist.new_ones(1).expand(flat.numel()))
    return hist[base * 256 :].view(rows, 256)


def kernel_lut(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The table of a pointwise direct kernel ``kernel(images, out, *params)``: the kernel run on
    the 256 values (the same arithmetic, so the same result per value). Tables depend on the
    parameters only, and are kept per device and parameter value (a policy draws few)."""
    cache: dict[tuple, Tensor] = device_cache_dict()

    def build(device: torch.device, params: tuple[Tensor, ...]) -> Tensor:
        n = params[0].shape[0] if params else 1
        ramp = _ramp(device).view(1, 1, 1, 256).expand(n, 1, 1, 256).contiguous()
        return kernel(ramp, torch.empty_like(ramp), *params).view(n, 1, 256)

    def lut(stats: TableStats, *params: Tensor) -> Tensor:
        dev = str(stats.device)
        values = zip(*(p.tolist() for p in params), strict=True) if params else [()] * stats.n
        keys = [(dev, *v) for v in values]
        todo = [key for key in dict.fromkeys(keys) if key not in cache]
        if todo:
            if len(cache) + len(todo) > 4096:
                cache.clear()
                todo = list(dict.fromkeys(keys))
            rows = torch.tensor([keys.index(key) for key in todo], dtype=torch.int64)
            built = build(stats.device, tuple(p.index_select(0, rows) for p in params))
            cache.update((key, built[k : k + 1]) for k, key in enumerate(todo))
        return torch.cat([cache[key] for key in keys])

    return lut


def _to_u8(values: Tensor) -> Tensor:
    """Truncate float32 table values clamped to ``[0, 255]`` to uint8 (see :func:`_store`)."""
    if not _cpu(values):
        return values.to(torch.uint8)
    return values.to(torch.int16).to(torch.uint8)


@register_kernel("Contrast.table", "any", "torch")
def contrast_lut(stats: TableStats, factor: Tensor, alpha: Tensor) -> Tensor:
    """``adjust_contrast``: blend each value with the mean of the image's floored luma."""
    n = stats.n
    mean = stats.luma_mean().view(n, 1, 1)
    acc = torch.mul(_ramp(stats.device), factor.view(n, 1, 1))  # uint8 * float32: [n, 1, 256]
    # A full row of the mean, as the image's plane of it in torchvision's ``_blend``.
    other = torch.empty_like(acc).copy_(mean.expand(n, 1, 256))
    acc.addcmul_(other, alpha.view(n, 1, 1))
    return _to_u8(acc.clamp_(0, 255))


@register_kernel("Contrast.table", "cpu", "native", float_loops=True)
def _contrast_lut_native(stats: TableStats, factor: Tensor, alpha: Tensor) -> Tensor:
    return _native.contrast_luts(stats.luma_mean(), factor, alpha, 1)


@register_kernel("AutoContrast.table", "any", "torch")
def autocontrast_lut(stats: TableStats) -> Tensor:
    """Stretch each channel of each image to the full ``[0, 255]`` range.

    ``(x - lo) / ((hi - lo) / 255)`` in float32, clamped and truncated (channels with
    ``hi == lo`` are left as they are): torchvision's float32 operations on every value.
    """
    lo, hi = stats.minmax()
    lo = lo.unsqueeze(-1).to(torch.float32)  # [n, C, 1]
    hi = hi.unsqueeze(-1).to(torch.float32)
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255).masked_fill_(flat, 1.0)
    lo = lo.masked_fill_(flat, 0.0)
    values = _ramp(stats.device, torch.float32)
    return _to_u8(values.sub(lo).div_(inv_scale).clamp_(0, 255))


@register_kernel("AutoContrast.table", "cpu", "native")
def _autocontrast_lut_native(stats: TableStats) -> Tensor:
    return _native.autocontrast_luts(stats.hist())


@register_kernel("Equalize.table", "any", "torch")
def equalize_lut(stats: TableStats) -> Tensor:
    """Histogram equalisation per channel with PIL's (and torchvision's) table scheme."""
    rows, npix = stats.n * stats.channels, stats.pixels
    hist = stats.hist().view(rows, 256)
    cum = hist.cumsum(dim=1, dtype=torch.int64)
    last = cum.argmax(dim=1, keepdim=True)  # first bin holding the total: last non-empty bin
    num_non_max = npix - hist.gather(1, last).to(torch.int64)
    step = num_non_max.div(255, rounding_mode="floor")  # [rows, 1]
    # Entry k from the count below k (the exclusive cumulative sum: entry 0 is 0 + step // 2,
    # which floors to 0 as torchvision's prepended zero does).
    lut = (
        cum.sub(hist)
        .add_(step.div(2, rounding_mode="floor"))
        .div_(step.clamp(min=1), rounding_mode="floor")
        .clamp_(0, 255)
    )
    # Channels with a single non-empty bin (step == 0) are left unchanged.
    identity = _ramp(stats.device, torch.int64).view(1, 256)
    return torch.where(step != 0, lut, identity).to(torch.uint8).view(stats.n, stats.channels, 256)


@register_kernel("Equalize.table", "cpu", "native")
def _equalize_lut_native(stats: TableStats) -> Tensor:
    return _native.equalize_luts(stats.hist(), stats.pixels)


# Pointwise ops' tables: their direct kernels run on the 256 values (torch, any device; the
# native lookup applies them).
register_kernel("Brightness.table", "any", "torch", kernel_lut(lambda x, o, f: brightness(x, f, o)))
register_kernel("Posterize.table", "any", "torch", kernel_lut(posterize))
register_kernel("Solarize.table", "any", "torch", kernel_lut(solarize))
register_kernel("Invert.table", "any", "torch", kernel_lut(invert))
register_kernel("hist", "cpu", "native", _native.hist)
register_kernel("luma_sum", "cpu", "native", _native.luma_sum, float_loops=True)
register_kernel("lut.apply", "cpu", "native", _native.lut_apply)


_OFFSETS: dict[tuple[int, str], Tensor] = {}
device_cache(_OFFSETS.clear)


def lut_index(images: Tensor) -> Tensor:
    """int32 ``[B * C, H * W]``: each pixel's value plus ``256 * (its image's row b * C + c)``,
    the position of its entry in the stacked tables ``[B, C, 256]``."""
    bsz, ch = images.shape[:2]
    rows = bsz * ch
    key = (rows, str(images.device))
    offsets = _OFFSETS.get(key)
    if offsets is None:
        if len(_OFFSETS) > 64:
            _OFFSETS.clear()
        offsets = torch.arange(0, rows * 256, 256, dtype=torch.int32, device=images.device)
        offsets = _OFFSETS.setdefault(key, offsets.view(rows, 1))
    # Widen, then add in place: two vectorised passes beat one type-promoting add.
    return images.view(rows, -1).to(torch.int32).add_(offsets)


def apply_luts(luts: Tensor, index: Tensor, out: Tensor) -> Tensor:
    """``out`` (uint8, ``index.numel()`` values) = ``luts.view(-1)[index]``: one gather."""
    torch.index_select(luts.view(-1), 0, index.view(-1), out=out.view(-1))
    return out
