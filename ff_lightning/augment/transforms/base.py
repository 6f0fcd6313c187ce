"""The routed-transform protocol and what its implementations share.

A routed transform is a per-sample augmentation that both routes apply with batched kernels:

- ``sample(indices, epoch, seed) -> Record``: the parameters of each sample, drawn from the
  counter-based RNG (:mod:`ff_lightning.augment.rng`) keyed by ``(seed, epoch, stream,
  index)`` alone, so a sample's record is the same in any batch, process or route.
- ``apply_batch(images, record)``: uint8 ``[B, C, H, W]`` (``C`` = 1 or 3) on any device,
  each sample with its own record; samples are grouped by kernel on the host.
- ``apply_one(image, record_i)``: one CPU image (the worker route), through the same kernels.
- ``estimate_cost(record)``: relative CPU cost per sample (routing sends the costliest to the
  device).

It is the protocol of :class:`~ff_lightning.augment.policy.Policy`, with a
:class:`~ff_lightning.augment.transforms.record.Record` as the record. Every transform owns a
``stream`` id (ids below :data:`FIRST_STREAM` are reserved by :mod:`ff_lightning.augment.rng`);
a chain hands its members distinct ids so that two members never draw the same numbers.

Device readiness: ``apply_batch`` plans its groups from the host-side record (``record.to
("cpu")`` is a no-op for the host records the pipeline passes; a device record costs one
synchronisation there) and sends small host tensors with :func:`~ff_lightning.augment._device.h2d`
(pinned, non-blocking). No kernel reads a device value on the host.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import rng
from ff_lightning.augment._device import h2d
from ff_lightning.augment.transforms.record import Record
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_images, check_int, check_probability

__all__ = [
    "COSTS",
    "FIRST_STREAM",
    "GatedTransform",
    "RoutedTransform",
    "check_images",
    "check_range",
    "named",
    "permutations",
    "rows_of",
    "run_rows",
    "uniform_in",
]

#: The first stream id a routed transform may use (lower ids are reserved by ``rng``).
FIRST_STREAM = 16

#: Relative CPU cost per applied sample of the kernels the op registry does not have, in the
#: registry's unit (Brightness at 224 px = 1; the registry's ops keep their own ``cost``).
#: Measured on one thread at 224 px with ``recipes/benchmark_transforms.py --costs``.
COSTS = {
    "hue": 4.3,
    "blur_tap": 0.2,  # per non-zero tap of each 1-D pass
    "grayscale": 0.4,
    "flip": 0.5,
    "warp_nearest": 7.0,
    "warp_bilinear": 45.0,
    "quarter_turn": 0.5,
}


@contextlib.contextmanager
def named(transform: str) -> Iterator[None]:
    """Prefix the message of a :class:`ConfigError` raised inside with the transform's name."""
    try:
        yield
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith(f"{transform}:"):
            raise
        raise ConfigError(f"{transform}: {msg}") from None


def rows_of(mask: Tensor) -> Tensor:
    """Host int64 positions where the host bool ``mask`` is set (records are planned on the
    host: this never reads a device value)."""
    return mask.nonzero().view(-1)


def _row_view(x: Tensor) -> Tensor:
    """Contiguous ``x`` as ``[B, N]`` rows of int32 where the row length allows (row gathers
    and scatters copy element by element on CPU: 4-byte elements are several times faster)."""
    rows = x.view(x.shape[0], -1)
    if rows.shape[1] % 4 == 0 and rows.storage_offset() % 4 == 0:
        return rows.view(torch.int32)
    return rows


def run_rows(
    fn: Callable[[Tensor], Tensor], x: Tensor, rows: Tensor, rows_dev: Tensor | None = None
) -> Tensor:
    """``x[rows] = fn(x[rows])`` for host int64 ``rows`` (sorted) of contiguous ``x``, in place;
    ``fn`` may write its argument. All rows: ``fn(x)`` itself (made contiguous), no gather or
    scatter.
    ``rows_dev``: the same rows on ``x``'s device when the caller moved them already."""
    n = int(rows.numel())
    if n == 0:
        return x
    if n == x.shape[0]:
        return fn(x).contiguous()  # as the subset path: the next op may write it in place
    # pinned, non-blocking: no synchronisation
    idx = rows_dev if rows_dev is not None else h2d(rows, x.device)
    part = _row_view(x).index_select(0, idx).view(torch.uint8).view(n, *x.shape[1:])
    done = fn(part).contiguous()
    _row_view(x).index_copy_(0, idx, _row_view(done))
    return x


def permutations(bits: Tensor, n: int) -> Tensor:
    """Uniform random permutations of ``range(n)``, int64 ``[B, n]``, from ``n - 1`` words per
    row (Fisher-Yates: step ``i`` swaps slot ``i`` with a uniform slot in ``[0, i]``)."""
    b = bits.shape[0]
    perm = torch.arange(n, dtype=torch.int64).repeat(b, 1)
    rows = torch.arange(b)
    for k, i in enumerate(range(n - 1, 0, -1)):
        j = rng.bits_to_randint(bits[:, k], i + 1)
        at_i = perm[:, i].clone()
        perm[:, i] = perm[rows, j]
        perm[rows, j] = at_i
    return perm


def uniform_in(bits: Tensor, low: float, high: float) -> Tensor:
    """float32 values uniform in ``[low, high]`` from 32-bit words (float32 like torchvision's
    ``torch.empty(1).uniform_(low, high)``)."""
    u = rng.bits_to_uniform(bits, torch.float64)
    return (low + (high - low) * u).to(torch.float32)


class RoutedTransform:
    """Base class of the routed transforms (see the module docstring for the protocol).

    Subclasses set ``num_draws`` (32-bit words drawn per sample from their stream) and
    implement :meth:`_sample` (host int64 indices, the words ``[B, num_draws]`` -> record
    tensors), :meth:`_run` (an owned uint8 batch it may write, the host record -> the result)
    and :meth:`_cost` (host record -> float32 ``[B]``).
    """

    num_draws: int = 0

    def __init__(self, *, stream: int = FIRST_STREAM) -> None:
        with named(type(self).__name__):
            self.stream = check_int("stream", stream, FIRST_STREAM)

    @property
    def name(self) -> str:
        return type(self).__name__

    # ---------------------------------------------------------------- sampling
    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Record:
        """The records of ``indices``: deterministic in ``(seed, epoch, stream, index)``."""
        idx = rng.as_indices(indices)
        words = rng.bits(seed, epoch, idx, self.stream, self.num_draws)
        return self._sample(idx, words, epoch, seed)

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        raise NotImplementedError

    def _assign_streams(self, first: int) -> int:
        """Take stream ``first`` (and the next ones for members); return the next free id."""
        self.stream = first
        return first + 1

    # ---------------------------------------------------------------- applying
    def _check(self, images: Tensor, record: Record, ndim: int) -> None:
        check_images(images, ndim)
        if not isinstance(record, Record):
            raise TypeError(f"`record` must be a Record, got {type(record).__name__}")
        n = images.shape[0] if ndim == 4 else 1
        if len(record) != n:
            raise ValueError(f"`record` has {len(record)} samples for {n} image(s)")

    def apply_batch(self, images: Tensor, record: Record) -> Tensor:
        """Transform uint8 ``[B, C, H, W]`` on its device, each sample with its own record.

        Returns a new tensor; ``images`` is never written.
        """
        self._check(images, record, 4)
        # The plan reads the record on the host: a no-op for host records (the pipeline's);
        # a device record is read back once here (a synchronisation).
        rec = record.to("cpu")
        x = images.contiguous()
        x = x.clone() if x is images else x  # owned: the kernels may write it in place
        if len(rec) == 0 or x.numel() == 0:
            return x
        return self._run(x, rec)

    def apply_one(self, image: Tensor, record: Record) -> Tensor:
        """Transform one uint8 ``[C, H, W]`` image with a record of length 1 (worker route):
        the batched kernels on a batch of one, so it equals the sample's ``apply_batch``."""
        self._check(image, record, 3)
        return self.apply_batch(image.unsqueeze(0), record)[0]

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        raise NotImplementedError

    def estimate_cost(self, record: Record) -> Tensor:
        """Relative CPU cost float32 ``[B]`` per sample (0 where nothing is applied), in the
        units of the op registry's costs (Brightness at 224 px = 1)."""
        return self._cost(record.to("cpu")).to(torch.float32)

    def _cost(self, rec: Record) -> Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------- misc
    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._extra_repr()
        return f"{self.name}({extra}{', ' if extra else ''}stream={self.stream})"


class GatedTransform(RoutedTransform):
    """A transform applied with probability ``p`` per sample (torchvision's
    ``_RandomApplyTransform``: applied when a uniform draw is below ``p``). Record:
    ``applied`` bool ``[B]``; subclasses implement :meth:`_apply_rows` on the applied rows."""

    num_draws = 1
    #: relative CPU cost of one applied sample at 224 px
    unit_cost: float = 1.0

    def __init__(self, p: float = 0.5, *, stream: int = FIRST_STREAM) -> None:
        super().__init__(stream=stream)
        with named(self.name):
            self.p = check_probability("p", p)

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        applied = rng.bits_to_uniform(words[:, 0], torch.float64) < self.p
        return Record({"applied": applied}, len(idx))

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        rows = rows_of(rec["applied"])
        if rows.numel() == 0:
            return x
        return self._apply_rows(x, rows, rec)

    def _apply_rows(self, x: Tensor, rows: Tensor, rec: Record) -> Tensor:
        raise NotImplementedError

    def _cost(self, rec: Record) -> Tensor:
        return rec["applied"].to(torch.float32) * self.unit_cost

    def _extra_repr(self) -> str:
        return f"p={self.p}"


def check_range(
    name: str,
    value: Any,
    *,
    center: float | None,
    low: float,
    high: float,
    clip_first: bool = False,
) -> tuple[float, float] | None:
    """torchvision's ``(min, max)`` argument: a number ``v`` is ``[center - v, center + v]`` (its
    low end clipped at 0 when ``clip_first``; ``v`` must be >= 0; ``center`` None: a number is
    not allowed), a pair is ``(min, max)``; both ends must lie in ``[low, high]`` and increase.
    ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and center is not None:
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"`{name}` must be a non-negative number or a pair, got {value!r}")
        pair = [center - value, center + value]
        if clip_first:
            pair[0] = max(pair[0], 0.0)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        try:
            pair = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(f"`{name}` must be a pair of numbers, got {value!r}") from None
    else:
        what = "a number or a pair (min, max)" if center is not None else "a pair (min, max)"
        raise ConfigError(f"`{name}` must be {what}, got {value!r}")
    if not (low <= pair[0] <= pair[1] <= high) or not all(math.isfinite(v) for v in pair):
        raise ConfigError(
            f"`{name}` must give an increasing range within [{low:g}, {high:g}], got {value!r}"
        )
    return float(pair[0]), float(pair[1])
