"""Routed transforms made of other routed transforms: ``Chain`` (a ``Compose`` of routed
members, ONE routed stage), the wrappers ``RandomApply``, ``RandomChoice``, ``RandomOrder``,
and ``PolicyStage``, which puts an auto-augment :class:`~ff_lightning.augment.policy.Policy` in
a chain.

A composite's record holds its own draws (``applied``, ``choice``, ``order``) and each
member's record under the member's position (``"0.sigma"``, ``"1.order"``; see
:meth:`Record.merge`). Every member is sampled for every sample (whether it ends up applied or
not), so a sample's record never depends on the others. Members are applied to the rows that
take them, grouped: one gather, the member's batched kernels, one scatter per member and
position (none when every row takes it).

Streams: a composite takes one stream for its own draws and hands its members the next ids,
depth first (:meth:`RoutedTransform._assign_streams`). Members are copied on the way in, so a
transform object given to two composites keeps its own stream in each.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import rng
from ff_lightning.augment.params import Params
from ff_lightning.augment.policy import Policy
from ff_lightning.augment.transforms.base import (
    FIRST_STREAM,
    RoutedTransform,
    named,
    permutations,
    rows_of,
    run_rows,
)
from ff_lightning.augment.transforms.record import Record
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_probability

__all__ = ["Chain", "PolicyStage", "RandomApply", "RandomChoice", "RandomOrder", "as_routed"]


class PolicyStage(RoutedTransform):
    """A policy (``build_policy(...)``: torchvision's, timm's, DeepAA) as a routed transform.

    The record is the policy's own record (:class:`Params` or a subclass of it) as named
    tensors. The first policy of a chain
    draws exactly as the policy alone (its ``seed``, its stream 0); any later policy draws from
    a seed derived from ``(seed, stream)``, so two policies of one chain are independent.
    """

    def __init__(self, policy: Policy, *, stream: int = FIRST_STREAM, primary: bool = True):
        super().__init__(stream=stream)
        if not _is_policy(policy):
            raise ConfigError(
                f"PolicyStage: `policy` must be a Policy (build_policy(...)), "
                f"got {type(policy).__name__}"
            )
        self.policy = policy
        self.primary = primary
        empty = policy.sample(torch.zeros(0, dtype=torch.long), 0, 0)
        self._rtype = type(empty)  # Params, or a policy's own subclass of it
        self._fields = tuple(f.name for f in dataclasses.fields(empty))

    @property
    def name(self) -> str:
        return f"PolicyStage[{self.policy.name}]"

    def _seed(self, seed: int) -> int:
        if self.primary:
            return seed
        digest = hashlib.blake2b(f"{seed}:{self.stream}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Record:
        idx = rng.as_indices(indices)
        p = self.policy.sample(idx, epoch, self._seed(seed))
        return Record({f: getattr(p, f) for f in self._fields}, len(idx))

    def params(self, rec: Record) -> Params:
        """The policy's record back from a stage record."""
        return self._rtype(**{f: rec[f] for f in self._fields})

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        return self.policy.apply_batch(x, self.params(rec))

    def _cost(self, rec: Record) -> Tensor:
        return self.policy.estimate_cost(self.params(rec))

    def __deepcopy__(self, memo: dict[int, Any]) -> PolicyStage:
        # The policy is shared (it holds caches, not per-stage state).
        return PolicyStage(self.policy, stream=self.stream, primary=self.primary)

    def _extra_repr(self) -> str:
        return repr(self.policy)


def _is_policy(obj: object) -> bool:
    from ff_lightning.augment.pil_policy import PilPolicy

    return isinstance(obj, (Policy, PilPolicy))


def as_routed(member: object, where: str = "member") -> RoutedTransform:
    """A chain member: a routed transform (copied) or a policy (wrapped)."""
    if _is_policy(member):
        return PolicyStage(member)
    if isinstance(member, RoutedTransform):
        return copy.deepcopy(member)
    raise ConfigError(
        f"`{where}` must be a routed transform or a Policy, got {type(member).__name__}; "
        "convert torchvision transforms with from_torchvision"
    )


class _Composite(RoutedTransform):
    """Members, their streams and their records."""

    def __init__(self, transforms: Sequence[object], *, stream: int, allow_empty: bool) -> None:
        super().__init__(stream=stream)
        with named(self.name):
            if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
                raise ConfigError(
                    f"`transforms` must be a list of transforms, got {type(transforms).__name__}"
                )
            if not transforms and not allow_empty:
                raise ConfigError("`transforms` must hold at least one transform, got []")
            self.transforms = [as_routed(t, f"transforms[{i}]") for i, t in enumerate(transforms)]
        self._assign_streams(self.stream)

    def _assign_streams(self, first: int) -> int:
        self.stream = first
        nxt = first + (1 if self.num_draws else 0)
        for member in self.transforms:
            nxt = member._assign_streams(nxt)
        return nxt

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        n = len(idx)
        own = self._own(words)
        parts = {str(i): m.sample(idx, epoch, seed) for i, m in enumerate(self.transforms)}
        merged = Record.merge(parts, n)
        return Record({**own, **{k: merged[k] for k in merged}}, n)

    def _own(self, words: Tensor) -> dict[str, Tensor]:
        return {}

    def _member(self, i: int, x: Tensor, rec: Record, rows: Tensor) -> Tensor:
        """Member ``i`` applied to ``x[rows]`` (host rows) with their records."""
        member, sub = self.transforms[i], rec.part(str(i))
        if rows.numel() == 0:
            return x
        if rows.numel() == len(rec):
            return member._run(x, sub)
        sub = sub[rows]
        return run_rows(lambda part: member._run(part, sub), x, rows)

    def _member_costs(self, rec: Record) -> list[Tensor]:
        return [m._cost(rec.part(str(i))).float() for i, m in enumerate(self.transforms)]

    def _extra_repr(self) -> str:
        return "[" + ", ".join(repr(t) for t in self.transforms) + "]"


class Chain(_Composite):
    """An ordered list of routed transforms (and :class:`Policy` objects) as ONE routed stage:
    the members are applied in list order; the record is every member's record.

    ``Chain([])`` is the identity. The first :class:`Policy` of the chain (depth first) draws
    exactly as it does alone; every other member draws from its own stream.
    """

    def __init__(self, transforms: Sequence[object], *, stream: int = FIRST_STREAM) -> None:
        super().__init__(transforms, stream=stream, allow_empty=True)
        stages = [t for t in _walk(self) if isinstance(t, PolicyStage)]
        for k, stage in enumerate(stages):
            stage.primary = k == 0

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        for i, member in enumerate(self.transforms):
            x = member._run(x, rec.part(str(i)))
        return x

    def _cost(self, rec: Record) -> Tensor:
        costs = self._member_costs(rec)
        return torch.stack(costs).sum(0) if costs else torch.zeros(len(rec))


def _walk(t: RoutedTransform) -> list[RoutedTransform]:
    out = [t]
    for member in getattr(t, "transforms", ()):
        out.extend(_walk(member))
    return out


class RandomApply(_Composite):
    """torchvision's ``RandomApply(transforms, p=0.5)``: with probability ``p`` per sample, all
    of ``transforms`` in order. Record: ``applied`` bool ``[B]`` and the members'."""

    num_draws = 1

    def __init__(
        self, transforms: Sequence[object], p: float = 0.5, *, stream: int = FIRST_STREAM
    ) -> None:
        with named(type(self).__name__):
            self.p = check_probability("p", p)
        super().__init__(transforms, stream=stream, allow_empty=False)

    def _own(self, words: Tensor) -> dict[str, Tensor]:
        return {"applied": rng.bits_to_uniform(words[:, 0], torch.float64) < self.p}

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        rows = rows_of(rec["applied"])
        if rows.numel() == 0:
            return x
        for i in range(len(self.transforms)):
            x = self._member(i, x, rec, rows)
        return x

    def _cost(self, rec: Record) -> Tensor:
        return torch.stack(self._member_costs(rec)).sum(0) * rec["applied"].float()

    def _extra_repr(self) -> str:
        return f"p={self.p}, {super()._extra_repr()}"


class RandomChoice(_Composite):
    """torchvision's ``RandomChoice(transforms, p=None)``: one member per sample, chosen with
    the (normalised) weights ``p`` (uniform by default). Record: ``choice`` int64 ``[B]`` and
    the members'."""

    num_draws = 1

    def __init__(
        self,
        transforms: Sequence[object],
        p: Sequence[float] | None = None,
        *,
        stream: int = FIRST_STREAM,
    ) -> None:
        n = len(transforms) if isinstance(transforms, Sequence) else 0
        with named(type(self).__name__):
            if p is None:
                weights = [1.0] * n
            else:
                ok = isinstance(p, Sequence) and not isinstance(p, str) and len(p) == n
                ok = ok and all(
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                    and v >= 0
                    for v in p
                )
                if not ok or not sum(p) > 0:
                    raise ConfigError(
                        f"`p` must be None or {n} non-negative weights (one per transform) with a "
                        f"positive sum, got {p!r}"
                    )
                weights = [float(v) for v in p]
        total = sum(weights)
        self.p = [w / total for w in weights] if total else []
        super().__init__(transforms, stream=stream, allow_empty=False)
        self._cumulative = torch.tensor(self.p, dtype=torch.float64).cumsum(0)

    def _own(self, words: Tensor) -> dict[str, Tensor]:
        u = rng.bits_to_uniform(words[:, 0], torch.float64) * float(self._cumulative[-1])
        choice = torch.searchsorted(self._cumulative, u, right=True)
        return {"choice": choice.clamp_(max=len(self.transforms) - 1)}

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        choice = rec["choice"]
        for i in range(len(self.transforms)):
            x = self._member(i, x, rec, rows_of(choice == i))
        return x

    def _cost(self, rec: Record) -> Tensor:
        costs = torch.stack(self._member_costs(rec), 1)
        return costs.gather(1, rec["choice"].view(-1, 1)).view(-1)

    def _extra_repr(self) -> str:
        return f"p={[round(v, 6) for v in self.p]}, {super()._extra_repr()}"


class RandomOrder(_Composite):
    """torchvision's ``RandomOrder(transforms)``: every member, in a uniformly random order
    per sample. Record: ``order`` int64 ``[B, n]`` (member at each position) and the
    members'."""

    def __init__(self, transforms: Sequence[object], *, stream: int = FIRST_STREAM) -> None:
        n = len(transforms) if isinstance(transforms, Sequence) else 0
        self.num_draws = max(n - 1, 1)
        super().__init__(transforms, stream=stream, allow_empty=False)

    def _own(self, words: Tensor) -> dict[str, Tensor]:
        n = len(self.transforms)
        return {"order": permutations(words[:, : n - 1], n)}

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        order = rec["order"]
        for pos in range(order.shape[1]):
            for i in range(len(self.transforms)):
                x = self._member(i, x, rec, rows_of(order[:, pos] == i))
        return x

    def _cost(self, rec: Record) -> Tensor:
        return torch.stack(self._member_costs(rec)).sum(0)
