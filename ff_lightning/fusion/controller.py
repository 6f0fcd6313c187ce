"""The offload controller: decides `r`, the share of each batch augmented on the device.

Pure Python (no Trainer, no tensors). The callback times each step, calls
:meth:`Controller.observe` with a :class:`StepStats`, and calls :meth:`Controller.decide` at
each decision point (every epoch or every N steps); it then routes the next batches with
:attr:`Controller.ratio`.

Cost model (design.md, "The controller"): with ``W`` workers, per-sample CPU augmentation cost
``c``, per-sample device cost ``g``, batch size ``B`` and compute time ``T``, the loader needs
``L(r) = L0 + (1-r)·B·c/W`` per batch (``L0``: work the workers do whatever the route, such
as decoding) and the device needs ``D(r) = T + r·B·g``. Throughput is ``B / max(L, D)``; the
best ``r`` is near ``L = D``. The controller measures CPU-only first, jumps to the model's
crossing point, then hill-climbs on measured throughput.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["MODES", "Controller", "CostModel", "Decision", "StepStats"]

MODES = ("auto", "off", "gpu", "fixed")
KINDS = ("init", "model", "explore", "revert", "hold", "best", "memory", "mode")

_LOADER_BOUND = 0.05  # median wait above this share of the step: the loader is the bottleneck
_TRIM = 0.2  # share trimmed from each end of noisy timings
_MAX_MODEL_JUMPS = 3  # model jumps per optimisation episode before hill-climbing takes over
_STALE_LIMIT = 256  # accept steps anyway if none matched the new ratio after this many


@dataclass
class StepStats:
    """What the callback measured for one training step.

    Args:
        batch_size: samples in the batch.
        n_device: samples augmented on the device this step.
        data_wait_s: seconds the loop waited for the DataLoader.
        step_s: wall time of the whole step, wait included.
        device_aug_s: device augmentation time for the routed share.
        cpu_aug_s: worker CPU seconds spent augmenting this batch's CPU-routed samples, if the
            workers stamp it (``None`` otherwise; the controller then infers ``c`` from waits).
        n_cpu: samples augmented by the workers (defaults to ``batch_size - n_device``).
        num_workers: DataLoader workers (0: loading runs in the main process, no overlap).
        h2d_s: host-to-device copy time, if measured (reported only).
        ratio: the ratio the router used for this batch, if it reports it. It lets the
            controller skip batches routed before the last change exactly; without it a batch
            counts as routed with the current ratio when ``n_device`` is within one sample of
            ``ratio * batch_size``.
    """

    batch_size: int
    n_device: int
    data_wait_s: float
    step_s: float
    device_aug_s: float = 0.0
    cpu_aug_s: float | None = None
    n_cpu: int | None = None
    num_workers: int = 0
    h2d_s: float | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive, got {self.batch_size}")
        if not 0 <= self.n_device <= self.batch_size:
            raise ValueError(
                f"`n_device` must be in [0, batch_size={self.batch_size}], got {self.n_device}"
            )
        if self.n_cpu is None:
            self.n_cpu = self.batch_size - self.n_device
        if self.step_s < 0 or self.data_wait_s < 0 or self.device_aug_s < 0:
            raise ValueError("`step_s`, `data_wait_s` and `device_aug_s` must be non-negative")


@dataclass
class Decision:
    """One decision of the controller, with its reason and the numbers behind it.

    Attributes:
        ratio: share of each batch routed to the device from now on.
        reason: human-readable explanation, e.g. ``"revert: r=0.50 lost 7.2% throughput vs
            best r=0.25"``.
        kind: one of ``init, model, explore, revert, hold, best, memory, mode``.
        throughput: samples/s measured over the window that led to this decision (trimmed mean
            of the per-step rate, warm-up steps excluded); ``None`` when nothing was measured.
        step: hill-climbing step size in effect.
        index: 0 for the initial record, then 1, 2, ... per :meth:`Controller.decide` call.
        prev_ratio: ratio in effect during the window.
        best_ratio, best_throughput: best measured point so far (auto mode).
        baseline_throughput: measured CPU-only (``min_ratio``) throughput (auto mode).
        model_ratio: the cost model's crossing point, when it could be fitted.
        data_wait_s: median data wait per step over the window.
        steps: steps used for the measurement.
    """

    ratio: float
    reason: str
    kind: str
    throughput: float | None = None
    step: float | None = None
    index: int = 0
    prev_ratio: float | None = None
    best_ratio: float | None = None
    best_throughput: float | None = None
    baseline_throughput: float | None = None
    model_ratio: float | None = None
    data_wait_s: float | None = None
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class CostModel:
    """``L(r) = loader_fixed_s + (1-r)·B·c/W`` and ``D(r) = T + r·B·g`` (serial when W=0)."""

    batch_size: float
    num_workers: float
    cpu_cost: float
    device_cost: float
    compute_s: float
    loader_fixed_s: float = 0.0
    device_cost_assumed: bool = False

    def loader_s(self, r: float) -> float:
        w = max(self.num_workers, 1.0)
        return self.loader_fixed_s + (1.0 - r) * self.batch_size * self.cpu_cost / w

    def device_s(self, r: float) -> float:
        return self.compute_s + r * self.batch_size * self.device_cost

    def step_s(self, r: float) -> float:
        if self.num_workers < 1:  # loading runs in the main process: no overlap
            return self.loader_s(r) + self.device_s(r)
        return max(self.loader_s(r), self.device_s(r))

    def throughput(self, r: float) -> float:
        s = self.step_s(r)
        return self.batch_size / s if s > 0 else math.inf

    def crossing(self, lo: float = 0.0, hi: float = 1.0) -> float:
        """The ratio in ``[lo, hi]`` where loader and device times meet (best ``r``)."""
        if self.num_workers < 1:  # serial: all-or-nothing, whichever route is cheaper
            return hi if self.device_cost < self.cpu_cost else lo
        w = self.num_workers
        bc = self.batch_size * self.cpu_cost / w
        bg = self.batch_size * self.device_cost
        if bc + bg <= 0:
            return lo
        r = (self.loader_fixed_s + bc - self.compute_s) / (bc + bg)
        return min(max(r, lo), hi)


def _trimmed_mean(values: list[float], trim: float = _TRIM) -> tuple[float, float]:
    """Mean after dropping ``trim`` of the values at each end, and its standard error."""
    v = sorted(values)
    k = int(len(v) * trim)
    kept = v[k : len(v) - k] or v
    m = statistics.fmean(kept)
    se = statistics.stdev(kept) / math.sqrt(len(kept)) if len(kept) > 1 else 0.0
    return m, se


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


class Controller:
    """Chooses the device share ``r`` of each batch.

    Args:
        mode: ``"off"`` (always 0), ``"gpu"`` (always 1), ``"fixed"`` (``ratio``) or
            ``"auto"`` (measured: CPU-only first, then the cost model, then hill-climbing).
            The memory cap (:meth:`set_memory_cap`) bounds every mode.
        ratio: the ratio for ``mode="fixed"`` (required there, rejected elsewhere).
        min_ratio, max_ratio: bounds of the auto search. The CPU-only baseline is measured at
            ``min_ratio``.
        hysteresis: relative throughput change considered noise. The controller widens it to
            two standard errors of the measured difference when timings are noisier.
        step: largest hill-climbing step; the step actually used is the smallest one whose
            effect the cost model says is measurable.
        min_step: smallest step; also at least ``quantum`` and one sample (``1/batch_size``).
        warmup_steps: steps ignored after the first batch routed with a new ratio arrives
            (batches routed with the old ratio, still in flight, are ignored as well).
        quantum: round ratios to multiples of this (e.g. ``1/batch_size``); ``None``: no
            rounding.
        regime_tol: while holding, a relative throughput change beyond this (or a move of the
            model's crossing point by more than this) is treated as a regime change and the
            ratio is optimised again.
        min_steps: measured steps needed before auto acts; with fewer, it holds and keeps
            accumulating.
        max_window: most recent steps kept per decision window.
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
        warmup_steps: int = 2,
        quantum: float | None = None,
        regime_tol: float = 0.1,
        min_steps: int = 3,
        max_window: int = 4096,
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
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be a non-negative int, got {warmup_steps!r}")
        if quantum is not None and not 0.0 < quantum <= 1.0:
            raise ValueError(f"`quantum` must be None or in (0, 1], got {quantum!r}")
        if not 0.0 < regime_tol < 1.0:
            raise ValueError(f"`regime_tol` must be in (0, 1), got {regime_tol!r}")
        if not isinstance(min_steps, int) or min_steps < 1:
            raise ValueError(f"`min_steps` must be a positive int, got {min_steps!r}")
        if not isinstance(max_window, int) or max_window < min_steps:
            raise ValueError(f"`max_window` must be an int >= min_steps, got {max_window!r}")

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

        self._fixed_ratio = {"off": 0.0, "gpu": 1.0, "fixed": float(ratio or 0.0)}.get(mode)
        self._cap = 1.0
        self._window: deque[StepStats] = deque(maxlen=max_window)
        self._matched = 0  # steps routed with the current ratio since the last change
        self._since_change = 0
        self._keep_window = False
        self.history: list[Decision] = []
        self._decisions = 0
        self._reset_search()
        self._ratio = self._mode_ratio() if mode != "auto" else self._quantise(self.min_ratio)
        init = (
            f"init: measuring the CPU-only baseline at r={self._ratio:.2f}"
            if mode == "auto"
            else f"init: mode {mode!r}, r={self._ratio:.2f}"
        )
        self.history.append(Decision(self._ratio, init, "init", step=self._step))

    # ------------------------------------------------------------------ public API
    @property
    def ratio(self) -> float:
        """Share of each batch to route to the device now (memory cap applied)."""
        return min(self._ratio, self._cap)

    @property
    def memory_cap(self) -> float:
        return self._cap

    def observe(self, stats: StepStats) -> None:
        """Record one training step."""
        self._since_change += 1
        if self._routed_with_current(stats) or self._since_change > _STALE_LIMIT:
            self._matched += 1
        # Warm-up skip: batches routed before the last change are still in flight (the
        # DataLoader prefetches), and the pipeline needs a few batches to settle on the new
        # ratio; neither says anything about the new ratio's speed.
        if self._matched > self.warmup_steps:
            self._window.append(stats)

    def decide(self, reduce: Callable[[dict[str, float]], Mapping[str, Any]] | None = None) -> Decision:
        """Decide the ratio for the next window from the steps observed since the last one.

        Args:
            reduce: optional callable, called exactly once per decision with a dict of float
                statistics of this rank's window; it must return the same keys averaged over
                ranks (the callback passes an all-reduce). Every rank then takes the same
                decision from the same numbers. Missing values are NaN.
        """
        summary = self._summarize()
        if reduce is not None:
            summary = {k: float(v) for k, v in reduce(dict(summary)).items()}
        self._decisions += 1
        if self.mode == "auto":
            decision = self._decide_auto(summary)
        else:
            decision = self._decide_mode(summary)
        decision.index = self._decisions
        self._apply(decision)
        return decision

    def set_memory_cap(self, cap: float | None) -> None:
        """Cap the ratio (e.g. the memory guard's ``ratio_cap``); ``None`` lifts the cap.

        In DDP, reduce the cap across ranks (minimum) before calling so all ranks agree.
        """
        new = 1.0 if cap is None else float(cap)
        if not 0.0 <= new <= 1.0:
            raise ValueError(f"`cap` must be None or in [0, 1], got {cap!r}")
        self._cap = self._quantise(new, floor=True) if new < 1.0 else 1.0
        if self._ratio <= self._cap:
            return
        prev = self._ratio
        self._ratio = self._cap
        self._mark_change()
        if self.mode == "auto":
            # Unmeasured point: the next decision measures it (as after a revert) and then
            # explores below it; nothing above the cap is allowed.
            self._best = None
            self._phase, self._last_move = "climb", "revert"
            self._dir, self._tried = 1, {1}
        self.history.append(
            Decision(
                self._cap,
                f"memory cap {self._cap:.2f}: r {prev:.2f} -> {self._cap:.2f}",
                "memory",
                index=self._decisions,
                prev_ratio=prev,
                step=self._step,
            )
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state: ratio, search state, estimates, memory cap and history."""
        return {
            "version": 1,
            "mode": self.mode,
            "ratio": self._ratio,
            "memory_cap": self._cap,
            "decisions": self._decisions,
            "phase": self._phase,
            "best": list(self._best) if self._best else None,
            "baseline": self._baseline,
            "baseline_fresh": self._baseline_fresh,
            "step": self._step,
            "direction": self._dir,
            "tried": sorted(self._tried),
            "last_move": self._last_move,
            "model_jumps": self._model_jumps,
            "hold_ref": list(self._hold_ref) if self._hold_ref else None,
            "estimates": dict(self._est),
            "history": [d.to_dict() for d in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the controller continues from the saved ratio and best
        point. A state saved under another mode restores only the history and memory cap."""
        self.history = [Decision.from_dict(d) for d in state.get("history", [])]
        self._decisions = int(state.get("decisions", len(self.history)))
        self._cap = float(state.get("memory_cap", 1.0))
        self._window.clear()
        self._mark_change()
        if state.get("mode") != self.mode:
            self._reset_search()
            self._ratio = self._mode_ratio() if self.mode != "auto" else self.min_ratio
            return
        self._ratio = float(state["ratio"])
        if self.mode != "auto":
            self._ratio = self._mode_ratio()
            return
        self._phase = state["phase"]
        self._best = tuple(state["best"]) if state.get("best") else None
        self._baseline = state.get("baseline")
        self._baseline_fresh = bool(state.get("baseline_fresh", False))
        self._step = float(state.get("step", self.max_step))
        self._dir = int(state.get("direction", 1))
        self._tried = set(state.get("tried", []))
        self._last_move = state.get("last_move")
        self._model_jumps = int(state.get("model_jumps", 0))
        self._hold_ref = tuple(state["hold_ref"]) if state.get("hold_ref") else None
        self._est = dict(state.get("estimates", {}))

    # ------------------------------------------------------------------ measurement
    def _routed_with_current(self, s: StepStats) -> bool:
        r = self.ratio
        if s.ratio is not None:
            return abs(s.ratio - r) < 1e-6
        return abs(s.n_device - r * s.batch_size) <= 1.0

    def _summarize(self) -> dict[str, float]:
        """Robust statistics of the window (NaN where unknown)."""
        steps = list(self._window)
        out = dict.fromkeys(
            (
                "steps",
                "samples_per_s",
                "se_rel",
                "step_s",
                "wait_s",
                "batch_size",
                "num_workers",
                "routed_ratio",
                "cpu_cost",
                "device_cost",
                "compute_s",
                "h2d_s",
            ),
            math.nan,
        )
        out["steps"] = float(len(steps))
        if not steps:
            return out
        per_sample = [s.step_s / s.batch_size for s in steps]
        t, se = _trimmed_mean(per_sample)
        out["samples_per_s"] = 1.0 / t if t > 0 else math.nan
        out["se_rel"] = se / t if t > 0 else 0.0
        out["step_s"] = _trimmed_mean([s.step_s for s in steps])[0]
        out["wait_s"] = _median([s.data_wait_s for s in steps])
        out["batch_size"] = _median([float(s.batch_size) for s in steps])
        out["num_workers"] = _median([float(s.num_workers) for s in steps])
        out["routed_ratio"] = statistics.fmean(s.n_device / s.batch_size for s in steps)
        out["cpu_cost"] = _median(
            [s.cpu_aug_s / s.n_cpu for s in steps if s.cpu_aug_s is not None and s.n_cpu]
        )
        out["device_cost"] = _median([s.device_aug_s / s.n_device for s in steps if s.n_device])
        out["compute_s"] = _median(
            [max(s.step_s - s.data_wait_s - s.device_aug_s, 0.0) for s in steps]
        )
        out["h2d_s"] = _median([s.h2d_s for s in steps if s.h2d_s is not None])
        return out

    def _update_estimates(self, s: Mapping[str, float]) -> None:
        """Refresh the cost estimates ``c, g, T, L0`` from a window summary."""
        est = self._est
        for key in ("batch_size", "num_workers", "compute_s"):
            if _finite(s[key]):
                est[key] = s[key]
        B, W = est.get("batch_size"), est.get("num_workers", 0.0)
        r = s["routed_ratio"] if _finite(s["routed_ratio"]) else self._ratio
        loader_bound = s["wait_s"] > _LOADER_BOUND * s["step_s"]
        # In steady state a loader-bound step lasts as long as the loader needs per batch.
        loader_s = s["step_s"] if loader_bound and W >= 1 else None
        if W < 1 and _finite(s["wait_s"]):
            loader_s = s["wait_s"]  # no workers: the wait *is* the loading time
        c = s["cpu_cost"] if _finite(s["cpu_cost"]) else None
        if c is not None:
            est["cpu_cost"] = c
            if loader_s is not None and B:
                share = (1.0 - r) * B * c / max(W, 1.0)
                est["loader_fixed_s"] = max(loader_s - share, 0.0)
        elif loader_s is not None and B and r < 1.0:
            fixed = est.get("loader_fixed_s", 0.0)
            est["cpu_cost"] = max(loader_s - fixed, 0.0) * max(W, 1.0) / ((1.0 - r) * B)
        if _finite(s["device_cost"]):
            est["device_cost"] = s["device_cost"]
            est["device_cost_assumed"] = False

    def _model(self) -> CostModel | None:
        est = self._est
        if not all(k in est for k in ("batch_size", "cpu_cost", "compute_s")):
            return None
        g = est.get("device_cost")
        assumed = g is None or bool(est.get("device_cost_assumed", False))
        if g is None:
            # Not measured yet (nothing routed): assume one sample costs the device what it
            # costs one CPU core. Conservative on a GPU (the first move is small, and measures
            # the real cost), about right for the CPU "device" route.
            g = est["cpu_cost"]
        return CostModel(
            batch_size=est["batch_size"],
            num_workers=est.get("num_workers", 0.0),
            cpu_cost=est["cpu_cost"],
            device_cost=g,
            compute_s=est["compute_s"],
            loader_fixed_s=est.get("loader_fixed_s", 0.0),
            device_cost_assumed=assumed,
        )

    # ------------------------------------------------------------------ decisions
    def _decide_mode(self, s: Mapping[str, float]) -> Decision:
        r = self._mode_ratio()
        label = {"off": "off (CPU only)", "gpu": "gpu (all samples on the device)"}.get(
            self.mode, f"fixed r={r:.2f}"
        )
        d = self._decision(r, f"mode: {label}", "mode", s)
        if r > self._cap:
            d.ratio = self._cap
            d.kind = "memory"
            d.reason = f"memory cap {self._cap:.2f}: mode {label} limited to r={self._cap:.2f}"
        return d

    def _decide_auto(self, s: Mapping[str, float]) -> Decision:
        r = self._ratio
        x = s["samples_per_s"]
        if not _finite(x) or s["steps"] < self.min_steps:
            n = 0 if not _finite(s["steps"]) else int(s["steps"])
            self._keep_window = True  # too few steps: keep accumulating into the next window
            return self._decision(
                r,
                f"hold: {n} steps measured since the last change (after warm-up), "
                f"need {self.min_steps}",
                "hold",
                s,
            )
        se = s["se_rel"] if _finite(s["se_rel"]) else 0.0
        self._update_estimates(s)
        model = self._model()
        lo, hi = self._bounds()
        self._model_r = self._quantise(model.crossing(lo, hi)) if model else None
        if r <= lo + 1e-9:  # a fresh CPU-only (min_ratio) measurement
            self._baseline, self._baseline_fresh = x, True
        self._x, self._se = x, se

        if self._phase == "baseline":
            self._best = (r, x, se)
            return self._after_baseline(s, model)
        if self._phase == "hold":
            return self._check_hold(s, model)
        if self._phase == "floor":
            return self._after_floor_check(s)
        if self._last_move == "revert":
            # Back at the best point: refresh its measurement, then explore again.
            self._best = (r, x, se)
            return self._next_explore(s, model, prefix="")
        return self._evaluate_move(s, model)

    def _after_baseline(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        r, wait_ms = self._ratio, s["wait_s"] * 1e3
        if not self._loader_bound(s):
            return self._converge(
                s,
                f"model: device-bound (wait {wait_ms:.1f} ms/step), "
                f"the CPU-only r={r:.2f} is best",
                kind="model",
            )
        target = self._model_r
        if target is None or abs(target - r) < self._jump_tol():
            return self._next_explore(s, model, prefix=f"loader-bound (wait {wait_ms:.0f} ms/step); ")
        self._phase, self._last_move, self._model_jumps = "model", "model", 1
        note = " (device cost assumed until measured)" if model and model.device_cost_assumed else ""
        return self._decision(
            target,
            f"model: loader-bound (wait {wait_ms:.0f} ms/step), cost model says "
            f"r={target:.2f}{note}",
            "model",
            s,
        )

    def _evaluate_move(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        """Judge the move that brought us to the current ratio against the best point."""
        r, x, se = self._ratio, self._x, self._se
        assert self._best is not None
        best_r, best_x, best_se = self._best
        rel = x / best_x - 1.0
        thr = self._threshold(se, best_se)
        if rel < -thr:
            # The move lost speed: back to the best point, smaller steps, other way.
            if self._last_move == "model":
                self._step = self._clamp_step(abs(r - best_r) / 2)
                self._dir, self._tried = (1 if r > best_r else -1), set()
            else:
                self._tried.add(self._dir)
            self._phase, self._last_move = "climb", "revert"
            return self._decision(
                best_r,
                f"revert: r={r:.2f} lost {-rel:.1%} throughput vs best r={best_r:.2f}",
                "revert",
                s,
            )
        if self._last_move == "model":
            # Gain or tie: trust the model point (it rests on more than one noisy number).
            self._best = (r, x, se)
            target = self._model_r
            if (
                target is not None
                and self._model_jumps < _MAX_MODEL_JUMPS
                and abs(target - r) >= self._jump_tol()
            ):
                self._model_jumps += 1
                return self._decision(
                    target,
                    f"model: r={r:.2f} measured {x:.0f} samples/s ({rel:+.1%} vs r={best_r:.2f}); "
                    f"refitted cost model says r={target:.2f}",
                    "model",
                    s,
                )
            return self._next_explore(s, model, prefix=f"model point r={r:.2f} confirmed; ")
        if rel > thr:
            self._best = (r, x, se)
            self._tried = {-self._dir}  # the point behind us is known to be worse
            nxt = self._clamp(r + self._dir * self._step)
            if abs(nxt - r) > 1e-9:
                self._last_move = "explore"
                return self._decision(
                    nxt,
                    f"explore: r={r:.2f} gained {rel:.1%} over r={best_r:.2f}; trying r={nxt:.2f}",
                    "explore",
                    s,
                )
            return self._next_explore(s, model, prefix=f"r={r:.2f} gained {rel:.1%}; ")
        # Within noise: no measurable gain, keep the best point.
        self._tried.add(self._dir)
        self._phase, self._last_move = "climb", "revert"
        return self._decision(
            best_r,
            f"best: r={r:.2f} within noise of best r={best_r:.2f} ({rel:+.1%}, "
            f"threshold {thr:.1%}); back to r={best_r:.2f}",
            "best",
            s,
        )

    def _next_explore(self, s: Mapping[str, float], model: CostModel | None, prefix: str) -> Decision:
        """From the best point (the current ratio), try the next step or converge."""
        r = self._ratio
        self._phase = "climb"
        if not self._tried and self._last_move != "revert":
            # Fresh start: step toward relieving the bottleneck (up when waiting for data).
            self._dir = 1 if self._loader_bound(s) else -1
            if self._blocked(self._dir):
                self._dir = -self._dir
            self._step = self._adaptive_step(model, self._dir)
        elif self._dir in self._tried:
            if -self._dir not in self._tried:
                self._dir = -self._dir
            else:
                half = self._step / 2
                if half < self._min_step() or not self._measurable(model, half):
                    return self._converge(s, f"hold: {prefix}converged at r={r:.2f}", kind="hold")
                self._step, self._tried = half, set()
                self._dir = 1 if self._loader_bound(s) else -1
        if self._blocked(self._dir):
            self._tried.add(self._dir)
            if -self._dir in self._tried or self._blocked(-self._dir):
                return self._converge(s, f"hold: {prefix}converged at r={r:.2f} (bound)", kind="hold")
            self._dir = -self._dir
        nxt = self._clamp(r + self._dir * self._step)
        self._last_move = "explore"
        return self._decision(
            nxt,
            f"explore: {prefix}trying r={nxt:.2f} (step {self._dir * self._step:+.2f}) from "
            f"best r={r:.2f} ({self._x:.0f} samples/s)",
            "explore",
            s,
        )

    def _converge(self, s: Mapping[str, float], reason: str, kind: str) -> Decision:
        """Stop moving at the current (best) point, after checking the CPU-only floor."""
        r, x = self._ratio, self._x
        lo, _ = self._bounds()
        if r > lo + 1e-9 and self._baseline is not None:
            if self._baseline_fresh:
                thr = self._threshold(self._se, 0.0)
                if x < self._baseline * (1.0 - thr):
                    # Floor: never settle below the measured CPU-only speed.
                    self._best = (lo, self._baseline, 0.0)
                    self._phase, self._hold_ref = "hold", None
                    return self._decision(
                        lo,
                        f"revert: r={r:.2f} measured {x:.0f} samples/s, below CPU-only "
                        f"{self._baseline:.0f}; back to r={lo:.2f}",
                        "revert",
                        s,
                    )
            elif not self._clearly_above_floor(x):
                # The baseline predates a regime change and the model cannot vouch for this
                # point: measure CPU-only again before settling.
                self._phase = "floor"
                return self._decision(
                    lo,
                    f"explore: floor check, re-measuring CPU-only at r={lo:.2f} before "
                    f"settling at r={r:.2f}",
                    "explore",
                    s,
                )
        self._phase, self._last_move = "hold", None
        self._hold_ref = (x, self._model_r)
        return self._decision(r, f"{reason} ({x:.0f} samples/s)", kind, s)

    def _after_floor_check(self, s: Mapping[str, float]) -> Decision:
        assert self._best is not None
        best_r, best_x, best_se = self._best
        x = self._x
        if best_x > x * (1.0 + self._threshold(self._se, best_se)):
            self._phase, self._hold_ref = "hold", (best_x, self._model_r)
            return self._decision(
                best_r,
                f"best: back to r={best_r:.2f} ({best_x / x - 1:+.1%} over CPU-only {x:.0f} samples/s)",
                "best",
                s,
            )
        self._best = (self._ratio, x, self._se)
        self._phase, self._hold_ref = "hold", (x, self._model_r)
        return self._decision(
            self._ratio,
            f"hold: CPU-only ({x:.0f} samples/s) is as fast as r={best_r:.2f}; staying",
            "hold",
            s,
        )

    def _check_hold(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        """Converged: keep re-checking for a regime change or a floor violation."""
        r, x, se = self._ratio, self._x, self._se
        lo, _ = self._bounds()
        if self._hold_ref is None:  # first measurement at the settled point
            self._hold_ref = (x, self._model_r)
        ref_x, ref_model = self._hold_ref
        rel = x / ref_x - 1.0
        drift = (
            abs(self._model_r - ref_model)
            if self._model_r is not None and ref_model is not None
            else 0.0
        )
        if abs(rel) > max(self.regime_tol, self._threshold(se, 0.0)) or drift > self.regime_tol:
            self._baseline_fresh = r <= lo + 1e-9
            self._best = (r, x, se)
            self._model_jumps, self._tried, self._step = 0, set(), self.max_step
            why = (
                f"regime change (throughput {rel:+.0%} since converging)"
                if abs(rel) > self.regime_tol
                else f"regime change (model optimum moved {ref_model:.2f} -> {self._model_r:.2f})"
            )
            target = self._model_r
            if target is not None and abs(target - r) >= self._jump_tol():
                self._phase, self._last_move, self._model_jumps = "model", "model", 1
                return self._decision(
                    target, f"model: {why}, cost model says r={target:.2f}", "model", s
                )
            return self._next_explore(s, model, prefix=f"{why}; ")
        if (
            r > lo + 1e-9
            and self._baseline_fresh
            and self._baseline is not None
            and x < self._baseline * (1.0 - self._threshold(se, 0.0))
        ):
            self._phase, self._best = "baseline", None
            return self._decision(
                lo,
                f"revert: r={r:.2f} measured {x:.0f} samples/s, below CPU-only "
                f"{self._baseline:.0f}; re-measuring from r={lo:.2f}",
                "revert",
                s,
            )
        return self._decision(
            r, f"hold: r={r:.2f} steady ({x:.0f} samples/s, {rel:+.1%} vs reference)", "hold", s
        )

    # ------------------------------------------------------------------ helpers
    def _reset_search(self) -> None:
        self._phase = "baseline"
        self._best: tuple[float, float, float] | None = None
        self._baseline: float | None = None
        self._baseline_fresh = False
        self._step = self.max_step
        self._dir = 1
        self._tried: set[int] = set()
        self._last_move: str | None = None
        self._model_jumps = 0
        self._hold_ref: tuple[float, float | None] | None = None
        self._est: dict[str, Any] = {}
        self._model_r: float | None = None
        self._x = math.nan
        self._se = 0.0

    def _mode_ratio(self) -> float:
        assert self._fixed_ratio is not None
        return self._fixed_ratio

    def _bounds(self) -> tuple[float, float]:
        hi = min(self.max_ratio, self._cap)
        return min(self.min_ratio, hi), hi

    def _quantise(self, r: float, floor: bool = False) -> float:
        if self.quantum:
            q = r / self.quantum
            r = (math.floor(q + 1e-9) if floor else round(q)) * self.quantum
        return round(min(max(r, 0.0), 1.0), 10)

    def _clamp(self, r: float) -> float:
        lo, hi = self._bounds()
        return min(max(self._quantise(r), lo), hi)

    def _blocked(self, d: int) -> bool:
        return abs(self._clamp(self._ratio + d * self._step) - self._ratio) < 1e-9

    def _min_step(self) -> float:
        b = self._est.get("batch_size")
        return max(self.min_step, 1.0 / b if b else 0.0)

    def _clamp_step(self, step: float) -> float:
        return min(max(step, self._min_step()), self.max_step)

    def _jump_tol(self) -> float:
        return 2 * self._min_step()

    def _threshold(self, se_a: float, se_b: float) -> float:
        """Relative throughput difference that counts as real: the hysteresis, widened to two
        standard errors of the difference when the timings are noisier than that."""
        return max(self.hysteresis, 2.0 * math.hypot(se_a, se_b))

    def _loader_bound(self, s: Mapping[str, float]) -> bool:
        return _finite(s["wait_s"]) and s["wait_s"] > _LOADER_BOUND * s["step_s"]

    def _adaptive_step(self, model: CostModel | None, d: int) -> float:
        """The smallest step (halving from ``step``) whose effect the model says we can see."""
        step = self.max_step
        if model is None:
            return step
        while step / 2 >= self._min_step() and self._effect(model, d * step / 2) >= 2.5 * self._thr0():
            step /= 2
        return step

    def _measurable(self, model: CostModel | None, step: float) -> bool:
        if model is None:
            return True
        return max(self._effect(model, step), self._effect(model, -step)) >= 2.0 * self._thr0()

    def _effect(self, model: CostModel, delta: float) -> float:
        base = model.throughput(self._ratio)
        return abs(model.throughput(self._clamp(self._ratio + delta)) / base - 1.0)

    def _thr0(self) -> float:
        return self._threshold(self._se, self._se)

    def _clearly_above_floor(self, x: float) -> bool:
        """Whether the cost model, calibrated on this measurement, puts CPU-only well below."""
        model = self._model()
        if model is None:
            return False
        lo, _ = self._bounds()
        pred_here = model.throughput(self._ratio)
        if not _finite(pred_here) or pred_here <= 0:
            return False
        cpu_only = model.throughput(lo) * x / pred_here
        return x > cpu_only * (1.0 + 2.0 * max(self.regime_tol, self._thr0()))

    def _decision(
        self,
        ratio: float,
        reason: str,
        kind: str,
        s: Mapping[str, float],
    ) -> Decision:
        best = self._best
        x = s.get("samples_per_s", math.nan)
        wait = s.get("wait_s", math.nan)
        d = Decision(
            ratio=self._clamp(ratio) if self.mode == "auto" else ratio,
            reason=reason,
            kind=kind,
            throughput=x if _finite(x) else None,
            step=self._step,
            prev_ratio=self._ratio,
            best_ratio=best[0] if best else None,
            best_throughput=best[1] if best else None,
            baseline_throughput=self._baseline,
            model_ratio=self._model_r,
            data_wait_s=wait if _finite(wait) else None,
            steps=int(s["steps"]) if _finite(s.get("steps")) else 0,
        )
        return d

    def _apply(self, d: Decision) -> None:
        keep, self._keep_window = self._keep_window, False
        if abs(d.ratio - self.ratio) > 1e-9:
            self._ratio = d.ratio
            self._mark_change()
        elif not keep:
            self._window.clear()
        self.history.append(d)

    def _mark_change(self) -> None:
        self._window.clear()
        self._matched = 0
        self._since_change = 0
