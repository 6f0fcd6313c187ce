"""The batch record: everything that travels with one training batch, in one module.

A batch passes through four hands, and each reads or fills the same records:

- the **routed batch** (:class:`RoutedBatch`): what the sampler in the main process hands a
  DataLoader worker (dataset indices, epoch, the device share in force, how many samples take
  the device route);
- the **route record** (:class:`BatchRoute`): built once in the worker, read by the device
  stage (which samples to augment, with which parameters) and by the controller (``stats``);
- the **encoded share** (:class:`EncodedBatch`): with ``device_decode`` on, the device-routed
  JPEGs that leave the worker still encoded;
- the **step statistics** (:class:`StepStats`): stamped by the worker (CPU seconds), the device
  stage (device count, H2D time) and the front end (data wait, step time), read by the
  controller.

A training batch is ``{"images": uint8 [B, C, S, S], "targets": int64 [B], "route": BatchRoute}``;
with views (multi-view training) ``images`` is a list with one uint8 ``[n_g * B, C, S_g, S_g]``
tensor per view group (its ``n_g`` views one after the other) and ``route`` a
:class:`ViewsRoute` holding one :class:`BatchRoute` per group.
With ``device_decode`` on, the device-routed JPEGs travel still encoded in ``route.encoded``
(their ``images`` slots hold zeros until the device stage decodes them), so the bytes of
different lengths need no collation. :class:`BatchRoute` and :class:`EncodedBatch`
deliberately have no tensor ``.to`` and are not collections, so Lightning's
``transfer_batch_to_device`` and the DataLoader's pin-memory thread leave them on the host:
the kernels plan their groups there, and reading device tensors back would synchronise.

This module imports nothing else of the package, so a DataLoader worker that builds these
records imports neither the controller nor the device side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from ff_lightning.augment.params import Params
    from ff_lightning.pipeline.jpeg import JpegHeader

__all__ = [
    "BatchRoute",
    "RawBatch",
    "EncodedBatch",
    "RoutedBatch",
    "StepStats",
    "ViewsRoute",
    "by_value",
    "from_value",
    "is_training_batch",
]


# ==================================================================== the sampler's record
@dataclass(frozen=True)
class RoutedBatch:
    """What the sampler hands the worker for one batch (picklable, a few dozen bytes)."""

    indices: tuple[int, ...]
    epoch: int
    ratio: float  # the owner's share when the batch was emitted
    n_device: int  # round(ratio * len(indices)) samples take the device route
    strategy: str = "costliest"

    def __len__(self) -> int:
        return len(self.indices)

    def device_positions(self, cost: torch.Tensor | None) -> torch.Tensor:
        """Sorted batch positions (int64) of the device-routed samples.

        ``cost``: per-sample CPU cost (float ``[B]``) for ``"costliest"``; ties keep batch
        order so the choice is deterministic. ``None`` (or ``"random"``): the first
        ``n_device`` positions.
        """
        b, k = len(self.indices), self.n_device
        if k <= 0:
            return torch.zeros(0, dtype=torch.long)
        if k >= b or self.strategy == "random" or cost is None:
            return torch.arange(min(k, b))
        order = torch.sort(cost, descending=True, stable=True).indices[:k]
        return order.sort().values


# ==================================================================== step statistics
@dataclass
class StepStats:
    """What was measured for one training step, filled in stage by stage.

    The worker's collate sets ``batch_size``, ``cpu_aug_s``, ``prep_s`` and ``ratio``; the
    device stage sets ``n_device``, ``device_aug_s`` and ``h2d_s``; the front end sets
    ``data_wait_s``, ``step_s`` and ``num_workers``. Every field has a default so the record
    can start empty; :meth:`check` validates the finished record (the controller calls it).

    With views (multi-view training) the routed unit is one view of one sample, and the counts
    are in samples' worth of work: each view weighs its pixels over the pixels of all the
    views of a sample, so ``batch_size`` is still the number of samples, and ``n_device`` and
    ``n_cpu`` (floats then) are the share of the batch's photometric work (a 96 px view counts
    less than a 224 px one) each route did. The controller's per-sample costs stay per sample.

    Args:
        batch_size: samples in the batch.
        n_device: samples augmented on the device this step (with views: samples' worth).
        data_wait_s: seconds the loop waited for the DataLoader.
        step_s: wall time of the whole step, wait included.
        device_aug_s: device augmentation time for the routed share.
        cpu_aug_s: worker CPU seconds spent augmenting this batch's CPU-routed samples, if the
            workers stamp it (``None`` otherwise; the controller then infers ``c`` from waits).
        n_cpu: samples augmented by the workers (:meth:`check` fills in
            ``batch_size - n_device`` when ``None``).
        num_workers: DataLoader workers (0: loading runs in the main process, no overlap).
        h2d_s: host-to-device copy time, if measured (reported only).
        ratio: the ratio the router used for this batch, if it reports it. It lets the
            controller skip batches routed before the last change exactly; without it a batch
            counts as routed with the current ratio when ``n_device`` is within one sample of
            ``ratio * batch_size``.
        prep_s: worker CPU seconds spent on the route-independent work of the whole batch
            (decode, crop), if stamped. With ``cpu_aug_s`` it gives the loader's sustainable
            speed and its fixed cost directly, instead of inferring them from waits.
    """

    batch_size: int = 0
    n_device: float = 0
    data_wait_s: float = 0.0
    step_s: float = 0.0
    device_aug_s: float = 0.0
    cpu_aug_s: float | None = None
    n_cpu: float | None = None
    num_workers: int = 0
    h2d_s: float | None = None
    ratio: float | None = None
    prep_s: float | None = None

    def check(self) -> StepStats:
        """Validate the finished record and fill in ``n_cpu``; returns ``self``."""
        if self.batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive, got {self.batch_size}")
        if not 0 <= self.n_device <= self.batch_size:
            raise ValueError(
                f"`n_device` must be in [0, batch_size={self.batch_size}], got {self.n_device}"
            )
        if self.step_s < 0 or self.data_wait_s < 0 or self.device_aug_s < 0:
            raise ValueError("`step_s`, `data_wait_s` and `device_aug_s` must be non-negative")
        if self.n_cpu is None:
            self.n_cpu = self.batch_size - self.n_device
        return self


# ==================================================================== the encoded share
class EncodedBatch:
    """The device-routed samples of one batch that the device decodes, in batch order.

    Attributes:
        positions: int64 ``[m]``, their batch positions (a subset of the route's
            ``device_index``; the ``images`` slots there hold zeros until decoded).
        indices: int64 ``[m]``, their dataset indices (for the fallback's messages and the
            source's ``on_error``).
        data: uint8 ``[N]``, every file's bytes end to end; ``starts``/``lengths`` (int64
            ``[m]``) locate each one.
        sizes: int64 ``[m, 2]``, stored height and width from the header (the decoder's
            output before orientation; the memory guard budgets ``H * W * 3`` bytes each).
        orientation: int64 ``[m]``, EXIF orientation (1-8).
        boxes: int64 ``[m, 4]``, the crop ``(top, left, height, width)`` in oriented coordinates.
        flips: bool ``[m]``.
        size: side of the output.
        crop: ``(seed, epoch, scale, ratio)`` of the random resized crop, to draw the box of a
            replacement sample (a corrupt file under ``on_error="skip"``) as the worker would.
        fallbacks: device-routed samples of this batch the worker decoded itself (not a
            device-decodable JPEG); counted by the device stage.

    Like :class:`~ff_lightning.pipeline.batch.BatchRoute` it stays on the host. Indexing by an
    index tensor gives the record of those samples (the memory guard's chunks); ``.to`` is the
    identity (the decoder copies the bytes itself).
    """

    __slots__ = (
        "boxes",
        "crop",
        "data",
        "fallbacks",
        "flips",
        "indices",
        "lengths",
        "orientation",
        "positions",
        "size",
        "sizes",
        "starts",
    )

    def __init__(
        self,
        *,
        positions: torch.Tensor,
        indices: torch.Tensor,
        data: torch.Tensor,
        starts: torch.Tensor,
        lengths: torch.Tensor,
        sizes: torch.Tensor,
        orientation: torch.Tensor,
        boxes: torch.Tensor,
        flips: torch.Tensor,
        size: int,
        crop: tuple[int, int, tuple[float, float], tuple[float, float]],
        fallbacks: int = 0,
    ) -> None:
        self.positions = positions
        self.indices = indices
        self.data = data
        self.starts = starts
        self.lengths = lengths
        self.sizes = sizes
        self.orientation = orientation
        self.boxes = boxes
        self.flips = flips
        self.size = int(size)
        self.crop = crop
        self.fallbacks = int(fallbacks)

    @classmethod
    def build(
        cls,
        *,
        positions: Sequence[int],
        indices: Sequence[int],
        files: Sequence[bytes],
        headers: Sequence[JpegHeader],
        boxes: Sequence[tuple[int, int, int, int]],
        flips: Sequence[bool],
        size: int,
        crop: tuple[int, int, tuple[float, float], tuple[float, float]],
        fallbacks: int = 0,
    ) -> EncodedBatch:
        lengths = torch.tensor([len(f) for f in files], dtype=torch.long)
        starts = torch.zeros_like(lengths)
        if len(files) > 1:
            starts[1:] = lengths.cumsum(0)[:-1]
        joined = bytearray(b"".join(files))
        data = (
            torch.frombuffer(joined, dtype=torch.uint8)
            if joined
            else torch.zeros(0, dtype=torch.uint8)
        )
        return cls(
            positions=torch.tensor(list(positions), dtype=torch.long),
            indices=torch.tensor(list(indices), dtype=torch.long),
            data=data,
            starts=starts,
            lengths=lengths,
            sizes=torch.tensor([[h.height, h.width] for h in headers], dtype=torch.long).view(
                -1, 2
            ),
            orientation=torch.tensor([h.orientation for h in headers], dtype=torch.long),
            boxes=torch.tensor([list(b) for b in boxes], dtype=torch.long).view(-1, 4),
            flips=torch.tensor(list(flips), dtype=torch.bool),
            size=size,
            crop=crop,
            fallbacks=fallbacks,
        )

    def __len__(self) -> int:
        return int(self.positions.numel())

    def file(self, j: int) -> torch.Tensor:
        """uint8 ``[n]``: the bytes of sample ``j`` (a view into :attr:`data`)."""
        s, n = int(self.starts[j]), int(self.lengths[j])
        return self.data[s : s + n]

    def decoded_bytes(self) -> int:
        """The largest decode buffer of one sample: ``H * W * 3`` at full source resolution."""
        if len(self) == 0:
            return 0
        return int((self.sizes[:, 0] * self.sizes[:, 1]).max()) * 3

    def __getitem__(self, idx: Any) -> EncodedBatch:
        idx = torch.as_tensor(idx, dtype=torch.long).cpu().view(-1)
        return EncodedBatch(
            positions=self.positions[idx],
            indices=self.indices[idx],
            data=self.data,
            starts=self.starts[idx],
            lengths=self.lengths[idx],
            sizes=self.sizes[idx],
            orientation=self.orientation[idx],
            boxes=self.boxes[idx],
            flips=self.flips[idx],
            size=self.size,
            crop=self.crop,
            fallbacks=0,
        )

    def to(self, device: Any) -> EncodedBatch:
        return self  # a host record: the decoder moves what it needs

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return (
            f"EncodedBatch(samples={len(self)}, bytes={int(self.lengths.sum())}, size={self.size})"
        )


# ==================================================================== the route record
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
        stats: the batch's :class:`~ff_lightning.pipeline.batch.StepStats`.
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


class ViewsRoute:
    """Host-side facts about one multi-view training batch.

    Attributes:
        indices: int64 ``[B]``, the dataset index of each sample.
        epoch: the epoch the batch was drawn for.
        groups: one :class:`BatchRoute` per view group, over the group's ``n_g * B`` images
            (view-major: view ``j`` of sample ``i`` at ``j * B + i``), each with its own
            device share and parameters; their ``stats`` is :attr:`stats`.
        stats: the batch's :class:`StepStats` (counts in samples' worth of work).
    """

    __slots__ = ("epoch", "groups", "indices", "stats")

    encoded = None  # the views are cropped in the workers: nothing travels encoded

    def __init__(
        self,
        indices: torch.Tensor,
        epoch: int,
        groups: Sequence[BatchRoute],
        stats: StepStats,
    ) -> None:
        self.indices = indices
        self.epoch = epoch
        self.groups = tuple(groups)
        self.stats = stats

    @property
    def n_device(self) -> int:
        """Images (sample views) the device augments, all groups together."""
        return sum(g.n_device for g in self.groups)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "indices": by_value(self.indices),
            "epoch": self.epoch,
            "groups": self.groups,
            "stats": self.stats,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, from_value(v) if k == "indices" else v)

    def __repr__(self) -> str:
        return (
            f"ViewsRoute(batch={len(self.indices)}, groups={len(self.groups)}, "
            f"device_views={self.n_device}, epoch={self.epoch}, ratio={self.stats.ratio})"
        )


def is_training_batch(batch: Any) -> bool:
    """Whether ``batch`` is a FusionDataModule training batch (it carries a route)."""
    return isinstance(batch, dict) and isinstance(batch.get("route"), (BatchRoute, ViewsRoute))


# ==================================================================== the raw batch
class RawBatch(dict):
    """What the loaders hand out before the transfer: a dict with ``images`` (uint8; with views
    one tensor per view group), ``targets`` and, for training, ``route``. Read it by key (``batch["images"]``,
    ``batch.keys()``, ``batch.items()``).

    Iterating it directly raises, with the fix: ``images, targets = batch`` on it means the
    batch reached a ``training_step`` without the DataModule's hooks (a loader passed as
    ``train_dataloaders=dm.train_dataloader()``), so it was never augmented on the device nor
    normalised.
    """

    def __iter__(self):  # noqa: ANN204
        raise TypeError(
            "this is FusionDataModule's raw batch, a dict with `images` (uint8), `targets` and "
            "`route`, not (images, targets): it reaches training_step when the loader runs "
            "without the DataModule's hooks; call `trainer.fit(model, datamodule=dm)` instead "
            "of passing `dm.train_dataloader()`, or read the dict by key (batch['images'])"
        )
