"""A training DataLoader that can resume in the middle of an epoch.

It implements Lightning's stateful-loader protocol (``state_dict`` / ``load_state_dict``, as
torchdata's ``StatefulDataLoader`` does): the state is the epoch and the number of batches the
loop has taken from it. On restore, the routed batch sampler replays the same order (it depends
on ``(seed, epoch)`` only) and skips those batches without loading them, so a resumed run
trains exactly the remaining batches of the epoch, each with the augmentation of its
``(epoch, index)``.

Lightning does not fetch ahead of a sized loader, so the batches this loader has yielded are
the batches the loop has taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from ff_lightning.errors import ConfigError

__all__ = ["ResumableDataLoader"]


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`~ff_lightning.pipeline.routing.RoutedBatchSampler` with a
    resumable position. Takes the ``DataLoader``'s arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position: tuple[int, int] | None = None  # (epoch, batches yielded in it)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        bs = self.batch_sampler
        epoch = bs.current_epoch() if hasattr(bs, "current_epoch") else 0
        start = bs.pending_skip(epoch) if hasattr(bs, "pending_skip") else 0
        return self._counting(super().__iter__(), epoch, start)

    def _counting(self, it: Iterator[Any], epoch: int, start: int) -> Iterator[Any]:
        self._position = (epoch, start)
        for n, batch in enumerate(it, start + 1):
            self._position = (epoch, n)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self._position if self._position is not None else (0, 0)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                "the checkpoint's training-loader state must hold `epoch` and `batches`, got "
                f"{state_dict!r}; resume from a checkpoint written by ff_lightning"
            ) from None
        bs = self.batch_sampler
        bs.set_epoch(epoch)
        bs.resume_at(epoch, batches)
        self._position = (epoch, batches)
