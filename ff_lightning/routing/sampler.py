"""Intra-batch routing in the main process.

The batch sampler tags every index of a batch ``cpu`` or ``device``: ``round(r * B)`` samples of
each batch take the device route. The ratio lives in a :class:`Router` shared by reference with
the callback, so a new ratio takes effect for the next batch the sampler emits, with no IPC to
the workers (the tags travel to the workers with the indices).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sized
from typing import Any, NamedTuple

import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler

STRATEGIES = ("costliest", "random")


class RoutedIndex(NamedTuple):
    """What a worker receives per sample: dataset index, route and epoch."""

    index: int
    on_device: bool
    epoch: int
    ratio: float = 0.0  # the router's ratio when the batch was emitted


class Router:
    """Holds the current device share and picks which samples of a batch go to the device.

    ``strategy="costliest"`` gives the device the samples whose augmentation is the most
    expensive on the CPU (as the FusionFlow paper does), using ``cost_fn(indices, epoch)``
    when one is set; ``"random"`` takes the first ``k`` of the (already shuffled) batch.
    """

    def __init__(
        self,
        ratio: float = 0.0,
        *,
        strategy: str = "costliest",
        cost_fn: Callable[[list[int], int], torch.Tensor] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.cost_fn = cost_fn
        self._ratio = 0.0
        self.ratio = ratio

    @property
    def ratio(self) -> float:
        return self._ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`ratio` must be in [0, 1], got {value}")
        self._ratio = value

    def n_device(self, batch_size: int) -> int:
        return int(round(self._ratio * batch_size))

    def assign(self, indices: list[int], epoch: int) -> list[bool]:
        """Route flags for one batch: ``True`` means the device augments that sample."""
        b = len(indices)
        k = self.n_device(b)
        if k <= 0:
            return [False] * b
        if k >= b:
            return [True] * b
        if self.strategy == "costliest" and self.cost_fn is not None:
            cost = self.cost_fn(indices, epoch)
            # Stable sort so ties keep batch order and the choice is deterministic.
            order = torch.sort(cost, descending=True, stable=True).indices[:k].tolist()
            flags = [False] * b
            for i in order:
                flags[i] = True
            return flags
        return [True] * k + [False] * (b - k)


class EpochSampler(RandomSampler):
    """Shuffling sampler with ``set_epoch`` whose order depends only on ``(seed, epoch)``.

    It subclasses ``RandomSampler`` so that Lightning sees a shuffled loader and, under DDP,
    injects a ``DistributedSampler(shuffle=True)`` (which reshuffles per epoch) in its place.
    """

    def __init__(self, data_source: Sized, *, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(data_source)  # type: ignore[arg-type]
        self.data_source = data_source
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        if not self.shuffle:
            return iter(range(n))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(n, generator=g).tolist())


class RoutedBatchSampler(BatchSampler):
    """A ``BatchSampler`` that yields :class:`RoutedIndex` tuples instead of plain indices.

    It subclasses ``BatchSampler`` and keeps ``sampler`` as its first argument so Lightning can
    inject a ``DistributedSampler`` under DDP; the router is passed by keyword and shared.
    """

    def __init__(
        self,
        sampler: Sampler[int] | list[int],
        batch_size: int,
        drop_last: bool,
        router: Router | None = None,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if router is None:
            warnings.warn(
                "RoutedBatchSampler was built without a `router`, so every batch stays on the CPU "
                "route; build the DataLoader inside a `*_dataloader` hook (as FusionDataModule "
                "does) so Lightning keeps the router when it injects a DistributedSampler",
                stacklevel=2,
            )
            router = Router(0.0)
        self.router = router
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _epoch(self) -> int:
        epoch = getattr(self.sampler, "epoch", None)
        return int(epoch) if epoch is not None else self._iterations

    def __iter__(self) -> Iterator[list[Any]]:  # type: ignore[override]
        epoch = self._epoch()
        self._iterations += 1
        for batch in super().__iter__():
            ratio = self.router.ratio
            flags = self.router.assign(batch, epoch)
            yield [RoutedIndex(i, f, epoch, ratio) for i, f in zip(batch, flags, strict=True)]
