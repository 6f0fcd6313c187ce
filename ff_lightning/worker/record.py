"""The per-batch record that travels with a training batch from the worker to the device stage.

A training batch is ``{"images": uint8 [B, 3, S, S], "targets": int64 [B], "route": BatchRoute}``.
With ``device_decode`` on, the device-routed JPEGs travel still encoded in ``route.encoded``
(an :class:`~ff_lightning.worker.encoded.EncodedBatch`; their ``images`` slots hold zeros until
the device stage decodes them), so the bytes of different lengths need no collation.
:class:`BatchRoute` is built once, in the worker, and read by everyone downstream: the device
stage applies ``params`` to the samples at ``device_index``, and the controller reads ``stats``
(the worker fills its CPU stamps, the device stage its device fields, the front end the step
timings). It deliberately has no ``.to`` method and is not a collection, so Lightning's
``transfer_batch_to_device`` and the DataLoader's pin-memory thread leave it on the host: the
kernels plan their groups there, and reading device tensors back would synchronise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ff_lightning.augment.params import Params
from ff_lightning.control.controller import StepStats
from ff_lightning.worker.encoded import EncodedBatch

__all__ = ["BatchRoute", "by_value", "from_value", "is_training_batch"]

_BY_VALUE = ("indices", "device_index")
# Tensors up to this size leave a worker by value (see `by_value`).
_BY_VALUE_BYTES = 1 << 16


def by_value(v: Any) -> Any:
    """A small host tensor as a NumPy array, to be pickled by value; anything else as it is.

    A tensor leaving a DataLoader worker otherwise gets its own shared-memory segment, whose
    file descriptor the main process receives and maps (about 1.7 ms per tensor in the
    benchmark's profile on the 2-core machine); a few hundred bytes cost less copied.
    """
    if (
        isinstance(v, torch.Tensor)
        and v.device.type == "cpu"
        and v.numel() * v.element_size() <= _BY_VALUE_BYTES
    ):
        return v.numpy()
    return v


def from_value(v: Any) -> Any:
    """:func:`by_value` undone: a NumPy array back as a tensor (sharing its memory)."""
    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


class BatchRoute:
    """Host-side facts about one training batch.

    Attributes:
        indices: int64 ``[B]``, the dataset index of each batch position.
        epoch: the epoch the batch was drawn for.
        device_index: int64 ``[k]``, sorted batch positions the device augments.
        params: the policy parameters of those ``k`` samples (one batched record, in the
            order of ``device_index``); the CPU share was augmented in the worker.
        stats: the batch's :class:`~ff_lightning.control.controller.StepStats`.
        encoded: the device-routed samples the device decodes first (``None``: none, the
            worker decoded every sample).
    """

    __slots__ = ("device_index", "encoded", "epoch", "indices", "params", "stats")

    def __init__(
        self,
        indices: torch.Tensor,
        epoch: int,
        device_index: torch.Tensor,
        params: Params | None,
        stats: StepStats,
        encoded: EncodedBatch | None = None,
    ) -> None:
        self.indices = indices
        self.epoch = epoch
        self.device_index = device_index
        self.params = params
        self.stats = stats
        self.encoded = encoded

    @property
    def n_device(self) -> int:
        return int(self.device_index.numel())

    @property
    def device_mask(self) -> torch.Tensor:
        """bool ``[B]``: which positions take the device route."""
        mask = torch.zeros(len(self.indices), dtype=torch.bool)
        mask[self.device_index] = True
        return mask

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self.__slots__}
        for k in _BY_VALUE:  # the index tensors travel by value (see `by_value`)
            state[k] = by_value(state[k])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.encoded = None  # records pickled before the field existed
        for k, v in state.items():
            setattr(self, k, from_value(v) if k in _BY_VALUE else v)

    def __repr__(self) -> str:
        return (
            f"BatchRoute(batch={len(self.indices)}, n_device={self.n_device}, "
            f"epoch={self.epoch}, ratio={self.stats.ratio})"
        )


def is_training_batch(batch: Any) -> bool:
    """Whether ``batch`` is a FusionDataModule training batch (it carries a route)."""
    return isinstance(batch, dict) and isinstance(batch.get("route"), BatchRoute)
