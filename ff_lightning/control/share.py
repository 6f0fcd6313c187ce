"""The device share the controller owns, and the arithmetic of moving it.

:class:`Share` is the one piece of state every part of the controller reads: the share chosen
(``ratio``) and the memory cap on it. Only the :class:`~ff_lightning.control.controller.
Controller` writes it; the decision rule and the CPU objective return decisions instead.
:class:`ShareSpace` knows the options' bounds, quantum and step sizes: where the share may go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ff_lightning.control.options import ControllerOptions

__all__ = ["Share", "ShareSpace"]


@dataclass
class Share:
    """The chosen share and its memory cap; the share in force is the smaller."""

    ratio: float
    cap: float = 1.0

    @property
    def effective(self) -> float:
        return min(self.ratio, self.cap)


class ShareSpace:
    """Bounds, rounding and step sizes of the share under ``options``."""

    def __init__(self, options: ControllerOptions) -> None:
        self.options = options
        self.min_step = max(float(options.min_step), options.quantum or 0.0)
        self.max_step = float(options.step)

    def bounds(self, share: Share) -> tuple[float, float]:
        """``(lowest, highest)`` share the auto search may choose (the cap included)."""
        hi = min(self.options.max_ratio, share.cap)
        return min(self.options.min_ratio, hi), hi

    def quantise(self, r: float, floor: bool = False) -> float:
        """``r`` on the options' quantum (rounded, or ``floor``-ed), within ``[0, 1]``."""
        q = self.options.quantum
        if q:
            v = r / q
            r = (math.floor(v + 1e-9) if floor else round(v)) * q
        return round(min(max(r, 0.0), 1.0), 12)

    def clamp(self, r: float, share: Share) -> float:
        """``r`` quantised and within :meth:`bounds`."""
        lo, hi = self.bounds(share)
        return min(max(self.quantise(r), lo), hi)

    def smallest_step(self, batch_size: int | None) -> float:
        """The smallest move: ``min_step``, the quantum, and one sample of the batch."""
        return max(self.min_step, 1.0 / batch_size if batch_size else 0.0)

    def clamp_step(self, step: float, batch_size: int | None) -> float:
        return min(max(step, self.smallest_step(batch_size)), self.max_step)
