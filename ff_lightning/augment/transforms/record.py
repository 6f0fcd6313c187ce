"""The parameter record of routed transforms: named tensors with a leading batch dimension.

A :class:`Record` is what a routed transform's ``sample`` returns and what its
``apply_batch``/``apply_one`` read: for ``B`` samples, a few named tensors shaped ``[B, ...]``
(a ColorJitter's ``order`` ``[B, 4]`` and ``factors`` ``[B, 4]``, a blur's ``sigma`` ``[B]``).
It travels like the policies' :class:`~ff_lightning.augment.params.Params`: from the sampler in
a DataLoader worker (pickled), through pinning and ``.to(device)``, and is cut into routes by
indexing. A chain of transforms keeps ONE record whose names carry each member's prefix
(``"0.order"``, ``"1.applied"``), so a chain's record indexes, pins and concatenates like any
other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Integral

import torch
from torch import Tensor

__all__ = ["Record"]


class Record:
    """Per-sample parameters of ``B`` samples: a mapping of names to tensors ``[B, ...]``.

    ``record[name]`` (a string) is a tensor; ``record[key]`` with an int, a slice, a bool mask
    or an index tensor/sequence is the record of those samples (an int keeps the batch
    dimension: a record of length 1). The length is kept explicitly, so a record without
    tensors (an identity transform's) still has one.
    """

    def __init__(self, tensors: Mapping[str, Tensor], length: int | None = None) -> None:
        data = dict(tensors)
        if length is None:
            if not data:
                raise ValueError("`length` is needed for a Record without tensors")
            length = int(next(iter(data.values())).shape[0])
        for name, t in data.items():
            if not isinstance(t, Tensor) or t.ndim == 0 or t.shape[0] != length:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"`{name}` must be a tensor with leading dimension {length}, got {got}"
                )
        self._data = data
        self._len = int(length)

    # ---------------------------------------------------------------- construction
    @classmethod
    def cat(cls, items: Sequence[Record]) -> Record:
        """Join records of the same names along the batch dimension."""
        items = list(items)
        if not items:
            raise ValueError("`items` must contain at least one Record, got an empty sequence")
        names = items[0].names
        for r in items[1:]:
            if r.names != names:
                raise ValueError(f"records to join must have the same names: {names} vs {r.names}")
        total = sum(len(r) for r in items)
        return cls({n: torch.cat([r._data[n] for r in items]) for n in names}, total)

    @classmethod
    def merge(cls, parts: Mapping[str, Record], length: int) -> Record:
        """One record holding every part's tensors under ``"<prefix>.<name>"``."""
        data: dict[str, Tensor] = {}
        for prefix, rec in parts.items():
            if len(rec) != length:
                raise ValueError(f"part {prefix!r} has {len(rec)} samples, expected {length}")
            data.update((f"{prefix}.{n}", t) for n, t in rec._data.items())
        return cls(data, length)

    def part(self, prefix: str) -> Record:
        """The tensors stored under ``"<prefix>."``, with the prefix taken off (no copies)."""
        head = prefix + "."
        cut = len(head)
        return Record({n[cut:]: t for n, t in self._data.items() if n.startswith(head)}, self._len)

    # ---------------------------------------------------------------- container protocol
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._data)

    @property
    def device(self) -> torch.device:
        """The device of the tensors (the host for a record without tensors)."""
        for t in self._data.values():
            return t.device
        return torch.device("cpu")

    def __len__(self) -> int:
        return self._len

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __getitem__(self, key: str | int | slice | Tensor | Sequence[int]) -> Tensor | Record:
        if isinstance(key, str):
            return self._data[key]
        if isinstance(key, Integral) and not isinstance(key, bool):
            n, i = self._len, int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for a Record of length {n}")
            i %= n
            return self._map(lambda t: t[i : i + 1], 1)
        if isinstance(key, slice):
            return self._map(lambda t: t[key], len(range(*key.indices(self._len))))
        if isinstance(key, Tensor):
            if key.is_floating_point() or key.is_complex():
                raise TypeError(f"index tensors must be bool or integer, got {key.dtype}")
            if key.dtype == torch.bool:
                if key.shape != (self._len,):
                    raise IndexError(
                        f"bool mask must have shape ({self._len},), got {tuple(key.shape)}"
                    )
                # A mask's count is a host read: fine for host masks (the usual case); a
                # device mask synchronises once here.
                count = int(key.sum())
            else:
                count = int(key.numel())
            key = key.to(self.device)
            return self._map(lambda t: t[key], count)
        idx = torch.as_tensor(list(key), dtype=torch.int64, device=self.device)
        return self._map(lambda t: t[idx], int(idx.numel()))

    def _map(self, fn: Callable[[Tensor], Tensor], length: int) -> Record:
        return Record({n: fn(t) for n, t in self._data.items()}, length)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Record:
        """Copy to ``device`` (no copy for tensors already there)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking), self._len)

    def cpu(self) -> Record:
        return self.to("cpu")

    def pin_memory(self) -> Record:
        """Page-locked copy, called by the DataLoader's pin-memory thread."""
        return self._map(lambda t: t.pin_memory(), self._len)

    def is_pinned(self) -> bool:
        return all(t.is_pinned() for t in self._data.values())

    # ---------------------------------------------------------------- comparisons
    def equal(self, other: object) -> bool:
        """Same names, lengths, shapes and values (devices may differ)."""
        if not isinstance(other, Record) or other.names != self.names or len(other) != len(self):
            return False
        return all(
            a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
            for a, b in zip(self._data.values(), other._data.values(), strict=True)
        )

    __eq__ = equal  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, object]:
        return {"data": self._data, "len": self._len}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._data = state["data"]  # type: ignore[assignment]
        self._len = state["len"]  # type: ignore[assignment]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {tuple(t.shape[1:])}" for n, t in self._data.items())
        return f"Record(len={self._len}, {{{shapes}}}, device={self.device})"
