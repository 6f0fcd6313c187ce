"""A training DataLoader that can resume in the middle of an epoch, without losing or
repeating a sample.

It implements Lightning's stateful-loader protocol (``state_dict`` / ``load_state_dict``, as
torchdata's ``StatefulDataLoader`` does). The state says where the epoch stood and what it
depended on: the epoch, the samples the loop has taken from it, the batch size, the dataset's
length, the shuffle seed and the number of ranks sharing the data. On restore the routed batch
sampler replays the same order (it depends on ``(seed, epoch)`` only), skips those samples
without loading them and batches the rest with the current batch size, so a resumed run trains
exactly the remaining samples of the epoch, each with the augmentation of its
``(epoch, index)``, even after a change of batch size. A different dataset length, seed or
rank count changes the order itself: resuming mid-epoch then is a
:class:`~ff_lightning.errors.ConfigError` (at an epoch boundary it is fine).

Lightning does not fetch ahead of a sized loader, so the batches this loader has yielded are
the batches the loop has taken. Lightning also restores how many batches of the interrupted
epoch it ran and ends the epoch when that count reaches the loader's length: a loader resumed
with another batch size therefore reports, for the resumed epoch, the batches already run plus
the remaining ones at the new size (the pipeline restores the position from the DataModule's
state, before Lightning asks for the length).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from ff_lightning.errors import ConfigError

__all__ = ["STATE_VERSION", "ResumableDataLoader"]

log = logging.getLogger("ff_lightning")

STATE_VERSION = 2  # 1: {"epoch", "batches"} (the batch size was assumed unchanged)


def _batch_len(batch: Any, default: int) -> int:
    targets = batch.get("targets") if isinstance(batch, dict) else None
    return int(targets.shape[0]) if targets is not None else default


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`~ff_lightning.pipeline.routing.RoutedBatchSampler` with a
    resumable position. Takes the ``DataLoader``'s arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position: tuple[int, int] | None = None  # (epoch, samples yielded in it)
        self._batches = 0  # batches yielded in that epoch
        self._resume_len: tuple[int, int] | None = None  # (epoch, length of the resumed epoch)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        bs = self.batch_sampler
        epoch = bs.current_epoch() if hasattr(bs, "current_epoch") else 0
        start = bs.pending_skip(epoch) if hasattr(bs, "pending_skip") else 0
        done = self._batches if start and self._position == (epoch, start) else 0
        return self._counting(super().__iter__(), epoch, start, done)

    def __len__(self) -> int:
        if self._resume_len is not None:
            epoch = self.batch_sampler.current_epoch()
            if epoch == self._resume_len[0]:
                return self._resume_len[1]
        return super().__len__()

    def _counting(self, it: Iterator[Any], epoch: int, start: int, done: int) -> Iterator[Any]:
        self._position, self._batches = (epoch, start), done
        samples = start
        default = int(getattr(self.batch_sampler, "batch_size", 1) or 1)
        for batch in it:
            samples += _batch_len(batch, default)
            self._position, self._batches = (epoch, samples), self._batches + 1
            yield batch
        self._resume_len = None  # the resumed epoch is over: lengths are plain again

    # ------------------------------------------------------------------ the order's facts
    def _facts(self) -> dict[str, int]:
        sampler = getattr(self.batch_sampler, "sampler", None)
        return {
            "batch_size": int(getattr(self.batch_sampler, "batch_size", 0) or 0),
            "dataset_len": len(self.dataset),  # type: ignore[arg-type]
            "seed": int(getattr(sampler, "seed", 0) or 0),
            "replicas": int(getattr(sampler, "num_replicas", 1) or 1),
        }

    def state_dict(self) -> dict[str, Any]:
        epoch, samples = self._position if self._position is not None else (0, 0)
        return {
            "version": STATE_VERSION,
            "epoch": int(epoch),
            "samples": int(samples),
            "batches": int(self._batches),
            **self._facts(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        facts = self._facts()
        try:
            epoch = int(state_dict["epoch"])
            if "samples" in state_dict:
                samples = int(state_dict["samples"])
                batches = int(state_dict.get("batches", 0))
            else:  # version 1: whole batches of the batch size it was saved with (this one)
                batches = int(state_dict["batches"])
                samples = batches * facts["batch_size"]
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                "the checkpoint's training-loader state must hold `epoch` and `samples` (or "
                f"`batches`), got {state_dict!r}; resume from a checkpoint written by ff_lightning"
            ) from None
        per_rank = -(-facts["dataset_len"] // max(facts["replicas"], 1))
        mid_epoch = 0 < samples < per_rank
        changed = [
            f"{key} {state_dict[key]} -> {facts[key]}"
            for key in ("dataset_len", "seed", "replicas")
            if key in state_dict and int(state_dict[key]) != facts[key]
        ]
        if mid_epoch and changed:
            raise ConfigError(
                f"cannot resume mid-epoch: the checkpoint stopped {samples} samples into epoch "
                f"{epoch}, and the sample order changed ({', '.join(changed)}), so samples "
                "would be lost or trained twice; resume from a checkpoint saved at an epoch "
                "boundary, or with the dataset, seed and rank count it was saved with"
            )
        old_bs = state_dict.get("batch_size")
        if mid_epoch and old_bs is not None and int(old_bs) != facts["batch_size"]:
            log.info(
                "ff_lightning: resuming epoch %d at sample %d with batch size %d (saved with %d)",
                epoch,
                samples,
                facts["batch_size"],
                int(old_bs),
            )
        bs = self.batch_sampler
        bs.set_epoch(epoch)
        bs.resume_at(epoch, samples)
        self._position, self._batches = (epoch, samples), batches
        if mid_epoch:
            left = max(per_rank - samples, 0)
            size = max(facts["batch_size"], 1)
            rest = left // size if getattr(bs, "drop_last", False) else -(-left // size)
            self._resume_len = (epoch, batches + rest)
