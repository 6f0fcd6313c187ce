"""The base of the Pillow-semantics policies (timm's RandAugment / AutoAugment / AugMix, DeepAA).

:class:`PilPolicy` implements the policy protocol the pipeline calls (``sample`` in the workers,
``apply_batch`` on either route, ``apply_one``, ``estimate_cost``) on top of an
:class:`~ff_lightning.augment.op_record.OpRecord`: a subclass draws the record and says, per
slot, which :mod:`~ff_lightning.augment.pil_ops` call each sample makes (:meth:`calls`); the
base applies the slots in order with grouped kernels. The record is read on the host only (a
worker's record is a host tensor; a device copy is brought back once per call, before any
kernel runs), so no kernel waits on a device value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ff_lightning.augment import rng
from ff_lightning.augment.op_record import OpRecord
from ff_lightning.augment.pil_ops import AFFINE_COST, COST, OP_ID, Call, apply_slot
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_images

__all__ = ["PilPolicy", "check_fill", "check_stream"]

_IDENTITY: Call = (OP_ID["Identity"], (), 0)


def check_stream(stream: object) -> int:
    """The policy's RNG stream: 0 (the policy stream) or an id of 16 and above (ids 1..15 are
    reserved for the crop, flip and batch-level draws)."""
    if isinstance(stream, bool) or not isinstance(stream, int) or not (stream == 0 or stream >= 16):
        raise ConfigError(
            f"`stream` must be 0 (the policy stream) or an integer >= 16 (ids 1..15 are "
            f"reserved), got {stream!r}"
        )
    return stream


def check_fill(name: str, fill: object) -> tuple[int, ...]:
    """A fill colour as Pillow takes it for RGB: 1 or 3 integers in ``[0, 255]``."""
    values = fill if isinstance(fill, (tuple, list)) else None
    if (
        values is None
        or len(values) not in (1, 3)
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
    ):
        raise ConfigError(
            f"`{name}` must be a tuple of 1 or 3 integers in [0, 255] (e.g. timm's img_mean "
            f"(124, 116, 104)), got {fill!r}"
        )
    return tuple(int(v) for v in values)


class PilPolicy:
    """Base class: ``num_slots`` op slots per sample, applied in order, Pillow semantics.

    Subclasses set ``name``, ``num_slots``, ``num_weights``, ``aux_per_slot``, ``stream``,
    ``fill`` and implement :meth:`sample` and :meth:`calls`; :meth:`op_cost` gives the relative
    CPU cost of their op ``k`` (for :meth:`estimate_cost`).
    """

    name: str = ""
    num_slots: int = 0
    num_weights: int = 0
    aux_per_slot: int = 1
    stream: int = rng.STREAM_POLICY
    fill: tuple[int, ...] = (0, 0, 0)

    # ---------------------------------------------------------------- subclass interface
    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> OpRecord:
        """Draw the records of ``indices`` (deterministic in ``(seed, epoch, index)``)."""
        raise NotImplementedError

    def calls(self, record: OpRecord, slot: int, height: int, width: int) -> list[Call]:
        """The call of every sample of host ``record`` in ``slot`` (applied slots only; the
        base replaces the others with the identity)."""
        raise NotImplementedError

    def op_cost(self, op_ids: Tensor, resample: Tensor) -> Tensor:
        """float32 relative CPU cost of ops ``op_ids`` with ``resample`` (same shapes)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- applying
    def _check(self, images: Tensor, record: OpRecord, ndim: int) -> None:
        check_images(images, ndim)
        if not isinstance(record, OpRecord):
            raise TypeError(f"`params` must be an OpRecord, got {type(record).__name__}")
        n = images.shape[0] if ndim == 4 else 1
        if len(record) != n:
            raise ValueError(f"`params` has {len(record)} records for {n} image(s)")
        if (
            record.num_slots != self.num_slots
            or record.weights.shape[1] != self.num_weights
            or record.aux.shape[1] != self.num_slots * self.aux_per_slot
        ):
            raise ValueError(
                f"`params` has {record.num_slots} slots, {record.weights.shape[1]} weights and "
                f"{record.aux.shape[1]} aux draws; {self.name} expects {self.num_slots}, "
                f"{self.num_weights} and {self.num_slots * self.aux_per_slot}"
            )

    def _slot_calls(self, record: OpRecord, slot: int, height: int, width: int) -> list[Call]:
        applied = record.applied[:, slot].tolist()
        made = self.calls(record, slot, height, width)
        return [c if a else _IDENTITY for c, a in zip(made, applied, strict=True)]

    def _chain(self, images: Tensor, record: OpRecord, slots: range) -> Tensor | None:
        """Apply ``slots`` in order on one copy of ``images`` (made at the first applied slot:
        one contiguous copy costs less than copying the untouched rows group by group), each
        slot in place. ``None``: no slot applied."""
        out = None
        height, width = images.shape[-2:]
        for k in slots:
            if bool(record.applied[:, k].any()):
                calls = self._slot_calls(record, k, height, width)
                if out is None:
                    out = images.clone(memory_format=torch.contiguous_format)
                apply_slot(out, out, calls, self.fill)
        return out

    def apply_batch(self, images: Tensor, params: OpRecord) -> Tensor:
        """Augment uint8 ``[B, C, H, W]`` on its device, each sample with its own record."""
        self._check(images, params, 4)
        if len(params) == 0 or self.num_slots == 0:
            return images
        # The plan is made on the host: a device record is read back here, once, before any
        # kernel is queued (records stay on the host in the pipeline, so this is free there).
        record = params.to("cpu")
        out = self._chain(images.contiguous(), record, range(self.num_slots))
        return images.clone() if out is None else out

    def apply_one(self, image: Tensor, params: OpRecord) -> Tensor:
        """Augment one uint8 ``[C, H, W]`` CPU image with a record of length 1 (worker route):
        the batched kernels on a batch of one, so both routes give the same bytes."""
        self._check(image, params, 3)
        return self.apply_batch(image.unsqueeze(0), params)[0]

    def estimate_cost(self, params: OpRecord) -> Tensor:
        """Relative CPU cost float32 ``[B]`` of each record (sum over applied slots)."""
        record = params.to("cpu")
        if self.num_slots == 0:
            return torch.zeros(len(record))
        cost = self.op_cost(record.op_ids, record.resample)
        return (cost * record.applied).sum(1)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def kind_cost(kinds: Sequence[str], geometric: Sequence[bool]) -> tuple[Tensor, Tensor]:
        """Per-op cost table and geometric mask, for :meth:`op_cost` implementations."""
        cost = torch.tensor([COST.get(k, 0.0) for k in kinds], dtype=torch.float32)
        return cost, torch.tensor(list(geometric), dtype=torch.bool)

    @staticmethod
    def table_cost(op_ids: Tensor, resample: Tensor, cost: Tensor, geometric: Tensor) -> Tensor:
        by_resample = torch.tensor([AFFINE_COST.get(i, 0.0) for i in range(4)])
        geo = by_resample[resample.clamp(0, 3)]
        return torch.where(geometric[op_ids], geo, cost[op_ids])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._extra_repr()})"

    def _extra_repr(self) -> str:
        return ""
