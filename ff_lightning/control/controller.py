"""The offload controller: decides `r`, the share of each batch augmented on the device.

Pure Python (no Trainer, no tensors). The callback times each step, calls
:meth:`Controller.observe` with a :class:`StepStats`, and calls :meth:`Controller.decide` at
each decision point (every epoch or every N steps); it then routes the next batches with
:attr:`Controller.ratio`.

The controller composes four pieces, each in its own module: the records
(:mod:`~ff_lightning.control.records`), the decision window and its statistics
(:mod:`~ff_lightning.control.window`), the cost model and its estimator
(:mod:`~ff_lightning.control.estimator`) and the search state
(:mod:`~ff_lightning.control.search`). It keeps the decision rule
(:mod:`~ff_lightning.control.rule`, weighing its evidence with
:mod:`~ff_lightning.control.evidence`): measure CPU-only first, jump to the cost model's
crossing point, then hill-climb on measured throughput. With ``objective="cpu"`` a
:class:`~ff_lightning.control.workers.WorkerSearch` then lowers the active DataLoader worker
count at epoch boundaries (:meth:`Controller.end_epoch`,
:mod:`~ff_lightning.control.cpu_objective`), keeping the fewest workers whose throughput stays
within ``tolerance`` of the best. Its arguments are checked in
:mod:`~ff_lightning.control.options` and its resumable state lives in
:mod:`~ff_lightning.control.checkpoint`.

Measurement: throughput is taken over blocks of ``W`` consecutive steps (workers deliver
batches in bursts), warm-up steps after each change are skipped, and the workers' stamped CPU
seconds bound what the loader can sustain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ff_lightning.control.checkpoint import Checkpoint
from ff_lightning.control.cpu_objective import CpuObjective
from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.evidence import worker_cores
from ff_lightning.control.options import check_controller_args
from ff_lightning.control.records import KINDS, MODES, Decision
from ff_lightning.control.rule import AutoRule
from ff_lightning.control.search import Phase, Search
from ff_lightning.control.window import Window, WindowSummary, finite
from ff_lightning.control.workers import OBJECTIVES, WorkerSearch
from ff_lightning.pipeline.batch import StepStats

__all__ = ["KINDS", "MODES", "OBJECTIVES", "Controller", "CostModel", "Decision", "StepStats"]

_STALE_LIMIT = 256  # accept steps anyway if none matched the new ratio after this many


class Controller(CpuObjective, Checkpoint, AutoRule):
    """Chooses the device share ``r`` of each batch.

    Per step call :meth:`observe`; at each decision point call :meth:`decide` and route the
    following batches with :attr:`ratio`.
    The CPU objective's :attr:`workers`, :meth:`configure_workers` and :meth:`end_epoch` come
    from :class:`~ff_lightning.control.cpu_objective.CpuObjective`, :meth:`state_dict` and
    :meth:`load_state_dict` from :class:`~ff_lightning.control.checkpoint.Checkpoint`.

    Args:
        mode: ``"off"`` (always 0), ``"gpu"`` (always 1), ``"fixed"`` (``ratio``) or
            ``"auto"``: measure CPU-only first, jump to the cost model's crossing point, then
            hill-climb on measured throughput. The memory cap bounds every mode.
        ratio: the ratio for ``mode="fixed"`` (required there, rejected elsewhere).
        min_ratio, max_ratio: bounds of the auto search; the CPU-only baseline is measured at
            ``min_ratio``.
        hysteresis: relative throughput change considered noise. It is widened to two
            standard errors of the measured difference when timings are noisier than that.
        step: largest hill-climbing step. The step used in a direction is the smallest one
            whose effect the cost model says is measurable; it halves after each failed try.
        min_step: smallest step; also at least ``quantum`` and one sample (``1/batch_size``).
        warmup_steps: steps ignored after the first batch routed with a new ratio arrives
            (batches routed before the change, still in flight, are ignored as well).
            ``None``: ``2 * num_workers`` (the DataLoader's default prefetch depth), long
            enough for batches buffered under the old ratio to drain.
        quantum: round ratios to multiples of this (e.g. ``1/batch_size``); ``None``: model
            targets are still placed on whole samples once the batch size is known.
        regime_tol: once settled, a relative throughput change beyond this (or a move of the
            model's crossing point by more than this) counts as a regime change and the ratio
            is optimised again.
        min_steps: measured steps needed before auto acts; with fewer it holds and keeps
            accumulating into the next window.
        max_window: most recent steps kept per decision window.
        objective: ``"throughput"`` (the fastest share for the configured workers) or
            ``"cpu"`` (``mode="auto"`` only): after that, the fewest workers whose throughput
            stays within ``tolerance`` of the best; see :meth:`end_epoch`.
        tolerance: relative throughput loss the CPU objective accepts for saving workers.
    """

    def __init__(
        self,
        mode: str = "auto",
        ratio: float | None = None,
        *,
        min_ratio: float = 0.0,
        max_ratio: float = 1.0,
        hysteresis: float = 0.02,
        step: float = 0.1,
        min_step: float = 0.01,
        warmup_steps: int | None = None,
        quantum: float | None = None,
        regime_tol: float = 0.1,
        min_steps: int = 3,
        max_window: int = 4096,
        objective: str = "throughput",
        tolerance: float = 0.03,
    ) -> None:
        check_controller_args(
            mode,
            ratio,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            hysteresis=hysteresis,
            step=step,
            min_step=min_step,
            warmup_steps=warmup_steps,
            quantum=quantum,
            regime_tol=regime_tol,
            min_steps=min_steps,
            max_window=max_window,
            objective=objective,
            tolerance=tolerance,
        )

        self.mode = mode
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self.hysteresis = float(hysteresis)
        self.max_step = float(step)
        self.min_step = max(float(min_step), quantum or 0.0)
        self.warmup_steps = warmup_steps
        self.quantum = quantum
        self.regime_tol = float(regime_tol)
        # Cores the DataLoader workers can use (judging whether they are busy at all).
        self.worker_cores = worker_cores()
        self.min_steps = min_steps
        self.objective = objective
        self.tolerance = float(tolerance)
        self._workers = WorkerSearch(self.tolerance)
        self._workers_configured = False
        self._fixed = {"off": 0.0, "gpu": 1.0, "fixed": float(ratio or 0.0)}.get(mode, 0.0)
        self._cap = 1.0
        self._window = Window(max_window)
        self._matched = 0  # steps routed with the current ratio since the last change
        self._since_change = 0
        self._keep_window = False
        self._decisions = 0
        self._reset_search()
        self._ratio = self._fixed if mode != "auto" else self._quantise(self.min_ratio)
        init = (
            f"init: measuring the CPU-only baseline at r={self._ratio:.2f}"
            if mode == "auto"
            else f"init: mode {mode!r}, r={self._ratio:.2f}"
        )
        self.history: list[Decision] = [Decision(self._ratio, init, "init")]

    # ------------------------------------------------------------------ public API
    @property
    def ratio(self) -> float:
        """Share of each batch to route to the device now (memory cap applied)."""
        return min(self._ratio, self._cap)

    @property
    def memory_cap(self) -> float:
        return self._cap

    def observe(self, stats: StepStats) -> None:
        """Record one training step (validated with :meth:`StepStats.check`)."""
        stats.check()
        self._since_change += 1
        if self._routed_with_current(stats) or self._since_change > _STALE_LIMIT:
            self._matched += 1
        # Warm-up skip: batches routed before the last change are still in flight (the
        # DataLoader prefetches them), and batches buffered meanwhile make the first steps
        # after them look faster or slower than the new ratio really is.
        warmup = self.warmup_steps if self.warmup_steps is not None else 2 * stats.num_workers
        if self._matched > warmup:
            self._window.update(stats)

    def decide(
        self, reduce: Callable[[dict[str, float]], Mapping[str, Any]] | None = None
    ) -> Decision:
        """Decide the ratio for the next window from the steps observed since the last one.

        Args:
            reduce: optional callable, called exactly once per decision (in every mode) with
                a dict of float statistics of this rank's window (NaN where unknown); it must
                return the same keys averaged over ranks (the callback passes an all-reduce).
                Every rank then takes the same decision from the same numbers.
        """
        summary = self._window.summary()
        if reduce is not None:  # cross-rank boundary: plain floats out and back
            summary = WindowSummary.from_dict(reduce(summary.to_dict()))
        self._decisions += 1
        if self.mode == "auto":
            decision = self._decide_auto(summary)
        else:
            decision = self._decide_mode(summary)
        decision.index = self._decisions
        keep, self._keep_window = self._keep_window, False
        if abs(decision.ratio - self.ratio) > 1e-12:
            self._ratio = decision.ratio
            self._mark_change()
        elif not keep:
            self._window.reset()
        self.history.append(decision)
        return decision

    def set_memory_cap(self, cap: float | None) -> None:
        """Cap the ratio (the memory guard's ``ratio_cap``); ``None`` lifts the cap.

        Takes effect at once (:attr:`ratio`). In DDP, reduce the cap across ranks (minimum)
        before calling so that all ranks agree.
        """
        new = 1.0 if cap is None else float(cap)
        if not 0.0 <= new <= 1.0:
            raise ValueError(f"`cap` must be None or in [0, 1], got {cap!r}")
        old_cap, search = self._cap, self._search
        self._cap = self._quantise(new, floor=True) if new < 1.0 else 1.0
        if self._cap > old_cap and self._ratio >= old_cap - 1e-9:
            # The cap was binding and has been raised: explore upward from here.
            if self.mode == "auto" and search.phase in (Phase.HOLD, Phase.CLIMB):
                search.phase = Phase.RECHECK
            self.history.append(
                Decision(
                    self.ratio,
                    f"memory cap raised to {self._cap:.2f}",
                    "memory",
                    index=self._decisions,
                    prev_ratio=self.ratio,
                )
            )
        if self._ratio <= self._cap:
            return
        prev = self._ratio
        self._ratio = self._cap
        self._mark_change()
        if self.mode == "auto" and search.phase is not Phase.BASELINE:
            # An unmeasured point: the next decision measures it (as after a revert), then
            # explores below it; nothing above the cap is allowed.
            search.best, search.phase, search.last_move = None, Phase.CLIMB, "revert"
            search.new_climb(self.max_step, first=-1)
            search.done = {1}
        self.history.append(
            Decision(
                self._cap,
                f"memory cap {self._cap:.2f}: r {prev:.2f} -> {self._cap:.2f}",
                "memory",
                index=self._decisions,
                prev_ratio=prev,
            )
        )

    # ------------------------------------------------------------------ measurement
    def _reset_search(self) -> None:
        self._search = Search.start(self.max_step)
        self._est = Estimator()
        self._model_r: float | None = None  # the fitted model's target at the last decision
        self._x, self._se = float("nan"), 0.0  # this window's throughput and its rel. s.e.

    def _routed_with_current(self, s: StepStats) -> bool:
        r = self.ratio
        if s.ratio is not None:
            return abs(s.ratio - r) < 1e-6
        return abs(s.n_device - r * s.batch_size) <= 1.0

    def _mark_change(self) -> None:
        self._window.reset()
        self._matched = 0
        self._since_change = 0

    # ------------------------------------------------------------------ fixed modes
    def _decide_mode(self, s: WindowSummary) -> Decision:
        label = {"off": "off (CPU only)", "gpu": "gpu (all samples on the device)"}.get(
            self.mode, f"fixed r={self._fixed:.2f}"
        )
        if self._fixed > self._cap:
            return self._decision(
                self._cap,
                f"memory cap {self._cap:.2f}: mode {label} limited to r={self._cap:.2f}",
                "memory",
                s,
            )
        return self._decision(self._fixed, f"mode: {label}", "mode", s)

    # ------------------------------------------------------------------ shared with the rule
    def _bounds(self) -> tuple[float, float]:
        hi = min(self.max_ratio, self._cap)
        return min(self.min_ratio, hi), hi

    def _quantise(self, r: float, floor: bool = False) -> float:
        if self.quantum:
            q = r / self.quantum
            r = (math.floor(q + 1e-9) if floor else round(q)) * self.quantum
        return round(min(max(r, 0.0), 1.0), 12)

    def _clamp(self, r: float) -> float:
        lo, hi = self._bounds()
        return min(max(self._quantise(r), lo), hi)

    def _min_step(self) -> float:
        b = self._est.batch_size
        return max(self.min_step, 1.0 / b if b else 0.0)

    def _clamp_step(self, step: float) -> float:
        return min(max(step, self._min_step()), self.max_step)

    def _decision(
        self,
        ratio: float,
        reason: str,
        kind: str,
        s: WindowSummary,
        step: float | None = None,
    ) -> Decision:
        best = self._search.best
        x, wait = s.samples_per_s, s.wait_s
        return Decision(
            ratio=self._clamp(ratio) if self.mode == "auto" else ratio,
            reason=reason,
            kind=kind,
            throughput=x if finite(x) else None,
            step=step,
            prev_ratio=self.ratio,
            best_ratio=best.ratio if best else None,
            best_throughput=best.throughput if best else None,
            baseline_throughput=self._search.baseline,
            model_ratio=self._model_r,
            data_wait_s=wait if finite(wait) else None,
            steps=int(s.steps) if finite(s.steps) else 0,
            workers=self.workers,
        )
