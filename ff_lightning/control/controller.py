"""The offload controller: decides `r`, the share of each batch augmented on the device.

Pure Python (no Trainer, no tensors). The front end times each step, calls
:meth:`Controller.observe` with the batch's finished
:class:`~ff_lightning.pipeline.batch.StepStats`, and calls :meth:`Controller.decide` at each
decision point (every epoch or every N steps); the router then reads :attr:`Controller.ratio`
for the next batches.

The controller owns the share (:class:`~ff_lightning.control.share.Share`) and composes plain
parts, each in its own module: the options (:mod:`~ff_lightning.control.options`), the decision
window and its statistics (:mod:`~ff_lightning.control.window`), the decision rule of
``mode="auto"`` (:class:`~ff_lightning.control.rule.AutoRule`, a strategy holding the search
state and the cost-model estimator: measure CPU-only first, jump to the model's crossing point,
then hill-climb on measured throughput) and, with ``objective="cpu"``, the CPU objective
(:class:`~ff_lightning.control.cpu_objective.CpuObjective`, a second strategy that lowers the
active DataLoader worker count at epoch boundaries). The strategies return decisions with their
reasons; only the controller writes the share. Its state dict is composed from the parts'.

Measurement: throughput is taken over blocks of ``W`` consecutive steps (workers deliver
batches in bursts), warm-up steps after each change are skipped, and the workers' stamped CPU
seconds bound what the loader can sustain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ff_lightning.control.cpu_objective import CpuObjective
from ff_lightning.control.estimator import CostModel
from ff_lightning.control.options import MODES, OBJECTIVES, ControllerOptions
from ff_lightning.control.records import KINDS, Decision
from ff_lightning.control.rule import AutoRule
from ff_lightning.control.search import Phase, Search
from ff_lightning.control.share import Share, ShareSpace
from ff_lightning.control.window import Window, WindowSummary
from ff_lightning.control.workers import WorkerSearch
from ff_lightning.pipeline.batch import StepStats

__all__ = ["KINDS", "MODES", "OBJECTIVES", "Controller", "CostModel", "Decision", "StepStats"]

_STALE_LIMIT = 256  # accept steps anyway if none matched the new ratio after this many
STATE_VERSION = 2  # of state_dict; 1: the search state flat, estimates as a partial dict


class Controller:
    """Chooses the device share ``r`` of each batch.

    Per step call :meth:`observe`; at each decision point call :meth:`decide` and route the
    following batches with :attr:`ratio`. With ``objective="cpu"``, call :meth:`end_epoch` at
    each epoch boundary and build the next training loader with :attr:`workers`.

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

    def __init__(self, mode: str = "auto", ratio: float | None = None, **options: Any) -> None:
        opts = ControllerOptions(mode, ratio, **options)
        self.options = opts
        self.space = ShareSpace(opts)
        self.rule = AutoRule(opts, self.space)
        self.cpu = CpuObjective(opts)
        self.rule.on_regime_change = self.cpu.note_regime_change
        #: Steps skipped after each change (``None``: twice the workers); front ends set it.
        self.warmup_steps = opts.warmup_steps
        self._window = Window(opts.max_window)
        self._matched = 0  # steps routed with the current ratio since the last change
        self._since_change = 0
        self._decisions = 0
        start = opts.fixed_ratio if opts.mode != "auto" else self.space.quantise(opts.min_ratio)
        self.share = Share(start)
        init = (
            f"init: measuring the CPU-only baseline at r={start:.2f}"
            if opts.mode == "auto"
            else f"init: mode {opts.mode!r}, r={start:.2f}"
        )
        self.history: list[Decision] = [Decision(start, init, "init")]

    # ------------------------------------------------------------------ reading
    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def objective(self) -> str:
        return self.options.objective

    @property
    def tolerance(self) -> float:
        return float(self.options.tolerance)

    @property
    def min_steps(self) -> int:
        return self.options.min_steps

    @property
    def ratio(self) -> float:
        """Share of each batch to route to the device now (memory cap applied)."""
        return self.share.effective

    @property
    def memory_cap(self) -> float:
        return self.share.cap

    @property
    def search(self) -> Search:
        """The auto rule's search state (read-only use)."""
        return self.rule.search

    @property
    def workers(self) -> int | None:
        """DataLoader workers the next training loader should use (CPU objective), or ``None``
        when the controller does not choose them."""
        return self.cpu.workers

    @property
    def worker_search(self) -> WorkerSearch:
        """The CPU objective's search state (read-only use)."""
        return self.cpu.search

    # ------------------------------------------------------------------ steps
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

    def _routed_with_current(self, s: StepStats) -> bool:
        r = self.ratio
        if s.ratio is not None:
            return abs(s.ratio - r) < 1e-6
        return abs(s.n_device - r * s.batch_size) <= 1.0

    def _mark_change(self) -> None:
        self._window.reset()
        self._matched = 0
        self._since_change = 0

    # ------------------------------------------------------------------ decisions
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
        keep = False
        if self.mode == "auto":
            decision = self.rule.decide(summary, self.share, self.workers)
            keep = self.rule.keep_window
        else:
            decision = self._decide_mode(summary)
        decision.index = self._decisions
        if abs(decision.ratio - self.ratio) > 1e-12:
            self.share.ratio = decision.ratio
            self._mark_change()
        elif not keep:
            self._window.reset()
        self.history.append(decision)
        return decision

    def _decide_mode(self, s: WindowSummary) -> Decision:
        fixed, cap = self.options.fixed_ratio, self.share.cap
        label = {"off": "off (CPU only)", "gpu": "gpu (all samples on the device)"}.get(
            self.mode, f"fixed r={fixed:.2f}"
        )
        if fixed > cap:
            reason = f"memory cap {cap:.2f}: mode {label} limited to r={cap:.2f}"
            return self.rule.decision(cap, reason, "memory", s, share=self.share, clamp=False)
        return self.rule.decision(fixed, f"mode: {label}", "mode", s, share=self.share, clamp=False)

    def set_memory_cap(self, cap: float | None) -> None:
        """Cap the ratio (the memory guard's ``ratio_cap``); ``None`` lifts the cap.

        Takes effect at once (:attr:`ratio`). In DDP, reduce the cap across ranks (minimum)
        before calling so that all ranks agree.
        """
        new = 1.0 if cap is None else float(cap)
        if not 0.0 <= new <= 1.0:
            raise ValueError(f"`cap` must be None or in [0, 1], got {cap!r}")
        share, search = self.share, self.rule.search
        old_cap = share.cap
        share.cap = self.space.quantise(new, floor=True) if new < 1.0 else 1.0
        if share.cap > old_cap and share.ratio >= old_cap - 1e-9:
            # The cap was binding and has been raised: explore upward from here.
            if self.mode == "auto" and search.phase in (Phase.HOLD, Phase.CLIMB):
                search.phase = Phase.RECHECK
            self.history.append(
                Decision(
                    self.ratio,
                    f"memory cap raised to {share.cap:.2f}",
                    "memory",
                    index=self._decisions,
                    prev_ratio=self.ratio,
                )
            )
        if share.ratio <= share.cap:
            return
        prev = share.ratio
        share.ratio = share.cap
        self._mark_change()
        if self.mode == "auto" and search.phase is not Phase.BASELINE:
            # An unmeasured point: the next decision measures it (as after a revert), then
            # explores below it; nothing above the cap is allowed.
            search.best, search.phase, search.last_move = None, Phase.CLIMB, "revert"
            search.new_climb(self.space.max_step, first=-1)
            search.done = {1}
        self.history.append(
            Decision(
                share.cap,
                f"memory cap {share.cap:.2f}: r {prev:.2f} -> {share.cap:.2f}",
                "memory",
                index=self._decisions,
                prev_ratio=prev,
            )
        )

    # ------------------------------------------------------------------ CPU objective
    def configure_workers(self, num_workers: int) -> None:
        """The configured DataLoader worker count; the CPU objective searches below it (never
        below one). The front ends call it when they attach; a state restored for the same
        count continues where it was."""
        self.cpu.configure(num_workers)

    def end_epoch(self) -> Decision | None:
        """At an epoch boundary (after that epoch's :meth:`decide`, if any): the CPU
        objective's worker decision, or ``None`` when the count stays as it is. A decision
        changes :attr:`workers` (the front end rebuilds the training loader before the next
        epoch) and starts the new count at the cost model's share."""
        result = self.cpu.end_epoch(self.rule, self.share)
        if result is None:
            return None
        if result.ratio is not None:
            self.share.ratio = result.ratio
        if result.restart:
            self._mark_change()
        result.decision.index = self._decisions
        self.history.append(result.decision)
        return result.decision

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state: the share and its cap, the history, and the parts' states
        (the rule's search and estimates, the CPU objective's worker search)."""
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "ratio": self.share.ratio,
            "memory_cap": self.share.cap,
            "decisions": self._decisions,
            **self.rule.state_dict(),
            "history": [d.to_dict() for d in self.history],
            "objective": self.objective,
            "workers": self.cpu.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (or a version-1 state): the controller continues from
        the saved ratio and best point. A state saved under another mode restores only the
        history and memory cap."""
        self.history = [Decision.from_dict(d) for d in state.get("history", [])]
        self._decisions = int(state.get("decisions", len(self.history)))
        self.share.cap = float(state.get("memory_cap", 1.0))
        self._mark_change()
        self.rule.reset()
        if state.get("mode") != self.mode or self.mode != "auto":
            opts = self.options
            self.share.ratio = (
                opts.fixed_ratio if self.mode != "auto" else self.space.quantise(opts.min_ratio)
            )
            return
        self.share.ratio = float(state["ratio"])
        flat = int(state.get("version", 1)) < 2  # version 1: the search keys at top level
        self.rule.load_state_dict(state, flat=flat)
        saved = state.get("workers")
        if self.objective == "cpu" and state.get("objective") == "cpu" and saved:
            self.cpu.load_state_dict(saved)
