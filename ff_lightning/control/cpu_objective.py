"""The CPU objective (``objective="cpu"``) as the controller's second strategy: the worker count
it asks the front ends for, decided at epoch boundaries.

:class:`CpuObjective` holds the :class:`~ff_lightning.control.workers.WorkerSearch`. At an epoch
boundary (:meth:`CpuObjective.end_epoch`) it hands the search the settled measurement of the
decision rule and a predictor built on the rule's cost model, and returns the
:class:`WorkerDecision` for the :class:`~ff_lightning.control.workers.WorkerMove` it got: the
count, the share the new count starts with, and the rule's phase. The controller applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ff_lightning.control.options import ControllerOptions
from ff_lightning.control.records import Decision
from ff_lightning.control.rule import AutoRule
from ff_lightning.control.search import Phase
from ff_lightning.control.share import Share
from ff_lightning.control.window import finite
from ff_lightning.control.workers import WorkerMove, WorkerSearch

__all__ = ["CpuObjective", "WorkerDecision"]


@dataclass(frozen=True)
class WorkerDecision:
    """What the controller applies: the new chosen share (``None``: unchanged), whether the
    steps measured so far belong to the old loader (``restart``), and the decision record."""

    ratio: float | None
    restart: bool
    decision: Decision


class CpuObjective:
    """The worker-count strategy of the controller."""

    def __init__(self, options: ControllerOptions) -> None:
        self.options = options
        self.search = WorkerSearch(float(options.tolerance))
        self.configured = False

    @property
    def workers(self) -> int | None:
        """DataLoader workers the next training loader should use, or ``None`` when the
        controller does not choose them (throughput objective, not configured)."""
        if self.options.objective != "cpu" or not self.configured:
            return None
        return self.search.workers

    def configure(self, num_workers: int) -> None:
        """The configured worker count; the search runs below it (never below one)."""
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}")
        if self.options.objective != "cpu":
            return
        self.search.configure(num_workers)
        self.configured = True

    def note_regime_change(self, rel: float) -> None:
        """The rule saw the settled throughput change by ``rel`` (a drop raises the workers)."""
        if self.workers is not None:
            self.search.note_regime_change(rel)

    def end_epoch(self, rule: AutoRule, share: Share) -> WorkerDecision | None:
        """The worker decision at an epoch boundary, or ``None`` when the count stays.

        Acts only once the share has settled at the active count (the rule holds), except that a
        throughput drop after a regime change raises the count back at once. A change starts
        the new count at the cost model's share. Every rank takes the same decision: it reads
        only state built from reduced statistics.
        """
        if self.workers is None or self.options.mode != "auto":
            return None
        sr = rule.search
        settled = None
        if sr.phase is Phase.HOLD and sr.hold_ref is not None and sr.hold_ref.count > 0:
            settled = (share.effective, sr.hold_ref.throughput)
        before = self.search.workers
        move = self.search.decide(settled, lambda n: self._predict(rule, share, n))
        return None if move is None else self._apply(rule, share, move, before)

    def _predict(self, rule: AutoRule, share: Share, n: int) -> tuple[float | None, float] | None:
        """The cost model's share for ``n`` workers and the throughput it predicts there,
        scaled to the settled measurement at the active count (``None`` without a model).

        While the device cost is only a prior the share is unknown (``None``) and the speed is
        an upper bound: what ``n`` workers reach with a free device (their fixed work alone).
        """
        model, ref = rule.est.model(), rule.search.hold_ref
        if model is None:
            return None
        here = model.throughput(share.effective)
        x = ref.throughput if ref is not None and ref.count > 0 else rule.x
        if not (finite(here) and here > 0 and finite(x)):
            return None
        other = model.with_workers(n)
        r = rule.ev.model_target(other, share)
        lo, hi = rule.space.bounds(share)
        if model.device_cost_assumed and r > lo + 1e-9:
            # Nothing routed yet, so the device cost is a prior: the share it gives for ``n``
            # workers is a guess (the rule finds the share there); bound the speed instead.
            free = replace(other, device_cost=0.0)
            return None, x * free.throughput(hi) / here
        return r, x * other.throughput(r) / here

    def _apply(
        self, rule: AutoRule, share: Share, move: WorkerMove, old_workers: int
    ) -> WorkerDecision:
        """The count, the share it starts with, the rule's phase."""
        sr, old_effective = rule.search, share.effective
        x = sr.hold_ref.throughput if sr.hold_ref is not None else None
        ratio = rule.space.clamp(move.ratio, share) if move.ratio is not None else None
        restart = False
        if move.workers != old_workers:
            # Another loader: the CPU-only speed and the loader calibration belong to the old
            # count, and the steps still to come from the old loader must not be measured.
            sr.baseline_fresh = False
            rule.est.forget_loader()
            sr.best, sr.hold_ref, sr.last_move = None, None, None
            sr.new_climb(rule.space.max_step)
            sr.model_jumps = 0
            if move.settled or move.ratio is None or move.workers == self.search.max_workers:
                # Optimise the share again from here (a reference needs the full rule).
                sr.phase = Phase.WORKERS
            else:
                sr.phase = Phase.HOLD  # a trial: measure the model's share as it is
            restart = True
        elif move.settled and move.workers < self.search.max_workers:
            # Settled below the configured count at the model's share: refine the share.
            sr.phase = Phase.WORKERS
            restart = True
        new_ratio = ratio if ratio is not None else share.ratio
        decision = Decision(
            ratio=min(new_ratio, share.cap),
            reason=move.reason,
            kind="workers",
            throughput=x,
            prev_ratio=old_effective,
            best_ratio=sr.best.ratio if sr.best else None,
            best_throughput=sr.best.throughput if sr.best else None,
            baseline_throughput=sr.baseline,
            model_ratio=rule.model_r,
            workers=move.workers,
            prev_workers=old_workers,
        )
        return WorkerDecision(ratio, restart, decision)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any] | None:
        return self.search.state_dict() if self.configured else None

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Continue a saved search, unless the configured count changed since (then the
        search starts afresh)."""
        ws = WorkerSearch.from_state(saved, float(self.options.tolerance))
        if not self.configured or ws.max_workers == self.search.max_workers:
            self.search, self.configured = ws, True
