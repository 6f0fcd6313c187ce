"""The settled phases of the auto rule: stopping at a share, and watching it.

Once the search of :class:`~ff_lightning.control.rule.AutoRule` stops moving, these functions
take over: :func:`settle` checks the CPU-only floor before holding, :func:`check_hold` watches a
settled share for a regime change (confirmed over more windows after each false alarm) or a
fall below the CPU-only speed, and :func:`after_floor_check` settles after re-measuring CPU-only.
Each takes the rule whose state it reads and advances, and returns the next decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.evidence import Evidence
from ff_lightning.control.options import ControllerOptions
from ff_lightning.control.records import Decision
from ff_lightning.control.search import HoldRef, Phase, Point, Search
from ff_lightning.control.share import Share, ShareSpace
from ff_lightning.control.window import WindowSummary

__all__ = ["AutoRule", "after_floor_check", "check_hold", "settle", "settled_at"]


class AutoRule(Protocol):
    """What these phases read and advance of :class:`~ff_lightning.control.rule.AutoRule`."""

    options: ControllerOptions
    space: ShareSpace
    ev: Evidence
    search: Search
    est: Estimator
    share: Share
    model_r: float | None
    x: float
    se: float
    on_regime_change: Callable[[float], None]

    def decision(self, ratio: float, reason: str, kind: str, s: WindowSummary) -> Decision: ...

    def regime_change(self, s: WindowSummary, model: CostModel | None, why: str) -> Decision: ...


def settle(rule: AutoRule, s: WindowSummary, reason: str, kind: str) -> Decision:
    """Stop moving at the current (best) point, after checking the CPU-only floor."""
    sr, r, x = rule.search, rule.share.ratio, rule.x
    lo = rule.space.bounds(rule.share)[0]
    if r > lo + 1e-9 and sr.baseline is not None:
        if sr.baseline_fresh and x < sr.baseline * (1.0 - rule.ev.threshold(rule.se, 0)):
            # Floor: never settle below the measured CPU-only speed.
            sr.best = Point(lo, sr.baseline, 0.0)
            sr.phase, sr.hold_ref = Phase.HOLD, None
            settled_at(rule, lo)
            return rule.decision(
                lo,
                f"revert: r={r:.2f} measured {x:.0f} samples/s, below CPU-only "
                f"{sr.baseline:.0f}; back to r={lo:.2f}",
                "revert",
                s,
            )
        if not sr.baseline_fresh and not rule.ev.clearly_above_floor(
            rule.est.model(), x, rule.se, rule.options.regime_tol, rule.share
        ):
            # The baseline predates a regime change and the model cannot vouch for this
            # point: measure CPU-only again before settling.
            sr.phase = Phase.FLOOR
            return rule.decision(
                lo,
                f"explore: floor check, re-measuring CPU-only at r={lo:.2f} before "
                f"settling at r={r:.2f}",
                "explore",
                s,
            )
    sr.phase, sr.last_move = Phase.HOLD, None
    sr.hold_ref = HoldRef(x, 1, rule.model_r)
    settled_at(rule, r)
    return rule.decision(r, f"{reason} ({x:.0f} samples/s)", kind, s)


def settled_at(rule: AutoRule, r: float) -> None:
    """Count a regime change whose search came back to (within one step of) the share it
    left as a false alarm (the next one then needs twice the windows); a real move resets
    the count."""
    sr = rule.search
    if sr.alarm_from is not None:
        back = (
            abs(r - sr.alarm_from) <= rule.space.smallest_step(rule.est.batch_size) + 1e-9
        )  # within one step
        sr.false_alarms = sr.false_alarms + 1 if back else 0
        sr.alarm_from = None
    sr.strikes = 0


def after_floor_check(rule: AutoRule, s: WindowSummary) -> Decision:
    sr, x = rule.search, rule.x
    assert sr.best is not None
    best_r, best_x, best_se = sr.best
    sr.phase = Phase.HOLD
    if best_x > x * (1.0 + rule.ev.threshold(rule.se, best_se)):
        sr.hold_ref = HoldRef(best_x, 1, rule.model_r)
        settled_at(rule, best_r)
        return rule.decision(
            best_r,
            f"best: back to r={best_r:.2f} ({best_x / x - 1:+.1%} over CPU-only {x:.0f} samples/s)",
            "best",
            s,
        )
    sr.best, sr.hold_ref = Point(rule.share.ratio, x, rule.se), HoldRef(x, 1, rule.model_r)
    settled_at(rule, rule.share.ratio)
    return rule.decision(
        rule.share.ratio,
        f"hold: CPU-only ({x:.0f} samples/s) is as fast as r={best_r:.2f}; staying",
        "hold",
        s,
    )


def check_hold(rule: AutoRule, s: WindowSummary, model: CostModel | None) -> Decision:
    """Settled: keep re-checking for a regime change or a floor violation."""
    sr, r, x, se = rule.search, rule.share.ratio, rule.x, rule.se
    lo = rule.space.bounds(rule.share)[0]
    # Reference: the mean of the measurements since settling (the settling measurement
    # alone carries the selection bias of being the best of several noisy ones).
    ref_x, n_ref, ref_model = sr.hold_ref or HoldRef(x, 0, rule.model_r)
    ref_x = ref_x if n_ref else x
    rel = x / ref_x - 1.0
    drift = 0.0
    if rule.model_r is not None and ref_model is not None:
        drift = abs(rule.model_r - ref_model)
    beyond = abs(rel) > max(rule.options.regime_tol, 3.0 * se)
    if beyond or drift > rule.options.regime_tol:
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
            return rule.decision(
                r,
                f"hold: r={r:.2f} measured {x:.0f} samples/s ({rel:+.1%} vs reference); "
                f"a regime change if {left} more window(s) agree",
                "hold",
                s,
            )
        sr.strikes, sr.alarm_from = 0, r
        if beyond:
            rule.on_regime_change(rel)  # the CPU objective raises the workers on a drop
        why = (
            f"regime change (throughput {rel:+.0%} since settling)"
            if beyond
            else f"regime change (model optimum moved {ref_model:.2f} -> {rule.model_r:.2f})"
        )
        return rule.regime_change(s, model, why)
    sr.strikes = 0
    sr.hold_ref = HoldRef((ref_x * n_ref + x) / (n_ref + 1), n_ref + 1, ref_model)
    if (
        r > lo + 1e-9
        and sr.baseline_fresh
        and sr.baseline is not None
        and x < sr.baseline * (1.0 - rule.ev.threshold(se, 0.0))
    ):
        sr.phase, sr.best = Phase.BASELINE, None
        return rule.decision(
            lo,
            f"revert: r={r:.2f} measured {x:.0f} samples/s, below CPU-only "
            f"{sr.baseline:.0f}; re-measuring from r={lo:.2f}",
            "revert",
            s,
        )
    return rule.decision(
        r, f"hold: r={r:.2f} steady ({x:.0f} samples/s, {rel:+.1%} vs reference)", "hold", s
    )
