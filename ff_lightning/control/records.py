"""The controller's record of what one decision chose, and why (:class:`Decision`).

What one step measured (:class:`~ff_lightning.pipeline.batch.StepStats`) is part of the batch
record; it is re-exported here for the controller's readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ff_lightning.control.options import MODES
from ff_lightning.pipeline.batch import StepStats

__all__ = ["KINDS", "MODES", "Decision", "StepStats"]

KINDS = ("init", "model", "explore", "revert", "hold", "best", "memory", "mode", "workers")


@dataclass
class Decision:
    """One decision of the controller, with its reason and the numbers behind it.

    Attributes:
        ratio: share of each batch routed to the device from now on.
        reason: human-readable explanation, e.g. ``"revert: r=0.50 lost 7.2% throughput vs
            best r=0.25"``.
        kind: one of ``init, model, explore, revert, hold, best, memory, mode, workers``
            (``workers``: the CPU objective changed or settled the worker count).
        throughput: samples/s measured over the window that led to this decision (trimmed mean
            of the per-step rate, warm-up steps excluded); ``None`` when nothing was measured.
        step: size of an exploratory move (``None`` for other kinds).
        index: 0 for the initial record, then 1, 2, ... per ``Controller.decide`` call.
        prev_ratio: ratio in effect during the window.
        best_ratio, best_throughput: best measured point so far (auto mode).
        baseline_throughput: measured CPU-only (``min_ratio``) throughput (auto mode).
        model_ratio: the cost model's crossing point, when it could be fitted.
        data_wait_s: mean data wait per step over the window.
        steps: steps used for the measurement.
        workers: active DataLoader workers from this decision on (CPU objective; ``None``
            when the controller does not choose them), ``prev_workers`` before it.
    """

    ratio: float
    reason: str
    kind: str
    throughput: float | None = None
    step: float | None = None
    index: int = 0
    prev_ratio: float | None = None
    best_ratio: float | None = None
    best_throughput: float | None = None
    baseline_throughput: float | None = None
    model_ratio: float | None = None
    data_wait_s: float | None = None
    steps: int = 0
    workers: int | None = None
    prev_workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
