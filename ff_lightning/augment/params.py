"""Per-sample augmentation parameter records, batched.

A :class:`Params` holds the parameters a policy drew for ``B`` samples as tensors with a
leading batch dimension. It is what travels from the sampler (in a DataLoader worker) to
whichever route applies it, so both routes apply exactly the same record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

__all__ = ["Params"]


@dataclass(frozen=True, eq=False)
class Params:
    """Parameters of ``B`` samples for a policy with ``K`` op slots.

    Attributes:
        op_ids: int64 ``[B, K]``, index of slot ``k``'s op in the policy's ``op_names``.
        bins: int64 ``[B, K]``, magnitude bin of the op (meaningless for ops without one).
        signs: float32 ``[B, K]``, ``-1.0`` or ``1.0`` (always ``1.0`` for unsigned ops).
        applied: bool ``[B, K]``, whether slot ``k`` is applied (AutoAugment's probability,
            AugMix's chain depth); a slot not applied is the identity.
        weights: float32 ``[B, M]``; AugMix's mixing weights ``[original, chain_1, ...,
            chain_W]`` (they sum to 1), ``M == 0`` for the other policies.

    Magnitudes in torchvision's units are not stored: they may depend on the image size
    (Translate), so the policy resolves them from ``(op_ids, bins, signs)`` and the size of
    the images it is given (``policy.magnitudes(params, height, width)``), identically on
    every route.
    """

    op_ids: Tensor
    bins: Tensor
    signs: Tensor
    applied: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        b = self.op_ids.shape[0] if self.op_ids.ndim == 2 else -1
        for f in fields(self):
            t = getattr(self, f.name)
            if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[0] != b:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"`{f.name}` must be a 2-D tensor with the same leading size as `op_ids` "
                    f"{tuple(self.op_ids.shape)}, got {shape}"
                )
        k = self.op_ids.shape[1]
        for name in ("bins", "signs", "applied"):
            if getattr(self, name).shape[1] != k:
                raise ValueError(
                    f"`{name}` must have {k} slots like `op_ids`, got {tuple(getattr(self, name).shape)}"
                )

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, num_slots: int, num_weights: int = 0, batch: int = 0) -> Params:
        """Identity records: ``batch`` samples, nothing applied."""
        z = torch.zeros(batch, num_slots, dtype=torch.int64)
        return cls(
            op_ids=z,
            bins=z.clone(),
            signs=torch.ones(batch, num_slots),
            applied=torch.zeros(batch, num_slots, dtype=torch.bool),
            weights=torch.zeros(batch, num_weights),
        )

    @classmethod
    def cat(cls, items: Sequence[Params]) -> Params:
        """Join records along the batch dimension (what a DataLoader collate does)."""
        items = list(items)
        if not items:
            raise ValueError("`items` must contain at least one Params, got an empty sequence")
        return cls(**{n: torch.cat([getattr(p, n) for p in items]) for n in cls._names()})

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def _map(self, fn: Any) -> Params:
        return type(self)(**{n: fn(getattr(self, n)) for n in self._names()})

    # ---------------------------------------------------------------- container protocol
    @property
    def num_slots(self) -> int:
        return int(self.op_ids.shape[1])

    @property
    def device(self) -> torch.device:
        return self.op_ids.device

    def __len__(self) -> int:
        return int(self.op_ids.shape[0])

    def __getitem__(self, key: int | slice | Tensor | Sequence[int]) -> Params:
        """Select samples. An int gives a record of length 1 (the batch dim is kept)."""
        if isinstance(key, Integral) and not isinstance(key, bool):
            key = int(key)
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"index {key} is out of range for Params of length {n}")
            key = slice(key, key + 1 if key != -1 else None)
        elif isinstance(key, Tensor):
            if key.dtype != torch.bool and key.is_floating_point():
                raise TypeError(f"index tensors must be bool or integer, got {key.dtype}")
            if key.dtype == torch.bool and key.shape != (len(self),):
                raise IndexError(
                    f"bool mask must have shape ({len(self)},), got {tuple(key.shape)}"
                )
            key = key.to(self.device)
        elif not isinstance(key, slice):
            key = torch.as_tensor(list(key), dtype=torch.int64, device=self.device)
        return self._map(lambda t: t[key])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Params:
        """Copy to ``device`` (no copy when already there)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Params:
        """Page-locked copy, called by the DataLoader's pin-memory thread."""
        return self._map(lambda t: t.pin_memory())

    def is_pinned(self) -> bool:
        return all(getattr(self, n).is_pinned() for n in self._names())

    # ---------------------------------------------------------------- comparisons
    def equal(self, other: object) -> bool:
        """Exact equality of every field (same shapes and values; devices may differ)."""
        if not isinstance(other, Params):
            return False
        return all(
            getattr(self, n).shape == getattr(other, n).shape
            and torch.equal(getattr(self, n).cpu(), getattr(other, n).cpu())
            for n in self._names()
        )

    def allclose(self, other: Params, *, atol: float = 1e-6) -> bool:
        """Integer fields equal and ``weights`` within ``atol``."""
        if not isinstance(other, Params) or self.weights.shape != other.weights.shape:
            return False
        exact = ("op_ids", "bins", "signs", "applied")
        return all(
            getattr(self, n).shape == getattr(other, n).shape
            and torch.equal(getattr(self, n).cpu(), getattr(other, n).cpu())
            for n in exact
        ) and torch.allclose(self.weights.cpu(), other.weights.cpu(), atol=atol, rtol=0)

    __eq__ = equal  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Params(len={len(self)}, num_slots={self.num_slots}, "
            f"num_weights={self.weights.shape[1]}, device={self.device})"
        )
