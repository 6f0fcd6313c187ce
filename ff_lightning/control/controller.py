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

Measurement: throughput is taken over blocks of ``W`` consecutive steps (workers deliver
batches in bursts), warm-up steps after each change are skipped, and the workers' stamped CPU
seconds bound what the loader can sustain (a full prefetch buffer hides a slower loader for
many steps). Stamps are calibrated against windows where the loader was clearly the
bottleneck, so overstated stamps or fewer cores than workers do not mislead the model.
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

_LOADER_BOUND = 0.05  # mean wait above this share of the step: the loader is the bottleneck
_CLEARLY_LOADER_BOUND = 0.2  # wait share above which step time ~ loader time per batch
_Q_NOISE = 0.15  # stamps explaining the loader time to within this are taken as exact
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
        prep_s: worker CPU seconds spent on the route-independent work of the whole batch
            (decode, crop), if stamped. With ``cpu_aug_s`` it gives the loader's sustainable
            speed and its fixed cost directly, instead of inferring them from waits.
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
    prep_s: float | None = None

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
        step: size of an exploratory move (``None`` for other kinds).
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
    """``L(r) = scale·(L0 + (1-r)·B·c/W)`` and ``D(r) = T + r·B·g``; serial when ``W = 0``.

    ``L0`` (``loader_fixed_s``) is the route-independent loader time per batch (decode, crop)
    and ``scale`` (``loader_scale``) calibrates the workers' stamped CPU seconds against the
    loader time measured when it was the bottleneck (fewer cores than workers, IPC, ...).
    """

    batch_size: float
    num_workers: float
    cpu_cost: float
    device_cost: float
    compute_s: float
    loader_fixed_s: float = 0.0
    loader_scale: float = 1.0
    device_cost_assumed: bool = False

    def loader_s(self, r: float) -> float:
        w = max(self.num_workers, 1.0)
        share = (1.0 - r) * self.batch_size * self.cpu_cost / w
        return self.loader_scale * (self.loader_fixed_s + share)

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
        """The ratio in ``[lo, hi]`` where loader and device times meet (the best ``r``)."""
        if self.num_workers < 1:  # serial: all-or-nothing, whichever route is cheaper
            return hi if self.device_cost < self.loader_scale * self.cpu_cost else lo
        k = self.loader_scale
        bc = self.batch_size * self.cpu_cost / self.num_workers
        bg = self.batch_size * self.device_cost
        if k * bc + bg <= 0:
            return lo
        r = (k * (self.loader_fixed_s + bc) - self.compute_s) / (k * bc + bg)
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
        self._fixed = {"off": 0.0, "gpu": 1.0, "fixed": float(ratio or 0.0)}.get(mode, 0.0)
        self._cap = 1.0
        self._window: deque[StepStats] = deque(maxlen=max_window)
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
        """Record one training step."""
        self._since_change += 1
        if self._routed_with_current(stats) or self._since_change > _STALE_LIMIT:
            self._matched += 1
        # Warm-up skip: batches routed before the last change are still in flight (the
        # DataLoader prefetches them), and batches buffered meanwhile make the first steps
        # after them look faster or slower than the new ratio really is.
        warmup = self.warmup_steps if self.warmup_steps is not None else 2 * stats.num_workers
        if self._matched > warmup:
            self._window.append(stats)

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
        summary = self._summarize()
        if reduce is not None:
            summary = {k: float(v) for k, v in reduce(dict(summary)).items()}
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
            self._window.clear()
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
        old_cap = self._cap
        self._cap = self._quantise(new, floor=True) if new < 1.0 else 1.0
        if self._cap > old_cap and self._ratio >= old_cap - 1e-9:
            # The cap was binding and has been raised: explore upward from here.
            if self.mode == "auto" and self._phase in ("hold", "climb"):
                self._phase = "recheck"
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
        if self.mode == "auto" and self._phase != "baseline":
            # An unmeasured point: the next decision measures it (as after a revert), then
            # explores below it; nothing above the cap is allowed.
            self._best, self._phase, self._last_move = None, "climb", "revert"
            self._new_climb(first=-1)
            self._done = {1}
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
            "version": 1,
            "mode": self.mode,
            "ratio": self._ratio,
            "memory_cap": self._cap,
            "decisions": self._decisions,
            "phase": self._phase,
            "best": list(self._best) if self._best else None,
            "baseline": self._baseline,
            "baseline_fresh": self._baseline_fresh,
            "steps": [self._steps[1], self._steps[-1]],
            "done": sorted(self._done),
            "direction": self._dir,
            "next_direction": self._next_dir,
            "last_move": self._last_move,
            "model_jumps": self._model_jumps,
            "hold_ref": list(self._hold_ref) if self._hold_ref else None,
            "estimates": dict(self._est),
            "history": [d.to_dict() for d in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the controller continues from the saved ratio and best
        point. A state saved under another mode restores only the history and memory cap."""
        self.history = [Decision.from_dict(d) for d in state.get("history", [])]
        self._decisions = int(state.get("decisions", len(self.history)))
        self._cap = float(state.get("memory_cap", 1.0))
        self._mark_change()
        self._reset_search()
        if state.get("mode") != self.mode or self.mode != "auto":
            self._ratio = self._fixed if self.mode != "auto" else self._quantise(self.min_ratio)
            return
        self._ratio = float(state["ratio"])
        self._phase = str(state["phase"])
        self._best = tuple(state["best"]) if state.get("best") else None  # type: ignore[assignment]
        self._baseline = state.get("baseline")
        self._baseline_fresh = bool(state.get("baseline_fresh", False))
        up, down = state.get("steps", [self.max_step, self.max_step])
        self._steps = {1: float(up), -1: float(down)}
        self._done = set(state.get("done", []))
        self._dir = int(state.get("direction", 1))
        self._next_dir = state.get("next_direction")
        self._last_move = state.get("last_move")
        self._model_jumps = int(state.get("model_jumps", 0))
        self._hold_ref = tuple(state["hold_ref"]) if state.get("hold_ref") else None  # type: ignore[assignment]
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
                "loader_floor_s",
                "loader_fixed_s",
            ),
            math.nan,
        )
        out["steps"] = float(len(steps))
        if not steps:
            return out
        # Workers that start together deliver batches in bursts (one long wait, then W-1
        # batches at once), so per-step timings are bimodal and their median says nothing
        # about throughput. Measure over blocks of W consecutive steps (one worker round),
        # then take a trimmed mean over blocks against outliers (GC, checkpointing).
        k = max(int(_median([float(s.num_workers) for s in steps])), 1)
        blocks = [steps[i : i + k] for i in range(0, len(steps) - k + 1, k)] or [steps]
        per_sample = [sum(s.step_s for s in b) / sum(s.batch_size for s in b) for b in blocks]
        t, se = _trimmed_mean(per_sample, trim=0.1)
        out["samples_per_s"] = 1.0 / t if t > 0 else math.nan
        out["se_rel"] = se / t if t > 0 else 0.0
        used = [s for b in blocks for s in b]
        out["step_s"] = statistics.fmean(s.step_s for s in used)
        out["wait_s"] = statistics.fmean(s.data_wait_s for s in used)
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
        # The fastest the workers can deliver: the CPU seconds they stamp per batch / W.
        w = out["num_workers"]
        if w >= 1 and all(s.cpu_aug_s is not None for s in used):
            prep = [s.prep_s for s in used]
            fixed = 0.0
            if all(v is not None for v in prep):
                fixed = statistics.fmean(prep)  # type: ignore[arg-type]
                out["loader_fixed_s"] = fixed / w
            out["loader_floor_s"] = (fixed + statistics.fmean(s.cpu_aug_s for s in used)) / w  # type: ignore[misc]
        return out

    def _update_estimates(self, s: Mapping[str, float]) -> None:
        """Refresh the cost estimates ``c, g, T, L0`` from a window summary."""
        est = self._est
        for key in ("batch_size", "num_workers", "compute_s"):
            if _finite(s[key]):
                est[key] = s[key]
        B, W = est.get("batch_size"), est.get("num_workers", 0.0)
        r = s["routed_ratio"] if _finite(s["routed_ratio"]) else self._ratio
        # In steady state a loader-bound step lasts as long as the loader needs per batch;
        # only trust that when clearly loader-bound (near the crossing point noise makes the
        # step last max(L, D), longer than either).
        clearly = s["wait_s"] > _CLEARLY_LOADER_BOUND * s["step_s"]
        loader_s = s["step_s"] if clearly and W >= 1 else None
        if W < 1 and _finite(s["wait_s"]):
            loader_s = s["wait_s"]  # no workers: the wait *is* the loading time
        c = s["cpu_cost"] if _finite(s["cpu_cost"]) else None
        floor = s["loader_floor_s"]
        if loader_s is not None and W >= 1 and _finite(floor) and floor > 0:
            # Stamped worker seconds vs the loader time they should explain. Noise only ever
            # inflates the measured side: keep the smallest ratio seen (until a regime change).
            est["loader_q"] = min(loader_s / floor, est.get("loader_q", math.inf))
        if c is not None:
            est["cpu_cost"] = c
            if _finite(s["loader_fixed_s"]):
                est["prep_s"] = s["loader_fixed_s"]  # stamped by the workers
            elif loader_s is not None and B:
                # Route-independent loader time, inferred (smallest seen, as above).
                share = (1.0 - r) * B * c / max(W, 1.0)
                fixed = max(loader_s - share, 0.0)
                est["loader_fixed_s"] = min(fixed, est.get("loader_fixed_s", math.inf))
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
        q = est.get("loader_q", 1.0)
        if 1.0 < q <= 1.0 + _Q_NOISE:
            q = 1.0  # within what noise adds to a loader-bound step (max of two noisy times)
        if "prep_s" in est:  # fully stamped: calibrate the stamps against measured loader time
            fixed, scale = est["prep_s"], q
        else:  # an inferred fixed part absorbs a slower loader; only scale overstated stamps
            fixed, scale = est.get("loader_fixed_s", 0.0), min(q, 1.0)
        return CostModel(
            batch_size=est["batch_size"],
            num_workers=est.get("num_workers", 0.0),
            cpu_cost=est["cpu_cost"],
            device_cost=g,
            compute_s=est["compute_s"],
            loader_fixed_s=fixed,
            loader_scale=scale,
            device_cost_assumed=assumed,
        )

    def _loader_limited(self, s: Mapping[str, float], x: float) -> float:
        """Cap a measured throughput at what the workers can sustain.

        Right after a move toward the CPU the prefetch buffer is still full and hides a slower
        loader for many steps (near the crossing point for ~prefetch*W / (1 - D/L) steps); the
        workers' stamped seconds see through it. Stamps that overstate (calibrated on
        loader-bound windows) are scaled down; the cap never rises above the stamps.
        """
        floor, b = s["loader_floor_s"], s["batch_size"]
        if not (_finite(floor) and floor > 0 and _finite(b)):
            return x
        floor *= min(self._est.get("loader_q", 1.0), 1.0)
        return min(x, b / floor)

    # ------------------------------------------------------------------ decisions
    def _decide_mode(self, s: Mapping[str, float]) -> Decision:
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

    def _decide_auto(self, s: Mapping[str, float]) -> Decision:
        r, x = self._ratio, s["samples_per_s"]
        n = int(s["steps"]) if _finite(s["steps"]) else 0
        if not _finite(x) or n < self.min_steps:
            self._keep_window = True  # too few steps: keep accumulating
            return self._decision(
                r,
                f"hold: {n} steps measured since the last change (after warm-up), "
                f"need {self.min_steps}",
                "hold",
                s,
            )
        self._update_estimates(s)
        x = self._loader_limited(s, x)
        s = {**s, "samples_per_s": x}
        self._x, self._se = x, (s["se_rel"] if _finite(s["se_rel"]) else 0.0)
        model = self._model()
        self._model_r = self._model_target(model) if model else None
        if r <= self._bounds()[0] + 1e-9:  # a fresh CPU-only (min_ratio) measurement
            self._baseline, self._baseline_fresh = x, True
        if self._phase == "baseline":
            self._best = (r, x, self._se)
            return self._after_baseline(s, model)
        if self._phase == "hold":
            return self._check_hold(s, model)
        if self._phase == "floor":
            return self._after_floor_check(s)
        if self._phase == "recheck":  # the memory cap was raised: optimise again from here
            return self._regime_change(s, model, "memory cap raised")
        if self._phase == "model":
            return self._after_model_jump(s, model)
        if self._last_move == "revert" or self._best is None:
            # Back at the best point: refresh its measurement, explore on. A large change
            # since it was measured means the costs changed under us.
            if self._best is not None and abs(self._best[0] - r) < 1e-9:
                rel = x / self._best[1] - 1.0
                if abs(rel) > max(self.regime_tol, 3.0 * math.hypot(self._se, self._best[2])):
                    return self._regime_change(
                        s, model, f"regime change (best point measured {rel:+.0%})"
                    )
            self._best = (r, x, self._se)
            return self._next_explore(s, model, "")
        return self._after_explore(s, model)

    def _after_baseline(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        r, wait_ms = self._ratio, s["wait_s"] * 1e3
        self._new_climb()
        self._model_jumps = 0
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

    def _after_model_jump(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        r, x, se = self._ratio, self._x, self._se
        assert self._best is not None
        best_r, best_x, best_se = self._best
        rel, thr = x / best_x - 1.0, self._threshold(se, best_se)
        target = self._model_r
        can_jump = (
            target is not None
            and self._model_jumps < _MAX_MODEL_JUMPS
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
            self._new_climb(first=d)
            self._steps[d] = self._clamp_step(abs(r - best_r) / 2)
            return self._revert(s, rel, thr)
        # Gain or tie: keep the model point (it rests on medians of many per-sample costs).
        self._best = (r, x, se)
        if can_jump:
            return self._jump(
                target,  # type: ignore[arg-type]
                f"model: r={r:.2f} measured {x:.0f} samples/s ({rel:+.1%} vs r={best_r:.2f}); "
                f"refitted cost model says r={target:.2f}",
                s,
            )
        self._new_climb()
        return self._next_explore(s, model, f"model point r={r:.2f} confirmed; ")

    def _after_explore(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        """Judge an exploratory move against the best point."""
        r, x, se, d = self._ratio, self._x, self._se, self._dir
        assert self._best is not None
        best_r, best_x, best_se = self._best
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
        if (
            self._model_jumps == 0
            and target is not None
            and model is not None
            and not model.device_cost_assumed
        ):
            # This move measured the device cost the baseline lacked: use the model now.
            anchor = (r, x, se) if rel > thr else self._best
            if self._worth_jump(model, target, anchor[0]):
                self._best = anchor
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
            self._best = (r, x, se)
            self._done = set()
            # The old best, one full step behind, is worse; a shorter step back may not be.
            self._steps[-d] = max(self._steps[d] / 2, self._min_step())
            self._steps[d] = min(2 * self._steps[d], self.max_step)  # gaining: speed up
            self._next_dir = d
            return self._next_explore(s, model, f"r={r:.2f} {why} over r={best_r:.2f}; ")
        half = self._steps[d] / 2
        done = half < self._min_step()
        if model is not None:
            # Done this way when a smaller step could not be told from noise, or when the move
            # was a tie that a model matching the measurements also scores no better.
            done = done or self._effect(model, best_r, d * half) < 2.0 * self._thr0()
            tie = rel >= -thr and model.throughput(r) <= model.throughput(best_r)
            done = done or (tie and self._model_matches(model, best_r, best_x))
        if done:
            self._done.add(d)
        else:
            self._steps[d] = half
        self._next_dir = -d
        return self._revert(s, rel, thr)

    def _next_explore(
        self, s: Mapping[str, float], model: CostModel | None, prefix: str
    ) -> Decision:
        """From the best point (the current ratio), try the next step, or settle."""
        r = self._ratio
        self._phase = "climb"
        pref = self._next_dir if self._next_dir is not None else self._relief_dir(s)
        for d in (pref, -pref):
            if d in self._done:
                continue
            step = self._adaptive_step(model, d, self._steps[d])
            nxt = self._clamp(r + d * step)
            if abs(nxt - r) < 1e-9:  # at a bound
                self._done.add(d)
                continue
            self._steps[d] = step
            self._dir, self._next_dir, self._last_move = d, None, "explore"
            return self._decision(
                nxt,
                f"explore: {prefix}trying r={nxt:.2f} (step {d * step:+.2f}) from best "
                f"r={r:.2f} ({self._x:.0f} samples/s)",
                "explore",
                s,
                step=step,
            )
        return self._settle(s, f"hold: {prefix}converged at r={r:.2f}", "hold")

    def _settle(self, s: Mapping[str, float], reason: str, kind: str) -> Decision:
        """Stop moving at the current (best) point, after checking the CPU-only floor."""
        r, x = self._ratio, self._x
        lo = self._bounds()[0]
        if r > lo + 1e-9 and self._baseline is not None:
            if self._baseline_fresh and x < self._baseline * (1.0 - self._threshold(self._se, 0)):
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
            if not self._baseline_fresh and not self._clearly_above_floor(x):
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
        self._hold_ref = (x, 1, self._model_r)
        return self._decision(r, f"{reason} ({x:.0f} samples/s)", kind, s)

    def _after_floor_check(self, s: Mapping[str, float]) -> Decision:
        assert self._best is not None
        best_r, best_x, best_se = self._best
        x = self._x
        if best_x > x * (1.0 + self._threshold(self._se, best_se)):
            self._phase, self._hold_ref = "hold", (best_x, 1, self._model_r)
            return self._decision(
                best_r,
                f"best: back to r={best_r:.2f} ({best_x / x - 1:+.1%} over CPU-only "
                f"{x:.0f} samples/s)",
                "best",
                s,
            )
        self._best = (self._ratio, x, self._se)
        self._phase, self._hold_ref = "hold", (x, 1, self._model_r)
        return self._decision(
            self._ratio,
            f"hold: CPU-only ({x:.0f} samples/s) is as fast as r={best_r:.2f}; staying",
            "hold",
            s,
        )

    def _check_hold(self, s: Mapping[str, float], model: CostModel | None) -> Decision:
        """Settled: keep re-checking for a regime change or a floor violation."""
        r, x, se = self._ratio, self._x, self._se
        lo = self._bounds()[0]
        # Reference: the mean of the measurements since settling (the settling measurement
        # alone carries the selection bias of being the best of several noisy ones).
        ref_x, n_ref, ref_model = self._hold_ref or (x, 0, self._model_r)
        ref_x = ref_x if n_ref else x
        rel = x / ref_x - 1.0
        drift = 0.0
        if self._model_r is not None and ref_model is not None:
            drift = abs(self._model_r - ref_model)
        if abs(rel) > max(self.regime_tol, 3.0 * se) or drift > self.regime_tol:
            why = (
                f"regime change (throughput {rel:+.0%} since settling)"
                if abs(rel) > max(self.regime_tol, 3.0 * se)
                else f"regime change (model optimum moved {ref_model:.2f} -> {self._model_r:.2f})"
            )
            return self._regime_change(s, model, why)
        self._hold_ref = ((ref_x * n_ref + x) / (n_ref + 1), n_ref + 1, ref_model)
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

    def _regime_change(self, s: Mapping[str, float], model: CostModel | None, why: str) -> Decision:
        """Costs changed: optimise again from here, model first."""
        r, x, se = self._ratio, self._x, self._se
        self._baseline_fresh = r <= self._bounds()[0] + 1e-9
        self._best, self._model_jumps = (r, x, se), 0
        self._new_climb()
        if {"loader_fixed_s", "loader_q"} & set(self._est):
            for key in ("loader_fixed_s", "loader_q"):  # smallest-seen estimates: re-learn
                self._est.pop(key, None)
            self._update_estimates(s)
            model = self._model()
            self._model_r = self._model_target(model) if model else None
        target = self._model_r
        if target is not None and self._worth_jump(model, target, r):
            return self._jump(target, f"model: {why}, cost model says r={target:.2f}", s)
        return self._next_explore(s, model, f"{why}; ")

    def _jump(self, target: float, reason: str, s: Mapping[str, float]) -> Decision:
        self._phase, self._last_move = "model", "model"
        self._model_jumps += 1
        return self._decision(target, reason, "model", s)

    def _revert(self, s: Mapping[str, float], rel: float, thr: float) -> Decision:
        assert self._best is not None
        best_r, r = self._best[0], self._ratio
        self._phase, self._last_move = "climb", "revert"
        if rel < -thr:
            reason = f"revert: r={r:.2f} lost {-rel:.1%} throughput vs best r={best_r:.2f}"
            return self._decision(best_r, reason, "revert", s)
        reason = (
            f"best: r={r:.2f} within noise of best r={best_r:.2f} ({rel:+.1%}, threshold "
            f"{thr:.1%}); back to r={best_r:.2f}"
        )
        return self._decision(best_r, reason, "best", s)

    # ------------------------------------------------------------------ helpers
    def _reset_search(self) -> None:
        self._phase = "baseline"
        self._best: tuple[float, float, float] | None = None  # (ratio, samples/s, rel. s.e.)
        self._baseline: float | None = None
        self._baseline_fresh = False
        self._steps: dict[int, float] = {1: self.max_step, -1: self.max_step}
        self._done: set[int] = set()
        self._dir = 1
        self._next_dir: int | None = None
        self._last_move: str | None = None
        self._model_jumps = 0
        self._hold_ref: tuple[float, int, float | None] | None = None
        self._est: dict[str, Any] = {}
        self._model_r: float | None = None
        self._x = math.nan
        self._se = 0.0

    def _new_climb(self, first: int | None = None) -> None:
        self._steps = {1: self.max_step, -1: self.max_step}
        self._done = set()
        self._next_dir = first

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
        b = self._est.get("batch_size")
        return max(self.min_step, 1.0 / b if b else 0.0)

    def _clamp_step(self, step: float) -> float:
        return min(max(step, self._min_step()), self.max_step)

    def _relief_dir(self, s: Mapping[str, float]) -> int:
        """Toward relieving the bottleneck: up when waiting for data, else down."""
        return 1 if self._loader_bound(s) else -1

    def _loader_bound(self, s: Mapping[str, float]) -> bool:
        return _finite(s["wait_s"]) and s["wait_s"] > _LOADER_BOUND * s["step_s"]

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
        best = self._best
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
        model = self._model()
        if model is None:
            return False
        pred_here = model.throughput(self._ratio)
        if not _finite(pred_here) or pred_here <= 0:
            return False
        cpu_only = model.throughput(self._bounds()[0]) * x / pred_here
        return x > cpu_only * (1.0 + 2.0 * max(self.regime_tol, self._thr0()))

    def _decision(
        self,
        ratio: float,
        reason: str,
        kind: str,
        s: Mapping[str, float],
        step: float | None = None,
    ) -> Decision:
        best = self._best
        x, wait = s.get("samples_per_s", math.nan), s.get("wait_s", math.nan)
        return Decision(
            ratio=self._clamp(ratio) if self.mode == "auto" else ratio,
            reason=reason,
            kind=kind,
            throughput=x if _finite(x) else None,
            step=step,
            prev_ratio=self.ratio,
            best_ratio=best[0] if best else None,
            best_throughput=best[1] if best else None,
            baseline_throughput=self._baseline,
            model_ratio=self._model_r,
            data_wait_s=wait if _finite(wait) else None,
            steps=int(s["steps"]) if _finite(s.get("steps")) else 0,
        )

    def _mark_change(self) -> None:
        self._window.clear()
        self._matched = 0
        self._since_change = 0
