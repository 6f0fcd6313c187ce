"""How the auto rule weighs its evidence: which throughput differences are real, where the
bottleneck is, and what the cost model predicts for a move.

:class:`Evidence` is a plain object the :class:`~ff_lightning.control.rule.AutoRule` holds: noise
thresholds from the hysteresis and the measured standard errors, the model's target on whole
samples, whether a jump is worth it, and the smallest step whose effect would show. Every
method takes what it judges as arguments; it keeps no state but its configuration.
"""

from __future__ import annotations

import math
import os

from ff_lightning.control.estimator import CostModel
from ff_lightning.control.options import ControllerOptions
from ff_lightning.control.search import Point
from ff_lightning.control.share import Share, ShareSpace
from ff_lightning.control.window import WindowSummary, finite

__all__ = ["Evidence", "worker_cores"]

_LOADER_BOUND = 0.05  # mean wait above this share of the step: the loader is the bottleneck
# Workers busy for less than this share of the step's own time (their stamped CPU seconds per
# batch, over the cores they can use) are not what the step waits for: a loader that keeps up
# with a quarter of its time to spare. (On the 2-core development machine the native worker
# path is busy 50-60% of the step and its 4-7 ms wait is the batch hand-over; the torch-kernel
# path is busy 100%.)
_IDLE_SHARE = 0.75


def worker_cores() -> int:
    """CPU cores this rank's DataLoader workers can use: the process's CPUs, shared among the
    node's ranks (``LOCAL_WORLD_SIZE``), less one for the training process itself."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cpus // local - 1)


class Evidence:
    """The rule's judgements of measurements and model predictions."""

    def __init__(self, options: ControllerOptions, space: ShareSpace) -> None:
        self.hysteresis = float(options.hysteresis)
        self.quantum = options.quantum
        self.space = space
        #: Cores the DataLoader workers can use (judging whether they are busy at all).
        self.worker_cores = worker_cores()

    # ------------------------------------------------------------------ bottleneck
    def relief_dir(self, s: WindowSummary) -> int:
        """Toward relieving the bottleneck: up when waiting for data, else down."""
        return 1 if self.loader_bound(s) else -1

    def loader_bound(self, s: WindowSummary) -> bool:
        """Waiting for data because the workers cannot keep up: a wait above ``_LOADER_BOUND``
        of the step, unless the workers are mostly idle (:meth:`workers_idle`)."""
        waits = finite(s.wait_s) and s.wait_s > _LOADER_BOUND * s.step_s
        return waits and not self.workers_idle(s)

    def workers_idle(self, s: WindowSummary) -> bool:
        """The workers' stamped CPU seconds per batch, spread over the cores they can use, are
        under ``_IDLE_SHARE`` (3/4) of the step's time outside the wait: what the step waits for
        is then the hand-over itself (the batch's transfer from the worker, the fetch), or I/O,
        and no share of augmentation moved to the device would shorten it."""
        floor, w = s.loader_floor_s, s.num_workers
        if not (finite(floor) and finite(w) and finite(s.step_s) and finite(s.wait_s)):
            return False
        busy = floor * max(1.0, w / max(1, self.worker_cores))
        return busy < _IDLE_SHARE * (s.step_s - s.wait_s)

    # ------------------------------------------------------------------ noise
    def threshold(self, se_a: float, se_b: float) -> float:
        """Relative throughput difference that counts as real: the hysteresis, widened to two
        standard errors of the difference when timings are noisier than that."""
        return max(self.hysteresis, 2.0 * math.hypot(se_a, se_b))

    def thr0(self, se: float) -> float:
        return self.threshold(se, se)

    # ------------------------------------------------------------------ the model
    def model_target(self, model: CostModel, share: Share) -> float:
        """The model's best share, on whole samples when the batch size is known (one sample
        of device work can be several percent of a step)."""
        lo, hi = self.space.bounds(share)
        r, b = model.crossing(lo, hi), model.batch_size
        if not b or self.quantum:
            return self.space.clamp(r, share)
        cands = sorted(
            {
                self.space.clamp(math.floor(r * b) / b, share),
                self.space.clamp(math.ceil(r * b) / b, share),
            }
        )
        return max(cands, key=model.throughput)  # ties: the lower share

    def worth_jump(self, model: CostModel | None, target: float, r: float) -> bool:
        """Whether the model predicts a gain beyond the hysteresis for moving to ``target``."""
        if model is None or abs(target - r) < 1e-9:
            return False
        return model.throughput(target) >= model.throughput(r) * (1.0 + self.hysteresis)

    def effect(self, model: CostModel, base: float, delta: float, share: Share) -> float:
        """Relative throughput change the model predicts for moving ``base`` by ``delta``."""
        moved = self.space.clamp(base + delta, share)
        return abs(model.throughput(moved) / model.throughput(base) - 1.0)

    def model_matches(self, model: CostModel, r: float, x: float, se: float) -> bool:
        """Whether the model predicts the throughput measured at ``r`` (within noise or 5%);
        only then may it break ties between measurements."""
        return abs(model.throughput(r) / x - 1.0) <= max(2.0 * self.thr0(se), 0.05)

    def adaptive_step(
        self,
        model: CostModel | None,
        d: int,
        budget: float,
        *,
        best: Point | None,
        se: float,
        share: Share,
        batch_size: int | None,
    ) -> float:
        """The smallest step (halving from ``budget``) whose effect the model says shows."""
        smallest = self.space.smallest_step(batch_size)
        step = max(budget, smallest)
        if model is None or best is None or not self.model_matches(model, best[0], best[1], se):
            return step  # a model that does not match the measurements cannot size steps
        r, target = share.ratio, 2.5 * self.thr0(se)
        while step / 2 >= smallest and self.effect(model, r, d * step / 2, share) >= target:
            step /= 2
        return step

    def clearly_above_floor(
        self, model: CostModel | None, x: float, se: float, regime_tol: float, share: Share
    ) -> bool:
        """Whether the cost model, scaled to this measurement, puts CPU-only well below it."""
        if model is None:
            return False
        pred_here = model.throughput(share.ratio)
        if not finite(pred_here) or pred_here <= 0:
            return False
        cpu_only = model.throughput(self.space.bounds(share)[0]) * x / pred_here
        return x > cpu_only * (1.0 + 2.0 * max(regime_tol, self.thr0(se)))
