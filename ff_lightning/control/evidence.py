"""How the auto rule weighs its evidence: which throughput differences are real, where the
bottleneck is, and what the cost model predicts for a move.

:class:`Evidence` is the base of :class:`~ff_lightning.control.rule.AutoRule` (and so part of
:class:`~ff_lightning.control.controller.Controller`): noise thresholds from the hysteresis and
the measured standard errors, the model's target on whole samples, whether a jump is worth it,
and the smallest step whose effect would show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from ff_lightning.control.estimator import CostModel, Estimator
from ff_lightning.control.search import Search
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
    """The rule's judgements of measurements and model predictions, mixed into the controller."""

    # Set by the controller: configuration ...
    hysteresis: float
    quantum: float | None
    regime_tol: float
    worker_cores: int
    # ... the ratio, the rule's state ...
    _ratio: float
    _search: Search
    _est: Estimator
    _se: float
    # ... and the helpers it calls (defined by the controller).
    _bounds: Callable[[], tuple[float, float]]
    _clamp: Callable[[float], float]
    _min_step: Callable[[], float]

    def _relief_dir(self, s: WindowSummary) -> int:
        """Toward relieving the bottleneck: up when waiting for data, else down."""
        return 1 if self._loader_bound(s) else -1

    def _loader_bound(self, s: WindowSummary) -> bool:
        """Waiting for data because the workers cannot keep up: a wait above ``_LOADER_BOUND`` of
        the step, unless the workers are mostly idle (:meth:`_workers_idle`)."""
        waits = finite(s.wait_s) and s.wait_s > _LOADER_BOUND * s.step_s
        return waits and not self._workers_idle(s)

    def _workers_idle(self, s: WindowSummary) -> bool:
        """The workers' stamped CPU seconds per batch, spread over the cores they can use, are
        under ``_IDLE_SHARE`` (3/4) of the step's time outside the wait: what the step waits for is
        then the hand-over itself (the batch's transfer from the worker, the fetch), or I/O,
        and no share of augmentation moved to the device would shorten it."""
        floor, w = s.loader_floor_s, s.num_workers
        if not (finite(floor) and finite(w) and finite(s.step_s) and finite(s.wait_s)):
            return False
        busy = floor * max(1.0, w / max(1, self.worker_cores))
        return busy < _IDLE_SHARE * (s.step_s - s.wait_s)

    def _model_target(self, model: CostModel) -> float:
        """The model's best ratio, on whole samples when the batch size is known (one sample
        of device work can be several percent of a step)."""
        lo, hi = self._bounds()
        r, b = model.crossing(lo, hi), model.batch_size
        if not b or self.quantum:
            return self._clamp(r)
        cands = sorted({self._clamp(math.floor(r * b) / b), self._clamp(math.ceil(r * b) / b)})
        return max(cands, key=model.throughput)  # ties: the lower ratio

    def _worth_jump(self, model: CostModel | None, target: float, r: float) -> bool:
        """Whether the model predicts a gain beyond the hysteresis for moving to ``target``."""
        if model is None or abs(target - r) < 1e-9:
            return False
        return model.throughput(target) >= model.throughput(r) * (1.0 + self.hysteresis)

    def _threshold(self, se_a: float, se_b: float) -> float:
        """Relative throughput difference that counts as real: the hysteresis, widened to two
        standard errors of the difference when timings are noisier than that."""
        return max(self.hysteresis, 2.0 * math.hypot(se_a, se_b))

    def _thr0(self) -> float:
        return self._threshold(self._se, self._se)

    def _effect(self, model: CostModel, base: float, delta: float) -> float:
        """Relative throughput change the model predicts for moving ``base`` by ``delta``."""
        return abs(model.throughput(self._clamp(base + delta)) / model.throughput(base) - 1.0)

    def _adaptive_step(self, model: CostModel | None, d: int, budget: float) -> float:
        """The smallest step (halving from ``budget``) whose effect the model says shows."""
        step = max(budget, self._min_step())
        best = self._search.best
        if model is None or best is None or not self._model_matches(model, best[0], best[1]):
            return step  # a model that does not match the measurements cannot size steps
        r, target = self._ratio, 2.5 * self._thr0()
        while step / 2 >= self._min_step() and self._effect(model, r, d * step / 2) >= target:
            step /= 2
        return step

    def _model_matches(self, model: CostModel, r: float, x: float) -> bool:
        """Whether the model predicts the throughput measured at ``r`` (within noise or 5%);
        only then may it break ties between measurements."""
        return abs(model.throughput(r) / x - 1.0) <= max(2.0 * self._thr0(), 0.05)

    def _clearly_above_floor(self, x: float) -> bool:
        """Whether the cost model, scaled to this measurement, puts CPU-only well below it."""
        model = self._est.model()
        if model is None:
            return False
        pred_here = model.throughput(self._ratio)
        if not finite(pred_here) or pred_here <= 0:
            return False
        cpu_only = model.throughput(self._bounds()[0]) * x / pred_here
        return x > cpu_only * (1.0 + 2.0 * max(self.regime_tol, self._thr0()))
