"""The auto controller's search state: where it is in the search and what it has measured.

The decision rule lives in :class:`~ff_lightning.control.controller.Controller`; this module
only holds its state (:class:`Search`, with a :class:`Phase`) and turns it into plain Python
for checkpoints.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["HoldRef", "Phase", "Point", "Search"]


class Phase(enum.Enum):
    """What the next window's measurement is for."""

    BASELINE = "baseline"  # the CPU-only (min_ratio) throughput
    CLIMB = "climb"  # an exploratory move, or the best point after a revert
    MODEL = "model"  # a jump to the cost model's crossing point
    HOLD = "hold"  # settled: watch for a regime change or a floor violation
    FLOOR = "floor"  # CPU-only again, before settling above it on a stale baseline
    RECHECK = "recheck"  # the memory cap was raised: optimise again from here
    WORKERS = "workers"  # the worker count changed (CPU objective): optimise again from here


class Point(NamedTuple):
    """A measured point: ratio, samples/s and the throughput's relative standard error."""

    ratio: float
    throughput: float
    se: float


class HoldRef(NamedTuple):
    """What a settled controller compares against: the mean throughput measured since
    settling, over ``count`` windows, and the model's target when it settled."""

    throughput: float
    count: int
    model_ratio: float | None


@dataclass
class Search:
    """State of the auto search.

    Attributes:
        phase: what the next window measures.
        best: best measured point of this optimisation episode.
        baseline: last measured CPU-only throughput; ``baseline_fresh`` says whether it was
            measured after the last regime change.
        steps: hill-climbing step per direction (``+1`` up, ``-1`` down).
        done: directions exhausted at the best point.
        direction: direction of the last exploratory move.
        next_direction: direction to try next (``None``: toward relieving the bottleneck).
        last_move: ``"explore"``, ``"revert"``, ``"model"`` or ``None``.
        model_jumps: model jumps in this optimisation episode.
        hold_ref: reference throughput once settled.
        strikes: settled windows in a row beyond the regime tolerance (signed: up or down);
            a regime change needs ``2 ** false_alarms`` of them (capped at 8).
        false_alarms: regime changes in a row whose search settled back on the share it
            left (machine noise, most likely): each one doubles the windows the next needs.
        alarm_from: the share a regime change left, until the search settles again.
    """

    steps: dict[int, float]
    phase: Phase = Phase.BASELINE
    best: Point | None = None
    baseline: float | None = None
    baseline_fresh: bool = False
    done: set[int] = field(default_factory=set)
    direction: int = 1
    next_direction: int | None = None
    last_move: str | None = None
    model_jumps: int = 0
    hold_ref: HoldRef | None = None
    strikes: int = 0
    false_alarms: int = 0
    alarm_from: float | None = None

    @classmethod
    def start(cls, max_step: float) -> Search:
        """A fresh search: measure the baseline, full steps both ways."""
        return cls(steps={1: max_step, -1: max_step})

    def new_climb(self, max_step: float, first: int | None = None) -> None:
        """Start hill-climbing afresh from the best point, trying ``first`` first."""
        self.steps = {1: max_step, -1: max_step}
        self.done = set()
        self.next_direction = first

    def state_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-serialisable); the phase by its value."""
        return {
            "phase": self.phase.value,
            "best": list(self.best) if self.best else None,
            "baseline": self.baseline,
            "baseline_fresh": self.baseline_fresh,
            "steps": [self.steps[1], self.steps[-1]],
            "done": sorted(self.done),
            "direction": self.direction,
            "next_direction": self.next_direction,
            "last_move": self.last_move,
            "model_jumps": self.model_jumps,
            "hold_ref": list(self.hold_ref) if self.hold_ref else None,
            "strikes": self.strikes,
            "false_alarms": self.false_alarms,
            "alarm_from": self.alarm_from,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], max_step: float) -> Search:
        """Restore :meth:`state_dict` (version-1 checkpoints hold the same keys, flat)."""
        up, down = state.get("steps", [max_step, max_step])
        best, ref = state.get("best"), state.get("hold_ref")
        return cls(
            steps={1: float(up), -1: float(down)},
            phase=Phase(state["phase"]),
            best=Point(*best) if best else None,
            baseline=state.get("baseline"),
            baseline_fresh=bool(state.get("baseline_fresh", False)),
            done=set(state.get("done", [])),
            direction=int(state.get("direction", 1)),
            next_direction=state.get("next_direction"),
            last_move=state.get("last_move"),
            model_jumps=int(state.get("model_jumps", 0)),
            hold_ref=HoldRef(*ref) if ref else None,
            strikes=int(state.get("strikes", 0)),
            false_alarms=int(state.get("false_alarms", 0)),
            alarm_from=state.get("alarm_from"),
        )
