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
(:mod:`~ff_lightning.control.rule`): measure CPU-only first, jump to the cost model's
crossing point, then hill-climb on measured throughput. With ``objective="cpu"`` a
:class:`~ff_lightning.control.workers.WorkerSearch` then lowers the active DataLoader worker
count at epoch boundaries (:meth:`Controller.end_epoch`), keeping the fewest workers whose
throughput stays within ``tolerance`` of the best.

Measurement: throughput is taken over blocks of ``W`` consecutive steps (workers deliver
batches in bursts), warm-up steps after each change are skipped, and the workers' stamped CPU
seconds bound what the loader can sustain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.records import KINDS, MODES, Decision, StepStats
from ff_lightning.control.rule import AutoRule
from ff_lightning.control.search import Phase, Search
from ff_lightning.control.window import Window, WindowSummary, finite
from ff_lightning.control.workers import OBJECTIVES, WorkerMove, WorkerSearch

__all__ = ["KINDS", "MODES", "OBJECTIVES", "Controller", "CostModel", "Decision", "StepStats"]

_STALE_LIMIT = 256  # accept steps anyway if none matched the new ratio after this many
_VERSION = 2  # of state_dict; 1: the search state flat, estimates as a partial dict


class Controller(AutoRule):
    """Chooses the device share ``r`` of each batch.

    Per step call :meth:`observe`; at each decision point call :meth:`decide` and route the
    following batches with :attr:`ratio`.

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
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if mode == "fixed":
            if ratio is None:
                raise ValueError("`ratio` is required when mode='fixed'")
            if not 0.0 <= float(ratio) <= 1.0:
                raise ValueError(f"`ratio` must be in [0, 1], got {ratio!r}")
        elif ratio is not None:
            raise ValueError(f"`ratio` is only used when mode='fixed', got mode={mode!r}")
        for name, val in (("min_ratio", min_ratio), ("max_ratio", max_ratio)):
            if not 0.0 <= val <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {val!r}")
        if min_ratio > max_ratio:
            raise ValueError(
                f"`min_ratio` must not exceed `max_ratio`, got {min_ratio} > {max_ratio}"
            )
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"`hysteresis` must be in [0, 1), got {hysteresis!r}")
        if not 0.0 < step <= 1.0:
            raise ValueError(f"`step` must be in (0, 1], got {step!r}")
        if not 0.0 < min_step <= step:
            raise ValueError(f"`min_step` must be in (0, step={step}], got {min_step!r}")
        if warmup_steps is not None and (not isinstance(warmup_steps, int) or warmup_steps < 0):
            raise ValueError(
                f"`warmup_steps` must be None or a non-negative int, got {warmup_steps!r}"
            )
        if quantum is not None and not 0.0 < quantum <= 1.0:
            raise ValueError(f"`quantum` must be None or in (0, 1], got {quantum!r}")
        if not 0.0 < regime_tol < 1.0:
            raise ValueError(f"`regime_tol` must be in (0, 1), got {regime_tol!r}")
        if not isinstance(min_steps, int) or min_steps < 1:
            raise ValueError(f"`min_steps` must be a positive int, got {min_steps!r}")
        if not isinstance(max_window, int) or max_window < min_steps:
            raise ValueError(f"`max_window` must be an int >= `min_steps`, got {max_window!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "cpu" and mode != "auto":
            raise ValueError(
                f"`objective='cpu'` needs mode='auto' (it moves the workers' share to the device), "
                f"got mode={mode!r}"
            )
        if isinstance(tolerance, bool) or not 0.0 <= tolerance < 1.0:
            raise ValueError(f"`tolerance` must be in [0, 1), got {tolerance!r}")

        self.mode = mode
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self.hysteresis = float(hysteresis)
        self.max_step = float(step)
        self.min_step = max(float(min_step), quantum or 0.0)
        self.warmup_steps = warmup_steps
        self.quantum = quantum
        self.regime_tol = float(regime_tol)
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

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state: ratio, search state, cost estimates, memory cap, history."""
        return {
            "version": _VERSION,
            "mode": self.mode,
            "ratio": self._ratio,
            "memory_cap": self._cap,
            "decisions": self._decisions,
            "search": self._search.state_dict(),
            "estimates": self._est.state_dict(),
            "history": [d.to_dict() for d in self.history],
            "objective": self.objective,
            "workers": self._workers.state_dict() if self._workers_configured else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (or a version-1 state): the controller continues from
        the saved ratio and best point. A state saved under another mode restores only the
        history and memory cap."""
        self.history = [Decision.from_dict(d) for d in state.get("history", [])]
        self._decisions = int(state.get("decisions", len(self.history)))
        self._cap = float(state.get("memory_cap", 1.0))
        self._mark_change()
        self._reset_search()
        if state.get("mode") != self.mode or self.mode != "auto":
            self._ratio = self._fixed if self.mode != "auto" else self._quantise(self.min_ratio)
            return
        self._ratio = float(state["ratio"])
        flat = int(state.get("version", 1)) < 2  # version 1: the search keys at top level
        self._search = Search.from_state(state if flat else state["search"], self.max_step)
        self._est = Estimator.from_state(state.get("estimates", {}))
        saved = state.get("workers")
        if self.objective == "cpu" and state.get("objective") == "cpu" and saved:
            ws = WorkerSearch.from_state(saved, self.tolerance)
            if not self._workers_configured or ws.max_workers == self._workers.max_workers:
                self._workers, self._workers_configured = ws, True
            # else: the configured count changed since the checkpoint: search afresh

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
