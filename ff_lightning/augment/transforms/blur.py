"""Routed Gaussian blurs, one sigma per sample.

- :class:`GaussianBlur`: torchvision's (a sampled Gaussian kernel of the size given, reflect
  padding);
- :class:`PillowGaussianBlur`: Pillow's ``ImageFilter.GaussianBlur(radius=sigma)`` (three
  extended box passes per axis, edges repeated), drawn as lightly's ``GaussianBlur(prob,
  sigmas)`` draws it. It runs the Pillow-exact box passes the timm policies use
  (:mod:`ff_lightning.augment.pil_ops`): the same bytes as Pillow on either route.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ff_lightning.augment import pil_ops, rng
from ff_lightning.augment._device import HostPack
from ff_lightning.augment.transforms import _kernels
from ff_lightning.augment.transforms.base import (
    COSTS,
    FIRST_STREAM,
    GatedTransform,
    RoutedTransform,
    named,
    uniform_in,
)
from ff_lightning.augment.transforms.record import Record
from ff_lightning.errors import ConfigError

__all__ = ["TAP_FLOOR", "GaussianBlur", "PillowGaussianBlur"]

#: Taps below this weight are set to zero: below float32's resolution of the kernel's unit
#: sum, so dropping them moves an output by at most ~1e-5 levels (measured mean absolute
#: difference to torchvision's 2-D kernel unchanged at ~3e-5 levels), and a zero tap is
#: skipped by every route (``acc + 0 * x == acc``). At 224 px with a 23-tap kernel and sigma
#: in (0.1, 2), 9.9 taps remain on average instead of 17.6.
TAP_FLOOR = 2.0**-24


def _kernel_size(value: object) -> tuple[int, int]:
    """torchvision's ``kernel_size``: an int or a sequence of 1 or 2 ints, odd and positive;
    ``(kx, ky)`` (width, height)."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 2):
        pair = (value[0], value[-1])
    else:
        raise ConfigError(
            f"`kernel_size` must be an int or a sequence of 1 or 2 ints, got {value!r}"
        )
    for k in pair:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0 or k % 2 == 0:
            raise ConfigError(f"`kernel_size` values must be odd positive integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def _sigma(value: object) -> tuple[float, float]:
    """torchvision's ``sigma``: a number, or a sequence of 1 or 2 numbers ``(min, max)`` with
    ``0 < min <= max``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 2):
        try:
            pair = (float(value[0]), float(value[-1]))
        except (TypeError, ValueError):
            raise ConfigError(f"`sigma` must be numbers, got {value!r}") from None
    else:
        raise ConfigError(f"`sigma` must be a number or a pair (min, max), got {value!r}")
    if not 0.0 < pair[0] <= pair[1] < float("inf"):
        raise ConfigError(f"`sigma` must be positive and of the form (min, max), got {value!r}")
    return pair


def blur_taps(kernel_size: int, sigma: Tensor) -> Tensor:
    """float32 ``[n, kernel_size]`` host taps of each sigma, those below :data:`TAP_FLOOR`
    set to zero."""
    taps = _kernels.gaussian_taps(kernel_size, sigma)
    return taps.masked_fill_(taps < TAP_FLOOR, 0.0)


class GaussianBlur(RoutedTransform):
    """torchvision's ``GaussianBlur(kernel_size, sigma=(0.1, 2.0))``: a sigma per sample,
    uniform in ``sigma``, the same along both axes; reflect padding.

    Record: ``sigma`` float32 ``[B]``. Images must be larger than half the kernel (as for
    torchvision's reflect padding).
    """

    num_draws = 1

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        sigma: float | Sequence[float] = (0.1, 2.0),
        *,
        stream: int = FIRST_STREAM,
    ) -> None:
        super().__init__(stream=stream)
        with named(self.name):
            self.kernel_size = _kernel_size(kernel_size)
            self.sigma = _sigma(sigma)

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        return Record({"sigma": uniform_in(words[:, 0], *self.sigma)}, len(idx))

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        sigma = rec["sigma"]
        kx, ky = self.kernel_size
        taps_x = blur_taps(kx, sigma)
        taps_y = taps_x if ky == kx else blur_taps(ky, sigma)
        spans = (
            _kernels.first_live_tap(taps_x),
            _kernels.first_live_tap(taps_y),
        )  # host: the edge taps every row skips
        if x.device.type != "cpu":
            pack = HostPack()
            slots = pack.add(taps_x), pack.add(taps_y)
            moved = pack.to(x.device)  # one pinned, non-blocking copy
            taps_x, taps_y = moved[slots[0]], moved[slots[1]]
        return _kernels.blur(x, taps_x, taps_y, x, spans)

    def _cost(self, rec: Record) -> Tensor:
        # per non-zero tap of each pass: the native loop sums only those
        kx, ky = self.kernel_size
        taps = (blur_taps(kx, rec["sigma"]) != 0).sum(1) + (blur_taps(ky, rec["sigma"]) != 0).sum(1)
        return taps.to(torch.float32) * COSTS["blur_tap"]

    def _extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"


class PillowGaussianBlur(GatedTransform):
    """Pillow's ``ImageFilter.GaussianBlur(radius=sigma)`` with probability ``p`` per sample,
    ``sigma`` uniform in ``sigmas``: lightly's ``GaussianBlur(prob=p, sigmas=sigmas)``.

    Record: ``applied`` bool ``[B]`` and ``sigma`` float32 ``[B]`` (Pillow takes the radius as
    a C float). Pillow's box passes on both routes, so a sample's pixels equal
    ``image.filter(ImageFilter.GaussianBlur(sigma))`` for its drawn sigma.
    """

    num_draws = 2

    def __init__(
        self,
        sigmas: float | Sequence[float] = (0.2, 2.0),
        p: float = 0.5,
        *,
        stream: int = FIRST_STREAM,
    ) -> None:
        super().__init__(p, stream=stream)
        with named(self.name):
            if isinstance(sigmas, (int, float)) and not isinstance(sigmas, bool):
                sigmas = (sigmas, sigmas)
            try:
                lo, hi = (float(v) for v in sigmas)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise ConfigError(f"`sigmas` must be a pair (min, max), got {sigmas!r}") from None
            if not 0.0 <= lo <= hi < float("inf"):
                raise ConfigError(
                    f"`sigmas` must be (min, max) with 0 <= min <= max, got {sigmas!r}"
                )
            self.sigmas = (lo, hi)

    @property
    def unit_cost(self) -> float:  # type: ignore[override]
        return pil_ops.COST["GaussianBlur"]

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        applied = rng.bits_to_uniform(words[:, 0], torch.float64) < self.p
        sigma = uniform_in(words[:, 1], *self.sigmas)
        return Record({"applied": applied, "sigma": sigma}, len(idx))

    def _apply_rows(self, x: Tensor, rows: Tensor, rec: Record) -> Tensor:
        blur_op = pil_ops.OP_ID["GaussianBlur"]
        sigmas = rec["sigma"].tolist()  # host record
        calls = [(pil_ops.OP_ID["Identity"], (), 0)] * len(rec)
        for i in rows.tolist():
            calls[i] = (blur_op, (sigmas[i],), 0)
        return pil_ops.apply_slot(x, x, calls, fill=(0,))

    def _extra_repr(self) -> str:
        return f"sigmas={self.sigmas}, p={self.p}"
