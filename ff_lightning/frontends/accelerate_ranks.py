"""The accelerator as :class:`~ff_lightning.frontends.accelerate.FusionAccelerate` sees it:
world size, rank, main process, devices and the cross-rank reductions of the statistics.

Duck-typed: ``accelerate`` is never imported. ``accelerator=None`` is a single process on the
CPU (or the device given); any object with ``device``, ``num_processes``, ``reduce`` (and
``gather`` for the minimum) stands in for an ``Accelerator``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ff_lightning.errors import ConfigError

__all__ = [
    "all_mean",
    "all_min",
    "is_main",
    "rank",
    "reduce_device",
    "resolve_device",
    "shard_eval_loader",
    "shard_train_loader",
    "world_size",
]


def world_size(acc: Any) -> int:
    return int(getattr(acc, "num_processes", 1)) if acc is not None else 1


def rank(acc: Any) -> int:
    return int(getattr(acc, "process_index", 0) or 0) if acc is not None else 0


def is_main(acc: Any) -> bool:
    return bool(getattr(acc, "is_main_process", True)) if acc is not None else True


def resolve_device(
    device: torch.device | str | None, current: torch.device | None, acc: Any
) -> torch.device:
    """``device`` if given, else the one already in use, else the accelerator's, else CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"`device` must be a torch.device or a name like 'cuda:0', got {device!r}"
            ) from None
    if current is not None:
        return current
    if acc is not None:
        return torch.device(acc.device)
    return torch.device("cpu")


def reduce_device(acc: Any) -> torch.device:
    """Where the reduced statistics live."""
    return torch.device(acc.device) if acc is not None else torch.device("cpu")


def all_mean(acc: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The mean over ranks (``None`` with one process)."""
    if world_size(acc) <= 1:
        return None
    return lambda t: acc.reduce(t, reduction="mean")


def all_min(acc: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The minimum over ranks (``None`` with one process, or without ``gather``)."""
    # Accelerate's reduce has no minimum: gather every rank's value instead.
    if world_size(acc) <= 1 or not hasattr(acc, "gather"):
        return None
    return lambda t: acc.gather(t).min()


def shard_train_loader(loader: Any, dataset: Any, acc: Any, seed: int) -> Any:
    """The routed training loader, sampling one shard per rank when there are several."""
    world = world_size(acc)
    if world > 1:
        # One shard per rank, padded to equal length so that every rank runs the same
        # number of steps and reaches each decision (a collective) together. The
        # routed batch sampler reads the epoch from it, as with Lightning's injection.
        from torch.utils.data import DistributedSampler

        loader.batch_sampler.sampler = DistributedSampler(
            dataset,
            num_replicas=world,
            rank=int(acc.process_index),
            shuffle=True,
            seed=seed,
        )
    return loader


def shard_eval_loader(loader: Any, acc: Any) -> Any:
    """An evaluation loader sharded by ``accelerator.prepare_data_loader`` when there are
    several processes (so ``gather_for_metrics`` drops the padding samples)."""
    if world_size(acc) > 1:
        return acc.prepare_data_loader(loader, device_placement=False)
    return loader
