"""The CPU objective: the fewest DataLoader workers whose throughput stays within tolerance.

With ``objective="cpu"`` the controller first optimises the device share at the configured
worker count, as the throughput objective does. Then :class:`WorkerSearch` lowers the active
count one worker at a time, at epoch boundaries (the only moment the training DataLoader can be
rebuilt without cutting an epoch), moving the difference to the device: the cost model's share
for the new count. It keeps the fewest workers whose settled throughput stays within
``tolerance`` of the best one measured, and raises the count back to the configured one (and
searches again) when the throughput falls after a regime change.

Pure Python, no Trainer: :meth:`WorkerSearch.decide` takes the settled measurement and a
predictor built on the cost model and returns a :class:`WorkerMove` with its reason; the
controller applies it and the front ends rebuild the loader.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ff_lightning.control.options import OBJECTIVES

__all__ = ["OBJECTIVES", "Stage", "WorkerMove", "WorkerSearch"]

_SKIP = 2.0  # skip trying one worker fewer when the model predicts a loss beyond 2x tolerance


class Stage(enum.Enum):
    """Where the worker search is."""

    IDLE = "idle"  # not configured, or no worker to save (0 or 1 configured)
    REFERENCE = "reference"  # the share is being optimised at the configured workers
    TRIAL = "trial"  # one worker fewer, measured at the model's share
    HOLD = "hold"  # settled at the fewest workers within tolerance


@dataclass(frozen=True)
class WorkerMove:
    """What the search decided: the worker count from the next epoch on, the share to start it
    with (``None``: re-optimise the share from the current one) and why. ``settled`` is true
    when the search stops at ``workers`` (then the share is refined by the throughput rule)."""

    workers: int
    ratio: float | None
    reason: str
    settled: bool = False


#: ``predict(n)`` -> the model's share for ``n`` workers (``None``: unknown, let the rule find
#: it) and the throughput it predicts there (an upper bound when the share is unknown), scaled
#: to what was measured at the current count; ``None`` without a cost model.
Predictor = Callable[[int], "tuple[float | None, float] | None"]


@dataclass
class WorkerSearch:
    """State of the CPU objective's search over the active worker count.

    Attributes:
        tolerance: relative throughput loss allowed against the best measured point.
        max_workers: the configured count (the user's ``num_workers``).
        workers: the active count.
        stage: see :class:`Stage`.
        reference: best settled throughput of this search (samples/s).
        accepted: fewest workers accepted so far, and ``accepted_ratio`` its share.
        points: settled measurements of this search, ``workers -> (share, samples/s)``.
        fell: a regime change lowered the throughput since the search settled.
    """

    tolerance: float = 0.03
    max_workers: int = 0
    workers: int = 0
    stage: Stage = Stage.IDLE
    reference: float | None = None
    accepted: int | None = None
    accepted_ratio: float | None = None
    points: dict[int, tuple[float, float]] = field(default_factory=dict)
    fell: bool = False

    @property
    def min_workers(self) -> int:
        """Never below one worker when the user asked for workers."""
        return 1 if self.max_workers >= 1 else 0

    @property
    def saved(self) -> int:
        return self.max_workers - self.workers

    def configure(self, num_workers: int) -> None:
        """Start a search over ``num_workers`` configured workers (a no-op when the restored
        state was saved for the same count)."""
        if num_workers == self.max_workers and self.stage is not Stage.IDLE:
            return
        self.max_workers = self.workers = int(num_workers)
        self._restart()

    def _restart(self) -> None:
        self.workers = self.max_workers
        self.stage = Stage.REFERENCE if self.max_workers > self.min_workers else Stage.IDLE
        self.reference = self.accepted = self.accepted_ratio = None
        self.points = {}
        self.fell = False

    def note_regime_change(self, rel: float) -> None:
        """The throughput rule saw the settled throughput change by ``rel``; a drop while
        running on fewer workers than configured raises the count at the next epoch end."""
        if rel < 0 and self.workers < self.max_workers and self.stage is Stage.HOLD:
            self.fell = True

    def decide(self, settled: tuple[float, float] | None, predict: Predictor) -> WorkerMove | None:
        """At an epoch boundary: the next worker count, or ``None`` to keep it.

        Args:
            settled: ``(share, samples/s)`` settled at the active count, or ``None`` while the
                share is still being optimised there.
            predict: see :data:`Predictor`.
        """
        if self.fell:
            n = self.max_workers
            self._restart()
            p = predict(n)
            return WorkerMove(
                n,
                p[0] if p else None,
                f"workers: throughput fell after a regime change; back to {_n(n)}, searching again",
            )
        if self.stage in (Stage.IDLE, Stage.HOLD) or settled is None:
            return None
        w, (r, x) = self.workers, settled
        self.points[w] = (r, x)
        tol = self.tolerance
        if self.stage is Stage.REFERENCE:
            self.reference, self.accepted, self.accepted_ratio = x, w, r
            head = f"{_n(w)} settled at r={r:.2f} ({x:.0f} samples/s)"
        else:
            ref = self.reference or x
            rel = x / ref - 1.0
            if rel < -tol:
                back = self.accepted if self.accepted is not None else self.max_workers
                self.stage, self.workers = Stage.HOLD, back
                return WorkerMove(
                    back,
                    self.accepted_ratio,
                    f"workers: {_n(w)} measured {x:.0f} samples/s, {-rel:.1%} below the best "
                    f"{ref:.0f} (tolerance {tol:.0%}); back to {_n(back)} "
                    f"({self._saving(back)})",
                    settled=True,
                )
            self.accepted, self.accepted_ratio = w, r
            self.reference = max(ref, x)
            head = f"{_n(w)} at r={r:.2f} within tolerance ({rel:+.1%} vs the best {ref:.0f})"
        nxt = w - 1
        if nxt < self.min_workers:
            self.stage = Stage.HOLD
            return WorkerMove(
                w, None, f"workers: {head}; at the minimum, {self._saving(w)}", settled=True
            )
        p = predict(nxt)
        ref = self.reference or x
        if p is not None and p[1] < ref * (1.0 - _SKIP * tol):
            self.stage = Stage.HOLD
            return WorkerMove(
                w,
                None,
                f"workers: {head}; the cost model puts {_n(nxt)} at {p[1]:.0f} samples/s "
                f"({p[1] / ref - 1:+.1%}), staying at {w} ({self._saving(w)})",
                settled=True,
            )
        self.stage, self.workers = Stage.TRIAL, nxt
        share = p[0] if p else None
        note = f", device share r={share:.2f} from the cost model" if share is not None else ""
        return WorkerMove(nxt, share, f"workers: {head}; trying {nxt}{note}")

    def _saving(self, w: int) -> str:
        saved = self.max_workers - w
        pct = 100.0 * saved / self.max_workers if self.max_workers else 0.0
        return f"{saved} of {_n(self.max_workers)} saved ({pct:.0f}%)"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-serialisable); points as ``[workers, share, samples/s]`` rows."""
        return {
            "tolerance": self.tolerance,
            "max_workers": self.max_workers,
            "workers": self.workers,
            "stage": self.stage.value,
            "reference": self.reference,
            "accepted": self.accepted,
            "accepted_ratio": self.accepted_ratio,
            "points": [[w, r, x] for w, (r, x) in sorted(self.points.items())],
            "fell": self.fell,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], tolerance: float) -> WorkerSearch:
        """Restore :meth:`state_dict` (the configured ``tolerance`` wins over the saved one)."""
        return cls(
            tolerance=tolerance,
            max_workers=int(state.get("max_workers", 0)),
            workers=int(state.get("workers", 0)),
            stage=Stage(state.get("stage", "idle")),
            reference=state.get("reference"),
            accepted=state.get("accepted"),
            accepted_ratio=state.get("accepted_ratio"),
            points={int(w): (float(r), float(x)) for w, r, x in state.get("points", [])},
            fell=bool(state.get("fell", False)),
        )


def _n(workers: int) -> str:
    return f"{workers} worker" if workers == 1 else f"{workers} workers"
