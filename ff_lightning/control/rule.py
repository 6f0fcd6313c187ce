"""The auto mode's decision rule: measure CPU-only, jump to the model's point, hill-climb.

:class:`AutoRule` holds the rule as methods of :class:`~ff_lightning.control.controller.
Controller` (which inherits them): one method per phase of the search, each judging the
window's measurement and returning the next :class:`Decision` with its reason. What counts as
a real difference, and what the cost model predicts for a move, is judged by its base
:class:`~ff_lightning.control.evidence.Evidence`. The rule reads the controller's
configuration, ratio and memory cap; its state lives in a
:class:`~ff_lightning.control.search.Search` and an
:class:`~ff_lightning.control.estimator.Estimator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.evidence import Evidence
from ff_lightning.control.records import Decision
from ff_lightning.control.search import HoldRef, Phase, Point, Search
from ff_lightning.control.window import WindowSummary, finite

__all__ = ["AutoRule"]

_MAX_MODEL_JUMPS = 3  # model jumps per optimisation episode before hill-climbing takes over


class AutoRule(Evidence):
    """The decision rule of ``mode="auto"``, mixed into the controller."""

    # Set by the controller: configuration ...
    mode: str
    min_ratio: float
    max_ratio: float
    hysteresis: float
    max_step: float
    min_step: float
    quantum: float | None
    regime_tol: float
    min_steps: int
    # ... the ratio it owns and the memory cap, the rule's state ...
    _ratio: float
    _cap: float
    _keep_window: bool
    _search: Search
    _est: Estimator
    _model_r: float | None
    _x: float
    _se: float
    # ... and the helpers it shares with the mode decisions (defined by the controller).
    _decision: Callable[..., Decision]
    _bounds: Callable[[], tuple[float, float]]
    _clamp: Callable[[float], float]
    _min_step: Callable[[], float]
    _clamp_step: Callable[[float], float]
    _on_regime_change: Callable[[float], None]
    workers: int | None

    # ------------------------------------------------------------------ phases
    def _decide_auto(self, s: WindowSummary) -> Decision:
        sr, r, x = self._search, self._ratio, s.samples_per_s
        n = int(s.steps) if finite(s.steps) else 0
        if not finite(x) or n < self.min_steps:
            self._keep_window = True  # too few steps: keep accumulating
            return self._decision(
                r,
                f"hold: {n} steps measured since the last change (after warm-up), "
                f"need {self.min_steps}",
                "hold",
                s,
            )
        self._est.update(s, r)
        x = self._est.loader_limited(s, x)
        s = replace(s, samples_per_s=x)
        self._x, self._se = x, (s.se_rel if finite(s.se_rel) else 0.0)
        model = self._est.model()
        self._model_r = self._model_target(model) if model else None
        if r <= self._bounds()[0] + 1e-9:  # a fresh CPU-only (min_ratio) measurement
            sr.baseline, sr.baseline_fresh = x, True
        if sr.phase is Phase.BASELINE:
            sr.best = Point(r, x, self._se)
            return self._after_baseline(s, model)
        if sr.phase is Phase.HOLD:
            return self._check_hold(s, model)
        if sr.phase is Phase.FLOOR:
            return self._after_floor_check(s)
        if sr.phase is Phase.RECHECK:  # the memory cap was raised: optimise again from here
            return self._regime_change(s, model, "memory cap raised")
        if sr.phase is Phase.WORKERS:  # CPU objective: another worker count, optimise again
            return self._regime_change(s, model, f"now {self.workers} workers")
        if sr.phase is Phase.MODEL:
            return self._after_model_jump(s, model)
        if sr.last_move == "revert" or sr.best is None:
            # Back at the best point: refresh its measurement, explore on. A large change
            # since it was measured means the costs changed under us.
            if sr.best is not None and abs(sr.best.ratio - r) < 1e-9:
                rel = x / sr.best.throughput - 1.0
                if abs(rel) > max(self.regime_tol, 3.0 * math.hypot(self._se, sr.best.se)):
                    return self._regime_change(
                        s, model, f"regime change (best point measured {rel:+.0%})"
                    )
            sr.best = Point(r, x, self._se)
            return self._next_explore(s, model, "")
        return self._after_explore(s, model)

    def _after_baseline(self, s: WindowSummary, model: CostModel | None) -> Decision:
        r, wait_ms = self._ratio, s.wait_s * 1e3
        self._search.new_climb(self.max_step)
        self._search.model_jumps = 0
        if not self._loader_bound(s):
            # Not waiting for data: routing work to the device could only lengthen the step.
            return self._settle(
                s, f"model: device-bound (wait {wait_ms:.1f} ms/step), r={r:.2f} is best", "model"
            )
        target = self._model_r
        if target is not None and self._worth_jump(model, target, r):
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
        sr, r, x, se = self._search, self._ratio, self._x, self._se
        assert sr.best is not None
        best_r, best_x, best_se = sr.best
        rel, thr = x / best_x - 1.0, self._threshold(se, best_se)
        target = self._model_r
        can_jump = (
            target is not None
            and sr.model_jumps < _MAX_MODEL_JUMPS
            and self._worth_jump(model, target, r)
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
            sr.new_climb(self.max_step, first=d)
            sr.steps[d] = self._clamp_step(abs(r - best_r) / 2)
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
        sr.new_climb(self.max_step)
        return self._next_explore(s, model, f"model point r={r:.2f} confirmed; ")

    def _after_explore(self, s: WindowSummary, model: CostModel | None) -> Decision:
        """Judge an exploratory move against the best point."""
        sr, r, x, se = self._search, self._ratio, self._x, self._se
        d = sr.direction
        assert sr.best is not None
        best_r, best_x, best_se = sr.best
        rel, thr = x / best_x - 1.0, self._threshold(se, best_se)
        # Within noise, let the cost model break the tie: it is fitted on per-sample medians,
        # far less noisy than a difference of two throughputs.
        preferred = (
            model is not None
            and rel >= -thr
            and model.throughput(r) >= model.throughput(best_r) * (1.0 + self.hysteresis)
            and self._model_matches(model, best_r, best_x)
        )
        target = self._model_r
        if sr.model_jumps == 0 and target is not None and model and not model.device_cost_assumed:
            # This move measured the device cost the baseline lacked: use the model now.
            anchor = Point(r, x, se) if rel > thr else sr.best
            if self._worth_jump(model, target, anchor.ratio):
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
            sr.steps[-d] = max(sr.steps[d] / 2, self._min_step())
            sr.steps[d] = min(2 * sr.steps[d], self.max_step)  # gaining: speed up
            sr.next_direction = d
            return self._next_explore(s, model, f"r={r:.2f} {why} over r={best_r:.2f}; ")
        half = sr.steps[d] / 2
        done = half < self._min_step()
        if model is not None:
            # Done this way when a smaller step could not be told from noise, or when the move
            # was a tie that a model matching the measurements also scores no better.
            done = done or self._effect(model, best_r, d * half) < 2.0 * self._thr0()
            tie = rel >= -thr and model.throughput(r) <= model.throughput(best_r)
            done = done or (tie and self._model_matches(model, best_r, best_x))
        if done:
            sr.done.add(d)
        else:
            sr.steps[d] = half
        sr.next_direction = -d
        return self._revert(s, rel, thr)

    def _next_explore(self, s: WindowSummary, model: CostModel | None, prefix: str) -> Decision:
        """From the best point (the current ratio), try the next step, or settle."""
        sr, r = self._search, self._ratio
        sr.phase = Phase.CLIMB
        pref = sr.next_direction if sr.next_direction is not None else self._relief_dir(s)
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
            return self._decision(
                nxt,
                f"explore: {prefix}trying r={nxt:.2f} (step {d * step:+.2f}) from best "
                f"r={r:.2f} ({self._x:.0f} samples/s)",
                "explore",
                s,
                step=step,
            )
        return self._settle(s, f"hold: {prefix}converged at r={r:.2f}", "hold")

    def _settle(self, s: WindowSummary, reason: str, kind: str) -> Decision:
        """Stop moving at the current (best) point, after checking the CPU-only floor."""
        sr, r, x = self._search, self._ratio, self._x
        lo = self._bounds()[0]
        if r > lo + 1e-9 and sr.baseline is not None:
            if sr.baseline_fresh and x < sr.baseline * (1.0 - self._threshold(self._se, 0)):
                # Floor: never settle below the measured CPU-only speed.
                sr.best = Point(lo, sr.baseline, 0.0)
                sr.phase, sr.hold_ref = Phase.HOLD, None
                self._settled_at(lo)
                return self._decision(
                    lo,
                    f"revert: r={r:.2f} measured {x:.0f} samples/s, below CPU-only "
                    f"{sr.baseline:.0f}; back to r={lo:.2f}",
                    "revert",
                    s,
                )
            if not sr.baseline_fresh and not self._clearly_above_floor(x):
                # The baseline predates a regime change and the model cannot vouch for this
                # point: measure CPU-only again before settling.
                sr.phase = Phase.FLOOR
                return self._decision(
                    lo,
                    f"explore: floor check, re-measuring CPU-only at r={lo:.2f} before "
                    f"settling at r={r:.2f}",
                    "explore",
                    s,
                )
        sr.phase, sr.last_move = Phase.HOLD, None
        sr.hold_ref = HoldRef(x, 1, self._model_r)
        self._settled_at(r)
        return self._decision(r, f"{reason} ({x:.0f} samples/s)", kind, s)

    def _settled_at(self, r: float) -> None:
        """Count a regime change whose search came back to (within one step of) the share it
        left as a false alarm (the next one then needs twice the windows); a real move resets
        the count."""
        sr = self._search
        if sr.alarm_from is not None:
            back = abs(r - sr.alarm_from) <= self._min_step() + 1e-9  # within one step
            sr.false_alarms = sr.false_alarms + 1 if back else 0
            sr.alarm_from = None
        sr.strikes = 0

    def _after_floor_check(self, s: WindowSummary) -> Decision:
        sr, x = self._search, self._x
        assert sr.best is not None
        best_r, best_x, best_se = sr.best
        sr.phase = Phase.HOLD
        if best_x > x * (1.0 + self._threshold(self._se, best_se)):
            sr.hold_ref = HoldRef(best_x, 1, self._model_r)
            self._settled_at(best_r)
            return self._decision(
                best_r,
                f"best: back to r={best_r:.2f} ({best_x / x - 1:+.1%} over CPU-only "
                f"{x:.0f} samples/s)",
                "best",
                s,
            )
        sr.best, sr.hold_ref = Point(self._ratio, x, self._se), HoldRef(x, 1, self._model_r)
        self._settled_at(self._ratio)
        return self._decision(
            self._ratio,
            f"hold: CPU-only ({x:.0f} samples/s) is as fast as r={best_r:.2f}; staying",
            "hold",
            s,
        )

    def _check_hold(self, s: WindowSummary, model: CostModel | None) -> Decision:
        """Settled: keep re-checking for a regime change or a floor violation."""
        sr, r, x, se = self._search, self._ratio, self._x, self._se
        lo = self._bounds()[0]
        # Reference: the mean of the measurements since settling (the settling measurement
        # alone carries the selection bias of being the best of several noisy ones).
        ref_x, n_ref, ref_model = sr.hold_ref or HoldRef(x, 0, self._model_r)
        ref_x = ref_x if n_ref else x
        rel = x / ref_x - 1.0
        drift = 0.0
        if self._model_r is not None and ref_model is not None:
            drift = abs(self._model_r - ref_model)
        beyond = abs(rel) > max(self.regime_tol, 3.0 * se)
        if beyond or drift > self.regime_tol:
            # Signed count of windows in a row off the same way (a moved model optimum
            # continues the current run).
            step = (1 if rel > 0 else -1) if beyond else (1 if sr.strikes >= 0 else -1)
            sr.strikes = sr.strikes + step if sr.strikes * step > 0 else step
            needed = 2 ** min(sr.false_alarms, 3)
            if abs(sr.strikes) < needed:
                # Not (yet) a regime change: a noisy machine swings by more than the
                # tolerance now and then, and every false alarm costs a window at a worse
                # share. The outlier stays out of the reference.
                left = needed - abs(sr.strikes)
                return self._decision(
                    r,
                    f"hold: r={r:.2f} measured {x:.0f} samples/s ({rel:+.1%} vs reference); "
                    f"a regime change if {left} more window(s) agree",
                    "hold",
                    s,
                )
            sr.strikes, sr.alarm_from = 0, r
            if beyond:
                self._on_regime_change(rel)  # the CPU objective raises the workers on a drop
            why = (
                f"regime change (throughput {rel:+.0%} since settling)"
                if beyond
                else f"regime change (model optimum moved {ref_model:.2f} -> {self._model_r:.2f})"
            )
            return self._regime_change(s, model, why)
        sr.strikes = 0
        sr.hold_ref = HoldRef((ref_x * n_ref + x) / (n_ref + 1), n_ref + 1, ref_model)
        if (
            r > lo + 1e-9
            and sr.baseline_fresh
            and sr.baseline is not None
            and x < sr.baseline * (1.0 - self._threshold(se, 0.0))
        ):
            sr.phase, sr.best = Phase.BASELINE, None
            return self._decision(
                lo,
                f"revert: r={r:.2f} measured {x:.0f} samples/s, below CPU-only "
                f"{sr.baseline:.0f}; re-measuring from r={lo:.2f}",
                "revert",
                s,
            )
        return self._decision(
            r, f"hold: r={r:.2f} steady ({x:.0f} samples/s, {rel:+.1%} vs reference)", "hold", s
        )

    def _regime_change(self, s: WindowSummary, model: CostModel | None, why: str) -> Decision:
        """Costs changed: optimise again from here, model first."""
        sr, r = self._search, self._ratio
        sr.baseline_fresh = r <= self._bounds()[0] + 1e-9
        sr.best, sr.model_jumps = Point(r, self._x, self._se), 0
        sr.new_climb(self.max_step)
        if self._est.forget_loader():  # smallest-seen loader estimates: re-learn them
            self._est.update(s, r)
            model = self._est.model()
            self._model_r = self._model_target(model) if model else None
        target = self._model_r
        if target is not None and self._worth_jump(model, target, r):
            return self._jump(target, f"model: {why}, cost model says r={target:.2f}", s)
        if r <= self._bounds()[0] + 1e-9 and not self._loader_bound(s):
            # At the lowest share and not waiting for the workers: as after the baseline, any
            # device share could only lengthen the step.
            return self._settle(
                s,
                f"hold: {why}; not waiting for the workers (wait {s.wait_s * 1e3:.1f} ms/step), "
                f"r={r:.2f} stays",
                "hold",
            )
        return self._next_explore(s, model, f"{why}; ")

    def _jump(self, target: float, reason: str, s: WindowSummary) -> Decision:
        self._search.phase, self._search.last_move = Phase.MODEL, "model"
        self._search.model_jumps += 1
        return self._decision(target, reason, "model", s)

    def _revert(self, s: WindowSummary, rel: float, thr: float) -> Decision:
        sr, r = self._search, self._ratio
        assert sr.best is not None
        best_r = sr.best.ratio
        sr.phase, sr.last_move = Phase.CLIMB, "revert"
        if rel < -thr:
            reason = f"revert: r={r:.2f} lost {-rel:.1%} throughput vs best r={best_r:.2f}"
            return self._decision(best_r, reason, "revert", s)
        reason = (
            f"best: r={r:.2f} within noise of best r={best_r:.2f} ({rel:+.1%}, threshold "
            f"{thr:.1%}); back to r={best_r:.2f}"
        )
        return self._decision(best_r, reason, "best", s)
