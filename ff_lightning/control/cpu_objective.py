"""The controller's side of the CPU objective (``objective="cpu"``): the worker count it asks the
front ends for, and applying :class:`~ff_lightning.control.workers.WorkerSearch`'s decisions.

:class:`CpuObjective` is mixed into :class:`~ff_lightning.control.controller.Controller`: at an
epoch boundary (:meth:`CpuObjective.end_epoch`) it hands the search the settled measurement and a
predictor built on the cost model, then applies the :class:`~ff_lightning.control.workers.
WorkerMove` it returns (the count, the share it starts with, the rule's phase).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.records import Decision
from ff_lightning.control.search import Phase, Search
from ff_lightning.control.window import finite
from ff_lightning.control.workers import WorkerMove, WorkerSearch

__all__ = ["CpuObjective"]


class CpuObjective:
    """The worker-count half of the controller, mixed into it."""

    # Set by the controller: configuration ...
    mode: str
    objective: str
    max_step: float
    # ... the state it reads and changes ...
    history: list[Decision]
    ratio: float
    _ratio: float
    _decisions: int
    _search: Search
    _est: Estimator
    _model_r: float | None
    _x: float
    _workers: WorkerSearch
    _workers_configured: bool
    # ... and the helpers it calls (defined by the controller and the rule).
    _mark_change: Callable[[], None]
    _bounds: Callable[[], tuple[float, float]]
    _clamp: Callable[[float], float]
    _model_target: Callable[[CostModel], float]

    @property
    def workers(self) -> int | None:
        """DataLoader workers the next training loader should use (CPU objective), or ``None``
        when the controller does not choose them (throughput objective, not configured)."""
        if self.objective != "cpu" or not self._workers_configured:
            return None
        return self._workers.workers

    @property
    def worker_search(self) -> WorkerSearch:
        """The CPU objective's search state (read-only use)."""
        return self._workers

    def configure_workers(self, num_workers: int) -> None:
        """The configured DataLoader worker count; the CPU objective searches below it (never
        below one). The front ends call it when they attach; a state restored for the same
        count continues where it was."""
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}")
        if self.objective != "cpu":
            return
        self._workers.configure(num_workers)
        self._workers_configured = True

    def end_epoch(self) -> Decision | None:
        """At an epoch boundary (after that epoch's :meth:`decide`, if any): the CPU
        objective's worker decision, or ``None`` when the count stays as it is.

        Acts only once the share has settled at the active count (the throughput rule holds),
        except that a throughput drop after a regime change raises the count back at once. A
        decision changes :attr:`workers` (the front end rebuilds the training loader before
        the next epoch) and starts the new count at the cost model's share. Every rank takes
        the same decision: it reads only state built from reduced statistics.
        """
        if self.workers is None or self.mode != "auto":
            return None
        sr = self._search
        settled = None
        if sr.phase is Phase.HOLD and sr.hold_ref is not None and sr.hold_ref.count > 0:
            settled = (self.ratio, sr.hold_ref.throughput)
        before = self._workers.workers
        move = self._workers.decide(settled, self._predict_workers)
        return None if move is None else self._apply_workers(move, before)

    def _predict_workers(self, n: int) -> tuple[float | None, float] | None:
        """The cost model's share for ``n`` workers and the throughput it predicts there,
        scaled to the settled measurement at the active count (``None`` without a model).

        While the device cost is only a prior the share is unknown (``None``) and the speed is
        an upper bound: what ``n`` workers reach with a free device (their fixed work alone).
        """
        model, ref = self._est.model(), self._search.hold_ref
        if model is None:
            return None
        here = model.throughput(self.ratio)
        x = ref.throughput if ref is not None and ref.count > 0 else self._x
        if not (finite(here) and here > 0 and finite(x)):
            return None
        other = model.with_workers(n)
        r = self._model_target(other)
        lo, hi = self._bounds()
        if model.device_cost_assumed and r > lo + 1e-9:
            # Nothing routed yet, so the device cost is a prior: the share it gives for ``n``
            # workers is a guess (the rule finds the share there); bound the speed instead.
            free = replace(other, device_cost=0.0)
            return None, x * free.throughput(hi) / here
        return r, x * other.throughput(r) / here

    def _apply_workers(self, move: WorkerMove, old_workers: int) -> Decision:
        """Apply a worker decision: the count, the share it starts with, the rule's phase."""
        sr, old_ratio = self._search, self.ratio
        x = sr.hold_ref.throughput if sr.hold_ref is not None else None
        if move.ratio is not None:
            self._ratio = self._clamp(move.ratio)
        changed = move.workers != old_workers
        if changed:
            # Another loader: the CPU-only speed and the loader calibration belong to the old
            # count, and the steps still to come from the old loader must not be measured.
            sr.baseline_fresh = False
            self._est.forget_loader()
            sr.best, sr.hold_ref, sr.last_move = None, None, None
            sr.new_climb(self.max_step)
            sr.model_jumps = 0
            if move.settled or move.ratio is None or move.workers == self._workers.max_workers:
                # Optimise the share again from here (a reference needs the full rule).
                sr.phase = Phase.WORKERS
            else:
                sr.phase = Phase.HOLD  # a trial: measure the model's share as it is
            self._mark_change()
        elif move.settled and move.workers < self._workers.max_workers:
            # Settled below the configured count at the model's share: refine the share.
            sr.phase = Phase.WORKERS
            self._mark_change()
        decision = Decision(
            ratio=self.ratio,
            reason=move.reason,
            kind="workers",
            throughput=x,
            index=self._decisions,
            prev_ratio=old_ratio,
            best_ratio=sr.best.ratio if sr.best else None,
            best_throughput=sr.best.throughput if sr.best else None,
            baseline_throughput=sr.baseline,
            model_ratio=self._model_r,
            workers=move.workers,
            prev_workers=old_workers,
        )
        self.history.append(decision)
        return decision

    def _on_regime_change(self, rel: float) -> None:
        """The rule saw the settled throughput change by ``rel`` (hook for the CPU objective)."""
        if self.workers is not None:
            self._workers.note_regime_change(rel)
