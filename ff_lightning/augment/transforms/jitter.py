"""Routed ``ColorJitter``: brightness, contrast, saturation and hue in a random order per
sample, each with its own factor, as torchvision v2 draws them.

A sample's record is its order (a uniform permutation of the four adjustments, torchvision's
``torch.randperm(4)``) and its four factors (uniform in their ranges; the identity value 1, 1,
1, 0 for an adjustment the transform does not have, which is then skipped as torchvision
skips it). ``apply_batch`` walks the four positions of the order: at each, the samples whose
adjustment there is brightness, contrast or saturation go through the op registry's
``Brightness``/``Contrast``/``Color`` kernels in one grouped call (magnitude ``factor - 1``,
exact for the float32 factors: ``1 + (f - 1) == f``), and those at hue through the hue kernel
(:mod:`ff_lightning.augment.transforms._kernels`). On host images every one of them is a
native loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ff_lightning.augment.functional import REGISTRY, apply_ops_grouped
from ff_lightning.augment.transforms import _kernels
from ff_lightning.augment.transforms.base import (
    COSTS,
    FIRST_STREAM,
    RoutedTransform,
    check_range,
    named,
    permutations,
    rows_of,
    uniform_in,
)
from ff_lightning.augment.transforms.record import Record

__all__ = ["ADJUSTMENTS", "ColorJitter"]

#: The adjustments in torchvision's numbering (``fn_idx``), with their identity factor.
ADJUSTMENTS = (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0))
_REGISTRY_OPS = ("Identity", "Brightness", "Contrast", "Color")
#: relative CPU cost per applied adjustment: the registry's ops' own, and the hue kernel's
_COSTS = (*(REGISTRY[op].cost for op in _REGISTRY_OPS[1:]), COSTS["hue"])

Range = float | tuple[float, float] | list[float] | None


class ColorJitter(RoutedTransform):
    """torchvision v2's ``ColorJitter(brightness, contrast, saturation, hue)``.

    Each argument is a number ``v`` (``[max(0, 1 - v), 1 + v]``; hue ``[-v, v]``) or a pair
    ``(min, max)``; ``None`` or a degenerate range at the identity leaves the adjustment
    out. Hue factors lie in ``[-0.5, 0.5]``. One-channel images: saturation and hue are the
    identity (as torchvision).

    Record: ``order`` int64 ``[B, 4]`` (a permutation of 0..3: brightness, contrast,
    saturation, hue) and ``factors`` float32 ``[B, 4]`` (in that numbering).
    """

    num_draws = 3 + 4  # the permutation, then one factor per adjustment

    def __init__(
        self,
        brightness: Range = None,
        contrast: Range = None,
        saturation: Range = None,
        hue: Range = None,
        *,
        stream: int = FIRST_STREAM,
    ) -> None:
        super().__init__(stream=stream)
        inf = float("inf")
        with named(self.name):
            ranges = [
                check_range(name, value, center=1.0, low=0.0, high=inf, clip_first=True)
                for name, value in (
                    ("brightness", brightness),
                    ("contrast", contrast),
                    ("saturation", saturation),
                )
            ]
            ranges.append(check_range("hue", hue, center=0.0, low=-0.5, high=0.5))
        # torchvision drops a range that is exactly the identity
        self.ranges: tuple[tuple[float, float] | None, ...] = tuple(
            None if r is None or r[0] == r[1] == ident else r
            for r, (_, ident) in zip(ranges, ADJUSTMENTS, strict=True)
        )
        self.brightness, self.contrast, self.saturation, self.hue = self.ranges

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        n = len(idx)
        factors = torch.empty(n, 4, dtype=torch.float32)
        for k, (rng_k, (_, ident)) in enumerate(zip(self.ranges, ADJUSTMENTS, strict=True)):
            if rng_k is None:
                factors[:, k] = ident
            else:
                factors[:, k] = uniform_in(words[:, 3 + k], *rng_k)
        return Record({"order": permutations(words[:, :3], 4), "factors": factors}, n)

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        order, factors = rec["order"], rec["factors"]
        n = len(rec)
        for pos in range(4):
            which = order[:, pos]
            ids = torch.zeros(n, dtype=torch.int64)  # Identity
            for k in range(3):
                if self.ranges[k] is not None:
                    ids[which == k] = k + 1
            if bool(ids.any()):
                # factor - 1 in float64 is exact, and the registry's 1 + m gives it back
                mags = factors.gather(1, which.view(n, 1)).view(n).double().sub_(1.0)
                x = apply_ops_grouped(x, ids, mags, _REGISTRY_OPS, out=x)
            if self.ranges[3] is not None and x.shape[1] == 3:
                rows = rows_of(which == 3)
                x = _kernels.hue(x, factors[rows, 3].contiguous(), rows)
        return x

    def _cost(self, rec: Record) -> Tensor:
        factors = rec["factors"]
        cost = torch.zeros(len(rec))
        for k, (_, ident) in enumerate(ADJUSTMENTS):
            if self.ranges[k] is not None:
                active = factors[:, k] != ident if k < 3 else torch.ones(len(rec), dtype=torch.bool)
                cost += active.to(torch.float32) * _COSTS[k]
        return cost

    def _extra_repr(self) -> str:
        names = ("brightness", "contrast", "saturation", "hue")
        return ", ".join(f"{n}={r}" for n, r in zip(names, self.ranges, strict=True) if r)
