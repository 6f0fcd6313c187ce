"""Intra-batch routing in the main process.

The batch sampler emits one :class:`RoutedBatch` per batch: the dataset indices, the epoch,
the device share ``r`` in force when the batch was emitted and ``n_device = round(r * B)``.
The share has one owner, the controller; the :class:`Router` only reads it (from any object
with a ``ratio`` attribute), so a new share takes effect for the next batch the sampler emits,
with no IPC to the workers and no copy to keep in sync.

Which samples of the batch take the device route is decided in the worker, which draws the
batch's augmentation parameters anyway: ``"costliest"`` sends the ``n_device`` samples whose
parameters are the most expensive on the CPU (as the FusionFlow paper does), ``"random"`` the
first ``n_device`` of the (already shuffled) batch. Neither changes what any sample looks like
(the parameters depend on ``(seed, epoch, index)`` alone), and neither draws anything twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized
from typing import Any, Protocol

import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler

from ff_lightning.pipeline.batch import RoutedBatch
from ff_lightning.validation import check_choice, check_float

__all__ = [
    "STRATEGIES",
    "EpochSampler",
    "FixedShare",
    "RoutedBatch",
    "RoutedBatchSampler",
    "Router",
    "ShareOwner",
]

STRATEGIES = ("costliest", "random")


class ShareOwner(Protocol):
    """Anything that owns the device share: the controller, or a :class:`FixedShare`."""

    @property
    def ratio(self) -> float: ...


class FixedShare:
    """A constant device share (a DataModule used without the FusionFlow callback)."""

    def __init__(self, ratio: float = 0.0) -> None:
        self.ratio = check_float("ratio", ratio, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"FixedShare({self.ratio:g})"


class Router:
    """Reads the device share from its owner and stamps it on each batch.

    ``owner``: any object with a ``ratio`` attribute in ``[0, 1]`` (the controller once the
    FusionFlow callback attaches, a :class:`FixedShare` before). ``strategy``: which samples
    of a batch the worker sends to the device (see :data:`STRATEGIES`).
    """

    def __init__(self, owner: ShareOwner | None = None, *, strategy: str = "costliest") -> None:
        self.strategy = check_choice("route_strategy", strategy, STRATEGIES)
        self.owner: ShareOwner = owner if owner is not None else FixedShare(0.0)

    def bind(self, owner: ShareOwner) -> None:
        """Read the share from ``owner`` from the next emitted batch on."""
        self.owner = owner

    @property
    def ratio(self) -> float:
        return float(self.owner.ratio)

    def route(self, indices: list[int], epoch: int) -> RoutedBatch:
        r = self.ratio
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"the device share must be in [0, 1], got {r!r} from {self.owner!r}")
        return RoutedBatch(tuple(indices), epoch, r, int(round(r * len(indices))), self.strategy)


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
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (1 << 64))  # any 63-bit seed
        return iter(torch.randperm(n, generator=g).tolist())


class RoutedBatchSampler(BatchSampler):
    """A ``BatchSampler`` that yields one :class:`RoutedBatch` per batch.

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
            router = Router()
        self.router = router
        self._iterations = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def current_epoch(self) -> int:
        """The epoch the next iteration draws (the sampler's, else a count of iterations)."""
        epoch = getattr(self.sampler, "epoch", None)
        return int(epoch) if epoch is not None else self._iterations

    def resume_at(self, epoch: int, samples: int) -> None:
        """Skip the first ``samples`` samples of the next iteration if it draws ``epoch``; the
        rest are batched with the current batch size (which may differ from the one that
        consumed the skipped samples)."""
        self._resume = (int(epoch), max(int(samples), 0))

    def pending_skip(self, epoch: int) -> int:
        """How many samples the next iteration skips when it draws ``epoch``."""
        return self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        epoch = self.current_epoch()
        skip = self.pending_skip(epoch)
        self._resume = None
        self._iterations += 1
        batch: list[int] = []
        for j, index in enumerate(self.sampler):
            if j < skip:  # skipped samples are neither routed nor loaded
                continue
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield self.router.route(batch, epoch)
                batch = []
        if batch and not self.drop_last:
            yield self.router.route(batch, epoch)

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
