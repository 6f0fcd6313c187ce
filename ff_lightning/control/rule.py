"""The auto mode's decision rule: measure CPU-only, jump to the model's point, hill-climb.

:class:`AutoRule` is a strategy over the window summary, the cost-model estimator, the search
state and the options: :meth:`AutoRule.decide` judges one window's measurement and returns the
next :class:`~ff_lightning.control.records.Decision` with its reason (as Lightning's
``EarlyStopping`` returns its decision with a reason). One method per phase of the search. It
reads the controller's :class:`~ff_lightning.control.share.Share` but never writes it: the
controller applies the decision. What counts as a real difference, and what the cost model
predicts for a move, is judged by :class:`~ff_lightning.control.evidence.Evidence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ff_lightning.control import settled
from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.evidence import Evidence
from ff_lightning.control.options import ControllerOptions
from ff_lightning.control.records import Decision
from ff_lightning.control.search import Phase, Point, Search
from ff_lightning.control.share import Share, ShareSpace
from ff_lightning.control.window import WindowSummary, finite

__all__ = ["AutoRule"]

_MAX_MODEL_JUMPS = 3  # model jumps per optimisation episode before hill-climbing takes over


class AutoRule:
    """The decision rule of ``mode="auto"``, with its state (search, estimator, last fit).

    Attributes:
        search: where the search is (:class:`~ff_lightning.control.search.Search`).
        est: the cost-model estimator fitted on every window.
        model_r: the fitted model's target at the last decision (``None``: no model yet).
        x, se: the last window's throughput and its relative standard error.
        keep_window: the last decision asks the controller to keep accumulating the window.
        on_regime_change: called with the relative throughput change when a settled share
            sees a regime change (the CPU objective raises the worker count on a drop).
    """

    def __init__(self, options: ControllerOptions, space: ShareSpace) -> None:
        self.options = options
        self.space = space
        self.ev = Evidence(options, space)
        self.on_regime_change: Callable[[float], None] = lambda rel: None
        self.keep_window = False
        #: The share being decided for (the controller's, set by each :meth:`decide` call).
        self.share = Share(0.0)
        self._workers: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the search and the estimates (a new optimisation from scratch)."""
        self.search = Search.start(self.space.max_step)
        self.est = Estimator()
        self.model_r: float | None = None
        self.x, self.se = float("nan"), 0.0

    # ------------------------------------------------------------------ entry
    def decide(self, s: WindowSummary, share: Share, workers: int | None = None) -> Decision:
        """The decision after the window ``s`` measured at ``share``; ``workers`` is the active
        worker count when the CPU objective chooses it (for reasons and records)."""
        self.share, self._workers = share, workers
        self.keep_window = False
        return self._decide_auto(s)

    def decision(
        self,
        ratio: float,
        reason: str,
        kind: str,
        s: WindowSummary,
        step: float | None = None,
        *,
        share: Share | None = None,
        workers: int | None = None,
        clamp: bool = True,
    ) -> Decision:
        """A :class:`Decision` carrying the window's figures and the search's best points."""
        share = share if share is not None else self.share
        best = self.search.best
        x, wait = s.samples_per_s, s.wait_s
        return Decision(
            ratio=self.space.clamp(ratio, share) if clamp else ratio,
            reason=reason,
            kind=kind,
            throughput=x if finite(x) else None,
            step=step,
            prev_ratio=share.effective,
            best_ratio=best.ratio if best else None,
            best_throughput=best.throughput if best else None,
            baseline_throughput=self.search.baseline,
            model_ratio=self.model_r,
            data_wait_s=wait if finite(wait) else None,
            steps=int(s.steps) if finite(s.steps) else 0,
            workers=workers if workers is not None else self._workers,
        )

    def _clamp(self, r: float) -> float:
        return self.space.clamp(r, self.share)

    def _adaptive_step(self, model: CostModel | None, d: int, budget: float) -> float:
        return self.ev.adaptive_step(
            model,
            d,
            budget,
            best=self.search.best,
            se=self.se,
            share=self.share,
            batch_size=self.est.batch_size,
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"search": self.search.state_dict(), "estimates": self.est.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], *, flat: bool = False) -> None:
        """Restore :meth:`state_dict` (``flat``: a version-1 checkpoint, whose search keys sit
        at the top level of ``state``)."""
        self.reset()
        self.search = Search.from_state(state if flat else state["search"], self.space.max_step)
        self.est = Estimator.from_state(state.get("estimates", {}))

    # ------------------------------------------------------------------ phases
    def _decide_auto(self, s: WindowSummary) -> Decision:
        sr, r, x = self.search, self.share.ratio, s.samples_per_s
        n = int(s.steps) if finite(s.steps) else 0
        if not finite(x) or n < self.options.min_steps:
            self.keep_window = True  # too few steps: keep accumulating
            return self.decision(
                r,
                f"hold: {n} steps measured since the last change (after warm-up), "
                f"need {self.options.min_steps}",
                "hold",
                s,
            )
        self.est.update(s, r)
        x = self.est.loader_limited(s, x)
        s = replace(s, samples_per_s=x)
        self.x, self.se = x, (s.se_rel if finite(s.se_rel) else 0.0)
        model = self.est.model()
        self.model_r = self.ev.model_target(model, self.share) if model else None
        if r <= self.space.bounds(self.share)[0] + 1e-9:  # a fresh CPU-only (min_ratio) measurement
            sr.baseline, sr.baseline_fresh = x, True
        if sr.phase is Phase.BASELINE:
            sr.best = Point(r, x, self.se)
            return self._after_baseline(s, model)
        if sr.phase is Phase.HOLD:
            return settled.check_hold(self, s, model)
        if sr.phase is Phase.FLOOR:
            return settled.after_floor_check(self, s)
        if sr.phase is Phase.RECHECK:  # the memory cap was raised: optimise again from here
            return self.regime_change(s, model, "memory cap raised")
        if sr.phase is Phase.WORKERS:  # CPU objective: another worker count, optimise again
            return self.regime_change(s, model, f"now {self._workers} workers")
        if sr.phase is Phase.MODEL:
            return self._after_model_jump(s, model)
        if sr.last_move == "revert" or sr.best is None:
            # Back at the best point: refresh its measurement, explore on. A large change
            # since it was measured means the costs changed under us.
            if sr.best is not None and abs(sr.best.ratio - r) < 1e-9:
                rel = x / sr.best.throughput - 1.0
                if abs(rel) > max(self.options.regime_tol, 3.0 * math.hypot(self.se, sr.best.se)):
                    return self.regime_change(
                        s, model, f"regime change (best point measured {rel:+.0%})"
                    )
            sr.best = Point(r, x, self.se)
            return self._next_explore(s, model, "")
        return self._after_explore(s, model)

    def _after_baseline(self, s: WindowSummary, model: CostModel | None) -> Decision:
        r, wait_ms = self.share.ratio, s.wait_s * 1e3
        self.search.new_climb(self.space.max_step)
        self.search.model_jumps = 0
        if not self.ev.loader_bound(s):
            # Not waiting for data: routing work to the device could only lengthen the step.
            return settled.settle(
                self,
                s,
                f"model: device-bound (wait {wait_ms:.1f} ms/step), r={r:.2f} is best",
                "model",
            )
        target = self.model_r
        if target is not None and self.ev.worth_jump(model, target, r):
            assumed = model is not None and model.device_cost_assumed
            note = " (device cost assumed until measured)" if assumed else ""
            return self._jump(
                target,
                f"model: loader-bound (wait {wait_ms:.0f} ms/step), cost model says "
                f"r={target:.2f}{note}",
                s,
            )
        return self._next_explore(s, model, f"loader-bound (wait {wait_ms:.0f} ms/step); ")

    def _after_model_jump(self, s: WindowSummary, model: CostModel | None) -> Decision:
        sr, r, x, se = self.search, self.share.ratio, self.x, self.se
        assert sr.best is not None
        best_r, best_x, best_se = sr.best
        rel, thr = x / best_x - 1.0, self.ev.threshold(se, best_se)
        target = self.model_r
        can_jump = (
            target is not None
            and sr.model_jumps < _MAX_MODEL_JUMPS
            and self.ev.worth_jump(model, target, r)
            and abs(target - best_r) > 1e-9
        )
        if rel < -thr:
            if can_jump:
                # The jump lost speed, but its window measured what the model lacked (the
                # device cost, say): follow the refitted model once more.
                return self._jump(
                    target,  # type: ignore[arg-type]
                    f"model: r={r:.2f} lost {-rel:.1%} throughput vs best r={best_r:.2f}; "
                    f"refitted cost model says r={target:.2f}",
                    s,
                )
            d = 1 if r > best_r else -1  # the optimum lies between the best point and here
            sr.new_climb(self.space.max_step, first=d)
            sr.steps[d] = self.space.clamp_step(abs(r - best_r) / 2, self.est.batch_size)
            return self._revert(s, rel, thr)
        # Gain or tie: keep the model point (it rests on medians of many per-sample costs).
        sr.best = Point(r, x, se)
        if can_jump:
            return self._jump(
                target,  # type: ignore[arg-type]
                f"model: r={r:.2f} measured {x:.0f} samples/s ({rel:+.1%} vs r={best_r:.2f}); "
                f"refitted cost model says r={target:.2f}",
                s,
            )
        sr.new_climb(self.space.max_step)
        return self._next_explore(s, model, f"model point r={r:.2f} confirmed; ")

    def _after_explore(self, s: WindowSummary, model: CostModel | None) -> Decision:
        """Judge an exploratory move against the best point."""
        sr, r, x, se = self.search, self.share.ratio, self.x, self.se
        d = sr.direction
        assert sr.best is not None
        best_r, best_x, best_se = sr.best
        rel, thr = x / best_x - 1.0, self.ev.threshold(se, best_se)
        # Within noise, let the cost model break the tie: it is fitted on per-sample medians,
        # far less noisy than a difference of two throughputs.
        preferred = (
            model is not None
            and rel >= -thr
            and model.throughput(r) >= model.throughput(best_r) * (1.0 + self.options.hysteresis)
            and self.ev.model_matches(model, best_r, best_x, self.se)
        )
        target = self.model_r
        if sr.model_jumps == 0 and target is not None and model and not model.device_cost_assumed:
            # This move measured the device cost the baseline lacked: use the model now.
            anchor = Point(r, x, se) if rel > thr else sr.best
            if self.ev.worth_jump(model, target, anchor.ratio):
                sr.best = anchor
                return self._jump(
                    target,
                    f"model: r={r:.2f} measured {x:.0f} samples/s ({rel:+.1%} vs r={best_r:.2f}); "
                    f"with the measured device cost the model says r={target:.2f}",
                    s,
                )
        if rel > thr or preferred:
            why = (
                f"gained {rel:.1%}" if rel > thr else f"within noise ({rel:+.1%}), model prefers it"
            )
            sr.best = Point(r, x, se)
            sr.done = set()
            # The old best, one full step behind, is worse; a shorter step back may not be.
            sr.steps[-d] = max(sr.steps[d] / 2, self.space.smallest_step(self.est.batch_size))
            sr.steps[d] = min(2 * sr.steps[d], self.space.max_step)  # gaining: speed up
            sr.next_direction = d
            return self._next_explore(s, model, f"r={r:.2f} {why} over r={best_r:.2f}; ")
        half = sr.steps[d] / 2
        done = half < self.space.smallest_step(self.est.batch_size)
        if model is not None:
            # Done this way when a smaller step could not be told from noise, or when the move
            # was a tie that a model matching the measurements also scores no better.
            done = done or self.ev.effect(model, best_r, d * half, self.share) < 2.0 * self.ev.thr0(
                self.se
            )
            tie = rel >= -thr and model.throughput(r) <= model.throughput(best_r)
            done = done or (tie and self.ev.model_matches(model, best_r, best_x, self.se))
        if done:
            sr.done.add(d)
        else:
            sr.steps[d] = half
        sr.next_direction = -d
        return self._revert(s, rel, thr)

    def _next_explore(self, s: WindowSummary, model: CostModel | None, prefix: str) -> Decision:
        """From the best point (the current ratio), try the next step, or settle."""
        sr, r = self.search, self.share.ratio
        sr.phase = Phase.CLIMB
        pref = sr.next_direction if sr.next_direction is not None else self.ev.relief_dir(s)
        for d in (pref, -pref):
            if d in sr.done:
                continue
            step = self._adaptive_step(model, d, sr.steps[d])
            nxt = self._clamp(r + d * step)
            if abs(nxt - r) < 1e-9:  # at a bound
                sr.done.add(d)
                continue
            sr.steps[d] = step
            sr.direction, sr.next_direction, sr.last_move = d, None, "explore"
            return self.decision(
                nxt,
                f"explore: {prefix}trying r={nxt:.2f} (step {d * step:+.2f}) from best "
                f"r={r:.2f} ({self.x:.0f} samples/s)",
                "explore",
                s,
                step=step,
            )
        return settled.settle(self, s, f"hold: {prefix}converged at r={r:.2f}", "hold")

    def regime_change(self, s: WindowSummary, model: CostModel | None, why: str) -> Decision:
        """Costs changed: optimise again from here, model first."""
        sr, r = self.search, self.share.ratio
        sr.baseline_fresh = r <= self.space.bounds(self.share)[0] + 1e-9
        sr.best, sr.model_jumps = Point(r, self.x, self.se), 0
        sr.new_climb(self.space.max_step)
        if self.est.forget_loader():  # smallest-seen loader estimates: re-learn them
            self.est.update(s, r)
            model = self.est.model()
            self.model_r = self.ev.model_target(model, self.share) if model else None
        target = self.model_r
        if target is not None and self.ev.worth_jump(model, target, r):
            return self._jump(target, f"model: {why}, cost model says r={target:.2f}", s)
        if r <= self.space.bounds(self.share)[0] + 1e-9 and not self.ev.loader_bound(s):
            # At the lowest share and not waiting for the workers: as after the baseline, any
            # device share could only lengthen the step.
            return settled.settle(
                self,
                s,
                f"hold: {why}; not waiting for the workers (wait {s.wait_s * 1e3:.1f} ms/step), "
                f"r={r:.2f} stays",
                "hold",
            )
        return self._next_explore(s, model, f"{why}; ")

    def _jump(self, target: float, reason: str, s: WindowSummary) -> Decision:
        self.search.phase, self.search.last_move = Phase.MODEL, "model"
        self.search.model_jumps += 1
        return self.decision(target, reason, "model", s)

    def _revert(self, s: WindowSummary, rel: float, thr: float) -> Decision:
        sr, r = self.search, self.share.ratio
        assert sr.best is not None
        best_r = sr.best.ratio
        sr.phase, sr.last_move = Phase.CLIMB, "revert"
        if rel < -thr:
            reason = f"revert: r={r:.2f} lost {-rel:.1%} throughput vs best r={best_r:.2f}"
            return self.decision(best_r, reason, "revert", s)
        reason = (
            f"best: r={r:.2f} within noise of best r={best_r:.2f} ({rel:+.1%}, threshold "
            f"{thr:.1%}); back to r={best_r:.2f}"
        )
        return self.decision(best_r, reason, "best", s)
