"""A discrete-event simulation of the loader/device pipeline, for testing the controller.

The DataLoader is simulated as PyTorch runs it: ``num_workers`` processes take batches
round-robin, at most ``prefetch * num_workers`` batches are in flight, and a batch's route is
fixed when its indices are handed out (the router lives in the sampler), so a new ratio
reaches the training loop only after the batches already in flight. Each batch costs a worker
``n_cpu * cpu_cost + batch_size * loader_cost`` seconds; the device step costs
``compute_time + n_device * device_cost``. With ``num_workers=0`` loading runs in the main
process, serially.

Epochs (:meth:`SimulatedPipeline.new_epoch`): the sampler runs out at the end of an epoch, so
nothing is in flight when the next one starts, and the DataLoader may be rebuilt there with
another worker count (the CPU objective); :func:`run_epochs` drives a controller that way.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from ff_lightning.control.controller import Controller
from ff_lightning.control.records import Decision
from ff_lightning.pipeline.batch import StepStats

__all__ = [
    "EpochTrace",
    "PipelineCosts",
    "SimulatedPipeline",
    "TraceEntry",
    "run_controller",
    "run_epochs",
]

GRID = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass(frozen=True)
class PipelineCosts:
    """Seconds: per-sample CPU / device augmentation, per-batch compute, per-sample fixed
    loader work (decode, crop; not routable and not stamped as augmentation time)."""

    cpu_cost: float
    device_cost: float
    compute_time: float
    loader_cost: float = 0.0


@dataclass
class _Batch:
    ratio: float
    n_device: int
    ready: float
    cpu_aug_s: float
    prep_s: float


@dataclass
class TraceEntry:
    """One decision window: the ratio in effect, what the pipeline really did, and the
    decision taken at its end."""

    ratio: float
    throughput: float  # samples/s over the whole window, transients included
    decision: Decision


class SimulatedPipeline:
    """Produces :class:`StepStats` for the ratio the controller asks for, step by step.

    Args:
        cpu_cost, device_cost, compute_time, loader_cost: see :class:`PipelineCosts`.
        batch_size, num_workers, prefetch: DataLoader shape.
        noise: relative spread of every timing (multiplicative, mean one).
        noise_kind: ``"lognormal"`` or ``"gaussian"`` (clipped at 5% of the mean).
        seed: random seed; the simulation is deterministic for a seed.
        change_at_step: from this step on, ``change`` (new cost values) applies to batches
            handed out and steps run; a regime change.
        change: mapping of :class:`PipelineCosts` field names to new values.
        cores: CPU cores the workers share (``None``: one each). With fewer cores than
            workers a batch takes ``num_workers / cores`` times its CPU seconds of wall time,
            so the stamped CPU seconds understate the loader's time.
        device_extra: extra device seconds per step as a function of ``n_device``, not
            reported as augmentation time (effects a linear cost model cannot see, such as
            memory pressure slowing the training step).
        stamp_cpu: whether workers report ``cpu_aug_s``.
        stamp_prep: whether workers report ``prep_s`` (their route-independent seconds).
        report_ratio: whether a batch reports the ratio it was routed with.
    """

    def __init__(
        self,
        cpu_cost: float,
        device_cost: float,
        compute_time: float,
        batch_size: int,
        num_workers: int,
        noise: float = 0.0,
        seed: int = 0,
        prefetch: int = 2,
        *,
        loader_cost: float = 0.0,
        noise_kind: str = "lognormal",
        change_at_step: int | None = None,
        change: Mapping[str, float] | None = None,
        cores: int | None = None,
        device_extra: Callable[[int], float] | None = None,
        stamp_cpu: bool = True,
        stamp_prep: bool = True,
        report_ratio: bool = True,
    ) -> None:
        if noise_kind not in ("lognormal", "gaussian"):
            raise ValueError(
                f"`noise_kind` must be one of ('lognormal', 'gaussian'), got {noise_kind!r}"
            )
        if batch_size < 1 or num_workers < 0 or prefetch < 1:
            raise ValueError("`batch_size` and `prefetch` must be >= 1, `num_workers` >= 0")
        self.costs = PipelineCosts(cpu_cost, device_cost, compute_time, loader_cost)
        self.changed_costs = replace(self.costs, **dict(change or {}))
        self.change_at_step = change_at_step
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.noise = noise
        self.noise_kind = noise_kind
        self.stamp_cpu = stamp_cpu
        self.stamp_prep = stamp_prep
        self.device_extra = device_extra
        self.cores = cores
        self.slowdown = max(num_workers / cores, 1.0) if cores else 1.0
        self.report_ratio = report_ratio
        self._rng = random.Random(seed)
        self._t = 0.0  # main-process clock
        self._steps = 0
        self._issued = 0
        self._worker_free = [0.0] * max(num_workers, 1)
        self._queue: deque[_Batch] = deque()

    # ------------------------------------------------------------------ analytic helpers
    def costs_at(self, step: int) -> PipelineCosts:
        changed = self.change_at_step is not None and step >= self.change_at_step
        return self.changed_costs if changed else self.costs

    def n_device(self, ratio: float) -> int:
        """Samples routed to the device for a ratio (the router rounds to the nearest)."""
        return int(math.floor(ratio * self.batch_size + 0.5))

    def throughput(
        self, ratio: float, *, changed: bool = False, workers: int | None = None
    ) -> float:
        """Noise-free steady-state samples/s at a fixed ratio (before or after the change),
        with ``workers`` workers (default: the current count)."""
        c = self.changed_costs if changed else self.costs
        w = self.num_workers if workers is None else workers
        nd = self.n_device(ratio)
        work = (self.batch_size - nd) * c.cpu_cost + self.batch_size * c.loader_cost
        loader = work * self._slowdown(w) / max(w, 1)
        device = c.compute_time + nd * c.device_cost + self._extra(nd)
        step = loader + device if w == 0 else max(loader, device)
        return self.batch_size / step

    def best_fixed(
        self,
        ratios: Iterable[float] = GRID,
        *,
        changed: bool = False,
        workers: int | None = None,
    ) -> tuple[float, float]:
        """The best fixed ratio on a grid and its throughput."""
        return max(
            ((r, self.throughput(r, changed=changed, workers=workers)) for r in ratios),
            key=lambda p: p[1],
        )

    def sample_grid(self) -> list[float]:
        """Every share the router can realise: whole numbers of device samples."""
        return [i / self.batch_size for i in range(self.batch_size + 1)]

    def fewest_workers(
        self, tolerance: float, *, changed: bool = False, most: int | None = None
    ) -> int:
        """The fewest workers (>= 1) whose best fixed ratio stays within ``tolerance`` of the
        best throughput with ``most`` workers (default: the current count)."""
        most = self.num_workers if most is None else most
        grid = self.sample_grid()
        best = self.best_fixed(grid, changed=changed, workers=most)[1]
        ok = [
            w
            for w in range(1, most + 1)
            if self.best_fixed(grid, changed=changed, workers=w)[1] >= (1.0 - tolerance) * best
        ]
        return min(ok) if ok else most

    # ------------------------------------------------------------------ simulation
    def _slowdown(self, workers: int) -> float:
        return max(workers / self.cores, 1.0) if self.cores else 1.0

    def new_epoch(self, num_workers: int | None = None) -> None:
        """An epoch boundary: nothing is in flight (the sampler ran out), and the DataLoader
        may be rebuilt with ``num_workers`` workers; the next step waits for a fresh batch."""
        if num_workers is not None:
            if num_workers < 0:
                raise ValueError(f"`num_workers` must be >= 0, got {num_workers!r}")
            self.num_workers = num_workers
            self.slowdown = self._slowdown(num_workers)
        self._queue.clear()
        self._issued = 0
        self._worker_free = [self._t] * max(self.num_workers, 1)

    def _extra(self, n_device: int) -> float:
        return self.device_extra(n_device) if self.device_extra else 0.0

    def _draw(self, mean: float) -> float:
        if self.noise <= 0 or mean <= 0:
            return mean
        if self.noise_kind == "gaussian":
            return mean * max(self._rng.gauss(1.0, self.noise), 0.05)
        s = math.sqrt(math.log1p(self.noise**2))  # lognormal with mean 1 and CV = noise
        return mean * math.exp(self._rng.gauss(-s * s / 2, s))

    def _issue(self, ratio: float, now: float) -> None:
        c = self.costs_at(self._steps)
        nd = self.n_device(ratio)
        aug = self._draw((self.batch_size - nd) * c.cpu_cost)
        prep = self._draw(self.batch_size * c.loader_cost)
        k = self._issued % self.num_workers
        ready = max(now, self._worker_free[k]) + (prep + aug) * self.slowdown
        self._worker_free[k] = ready
        self._queue.append(_Batch(ratio, nd, ready, aug, prep))
        self._issued += 1

    def step(self, ratio: float) -> StepStats:
        """Run one training step with the router at ``ratio``."""
        if self.num_workers == 0:  # loading runs in the main process: the wait is the load
            c = self.costs_at(self._steps)
            nd = self.n_device(ratio)
            aug = self._draw((self.batch_size - nd) * c.cpu_cost)
            prep = self._draw(self.batch_size * c.loader_cost)
            b = _Batch(ratio, nd, self._t, aug, prep)
            wait = aug + prep
        else:
            while len(self._queue) < self.prefetch * self.num_workers:
                self._issue(ratio, self._t)
            b = self._queue.popleft()
            wait = max(b.ready - self._t, 0.0)
            # The DataLoader hands out the next indices as it returns a batch.
            self._issue(ratio, self._t + wait)
        c = self.costs_at(self._steps)
        dev_aug = self._draw(b.n_device * c.device_cost)
        compute = self._draw(c.compute_time) + self._extra(b.n_device)
        step_s = wait + dev_aug + compute
        self._t += step_s
        self._steps += 1
        return StepStats(
            batch_size=self.batch_size,
            n_device=b.n_device,
            data_wait_s=wait,
            step_s=step_s,
            device_aug_s=dev_aug,
            cpu_aug_s=b.cpu_aug_s if self.stamp_cpu else None,
            prep_s=b.prep_s if self.stamp_prep else None,
            num_workers=self.num_workers,
            ratio=b.ratio if self.report_ratio else None,
        )

    @property
    def steps(self) -> int:
        return self._steps


def run_controller(
    controller: Controller,
    pipeline: SimulatedPipeline,
    steps_per_decision: int,
    n_decisions: int,
) -> list[TraceEntry]:
    """Drive ``controller`` on ``pipeline``: observe each step, decide every window."""
    trace = []
    for _ in range(n_decisions):
        ratio = controller.ratio
        samples, seconds = 0, 0.0
        for _ in range(steps_per_decision):
            stats = pipeline.step(controller.ratio)
            controller.observe(stats)
            samples += stats.batch_size
            seconds += stats.step_s
        trace.append(TraceEntry(ratio, samples / seconds, controller.decide()))
    return trace


@dataclass
class EpochTrace:
    """One epoch: the workers it ran with, its decision windows and the worker decision
    taken at its end (``None``: the count stays)."""

    workers: int
    windows: list[TraceEntry]
    worker_decision: Decision | None

    @property
    def ratio(self) -> float:
        """The share in effect at the end of the epoch (the last window's decision)."""
        return self.windows[-1].decision.ratio


def run_epochs(
    controller: Controller,
    pipeline: SimulatedPipeline,
    steps_per_decision: int,
    decisions_per_epoch: int,
    epochs: int,
) -> list[EpochTrace]:
    """Drive ``controller`` over epochs of ``decisions_per_epoch`` windows, as the front ends
    do: configure the workers once, decide every window, call :meth:`Controller.end_epoch` at
    each epoch boundary and rebuild the loader with the controller's worker count."""
    controller.configure_workers(pipeline.num_workers)
    out = []
    for _ in range(epochs):
        workers = pipeline.num_workers
        windows = run_controller(controller, pipeline, steps_per_decision, decisions_per_epoch)
        decision = controller.end_epoch()
        out.append(EpochTrace(workers, windows, decision))
        nxt = controller.workers
        pipeline.new_epoch(nxt if nxt is not None and nxt != workers else None)
    return out
