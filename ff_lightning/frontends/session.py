"""The driver shared by the front ends of the controller, the Lightning ``FusionFlow`` callback
and the ``FusionAccelerate`` adapter: the per-step ``fusionflow/*`` metrics and
:class:`FusionSession`, which connects one controller to one
:class:`~ff_lightning.pipeline.Pipeline`. The front ends only tick the clock, log and talk to
other ranks. Their options (and the controller built from them) are
:class:`~ff_lightning.frontends.options.FusionOptions`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.control.controller import Controller, Decision
from ff_lightning.pipeline.batch import StepStats
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.device.probes import make_probe

__all__ = ["FusionSession", "step_metrics"]

log = logging.getLogger("ff_lightning")

_DEFAULT_RESERVE_MB = 1024.0  # PipelineOptions' default


def step_metrics(
    ratio: float,
    stats: StepStats,
    guard: Any,
    workers: int | None = None,
    decode_fallbacks: int | None = None,
    augment_guards: Sequence[Any] | None = None,
) -> dict[str, float]:
    """The per-step ``fusionflow/*`` metrics (times in ms, memory in MiB) of one measured step;
    ``fusionflow/workers`` when the controller chooses the worker count (``workers``) and
    ``fusionflow/decode_fallbacks`` when the device decodes (``decode_fallbacks``). The memory
    figures come from ``guard``'s probe; the out-of-memory and fallback counts add up
    ``augment_guards`` (every view group's; default: ``guard`` alone)."""
    metrics = {
        "fusionflow/ratio": ratio,
        "fusionflow/data_wait_ms": stats.data_wait_s * 1e3,
        "fusionflow/step_ms": stats.step_s * 1e3,
        "fusionflow/aug_ms": stats.device_aug_s * 1e3,
        "fusionflow/worker_aug_ms": (stats.cpu_aug_s or 0.0) * 1e3,
        "fusionflow/device_samples": float(stats.n_device),
        "fusionflow/h2d_ms": (stats.h2d_s or 0.0) * 1e3,
    }
    if workers is not None:
        metrics["fusionflow/workers"] = float(workers)
    if decode_fallbacks is not None:
        metrics["fusionflow/decode_fallbacks"] = float(decode_fallbacks)
    if guard is not None:
        probe = guard.probe
        if getattr(probe, "available", False):
            mb = 1 / (1024 * 1024)
            free = probe.free_bytes()
            if free is not None:
                metrics["fusionflow/gpu_free_mb"] = free * mb
            metrics["fusionflow/reserved_mb"] = probe.reserved_bytes() * mb
            metrics["fusionflow/allocated_mb"] = probe.allocated_bytes() * mb
            metrics["fusionflow/peak_allocated_mb"] = probe.peak_allocated_bytes() * mb
        counted = list(augment_guards) if augment_guards else [guard]
        metrics["fusionflow/oom_events"] = float(sum(getattr(g, "oom_events", 0) for g in counted))
        metrics["fusionflow/cpu_fallback_samples"] = float(
            sum(getattr(g, "cpu_fallback_samples", 0) for g in counted)
        )
    return metrics


TensorFn = Callable[[Tensor], Tensor]


class FusionSession:
    """The front-end-independent driver of one controller over one pipeline.

    The Lightning callback and the Accelerate adapter differ only in where their clock ticks
    and how they talk to other ranks; the rest lives here: attaching the memory guard, feeding
    the device stage's finished step records to the controller, applying memory caps at once,
    and taking decisions that every rank takes alike.

    Cross-rank reductions are passed in as tensor functions (``all_mean``, ``all_min``) so the
    session needs neither a Trainer nor an Accelerator; ``None`` means one process.
    """

    def __init__(
        self,
        controller: Controller,
        *,
        interval: str,
        every_n_steps: int,
        reserve_mb: float | None,
        probe: Any = None,
        nvml_module: Any = None,
    ) -> None:
        self.controller = controller
        self.interval = interval
        self.every_n_steps = every_n_steps
        self.reserve_mb = reserve_mb
        self._probe = probe
        self._nvml_module = nvml_module
        self.pipeline: Any = None
        self.guard: MemoryGuard | None = None
        self.prev_end: float | None = None
        self.steps_since_decision = 0
        self.agreed_cap: float | None = None  # several ranks: the smallest cap any rank hit

    @property
    def ratio(self) -> float:
        return float(self.controller.ratio)

    def augment_guards(self) -> list[Any]:
        """The attached pipeline's augmentation guards (all view groups'), for the metrics."""
        if self.pipeline is None:
            return [self.guard] if self.guard is not None else []
        return list(self.pipeline.stage.augment_guards())

    def attach(self, pipeline: Any, device: torch.device) -> str | None:
        """Give ``pipeline``'s device stage a memory guard for ``device``; route with the
        controller.

        From here on the pipeline's router reads the share from the controller, its owner.
        Returns the probe's note (which probe, or why NVML fell back) for the caller to log.
        """
        note = None
        probe = self._probe
        if probe is None:
            probe, note = make_probe(device, nvml_module=self._nvml_module, logger=log)
        self.pipeline = pipeline
        self.guard = MemoryGuard(probe, reserve_mb=self._reserve_mb(pipeline), logger=log)
        pipeline.stage.guard = self.guard
        pipeline.bind(self.controller)
        workers = int(pipeline.num_workers)
        if self.controller.warmup_steps is None:
            # Batches already prefetched carry the old split: skip them after each change.
            depth = workers * pipeline.options.prefetch_factor if workers > 0 else 0
            self.controller.warmup_steps = depth + 1
        self._check_interval()
        # The CPU objective searches below the configured count (a restored state continues).
        self.controller.configure_workers(workers)
        self.apply_workers()
        return note

    def _reserve_mb(self, pipeline: Any) -> float:
        """The front end's ``reserve_mb`` when given, else the pipeline's; a given one that
        replaces a pipeline value other than the default is said in a warning."""
        own = float(pipeline.options.reserve_mb)
        if self.reserve_mb is None:
            return own
        mine = float(self.reserve_mb)
        if mine != own and own != _DEFAULT_RESERVE_MB:
            warnings.warn(
                f"FusionFlow: `reserve_mb`={mine:g} replaces the DataModule's reserve_mb={own:g}; "
                "set it in one place",
                UserWarning,
                stacklevel=3,
            )
        return mine

    def _check_interval(self) -> None:
        """A step interval shorter than the warm-up (plus the steps a decision needs) would
        measure nothing after a change: every window would end in "hold: 0 steps measured"."""
        ctl = self.controller
        if self.interval != "steps" or ctl.mode != "auto":
            return
        need = int(ctl.warmup_steps or 0) + ctl.min_steps
        if self.every_n_steps < need:
            warnings.warn(
                f"FusionFlow: `every_n_steps`={self.every_n_steps} is shorter than the warm-up "
                f"after each change ({ctl.warmup_steps} steps) plus the {ctl.min_steps} measured "
                f"steps a decision needs; raised to {need} (set every_n_steps >= {need}, or "
                "lower `warmup_steps`)",
                UserWarning,
                stacklevel=3,
            )
            self.every_n_steps = need

    @property
    def active_workers(self) -> int:
        """Worker processes of the training loader the pipeline builds next."""
        return int(self.pipeline.train_workers)

    def apply_workers(self) -> bool:
        """Give the pipeline the controller's worker count (CPU objective); returns whether
        it changed, i.e. whether the front end must rebuild the training loader."""
        n = self.controller.workers
        if n is None or self.pipeline is None or n == self.active_workers:
            return False
        self.pipeline.set_num_workers(n)
        return True

    def end_epoch(self) -> Decision | None:
        """At an epoch boundary, after that epoch's decision: the CPU objective's worker
        decision (``None``: the count stays). When it changes the count, the DataModule builds
        the next training loader with it; the front end rebuilds the loader before the next
        epoch. Every rank takes the same decision (it reads only reduced statistics)."""
        decision = self.controller.end_epoch()
        if decision is not None:
            self.apply_workers()
        return decision

    def end_step(self, now: float, *, optimizer_step: bool = True) -> StepStats | None:
        """Close the step that ended at ``now``.

        The device stage hands over the batch's finished record (data wait, step time, device
        time); it goes to the controller, a memory cap applies at once, and, when the batch
        ended with an optimizer step (``optimizer_step``; not the first batches of a gradient
        accumulation window), it counts towards the next step-interval decision. Returns the record when the step was measured, ``None`` for
        the first step after a clock reset (its wait includes worker start-up or validation).
        """
        stage = self.pipeline.stage
        measured = stage.close_step(self.prev_end, now, self.active_workers)
        if measured is not None:
            self.controller.observe(measured)
        self.prev_end = now
        # The augmentation's and the decode's guards: either running out caps the share.
        cap = stage.ratio_cap if self.guard is not None else None
        if self.agreed_cap is not None:
            # Never rise above the cap all ranks agreed on, or the ranks would drift apart.
            cap = self.agreed_cap if cap is None else min(cap, self.agreed_cap)
        if cap is not None and cap != self.controller.memory_cap:
            # Takes effect for the next batch the sampler emits (the router reads the
            # controller's capped share), not at the next decision: until then every
            # device-routed batch would run out of memory again.
            self.controller.set_memory_cap(cap)
        if optimizer_step:
            self.steps_since_decision += 1
        return measured

    @property
    def decode_fallbacks(self) -> int | None:
        """Device-decode samples decoded on the CPU instead (``None`` when decode is off)."""
        stage = getattr(self.pipeline, "stage", None)
        if stage is None or not getattr(stage, "device_decode", False):
            return None
        return int(stage.decode_fallbacks)

    @property
    def step_decision_due(self) -> bool:
        return self.interval == "steps" and self.steps_since_decision >= self.every_n_steps

    def agree_on_memory_cap(self, all_min: TensorFn | None, device: torch.device) -> None:
        """Every rank takes the smallest memory cap any rank hit.

        Between decisions each rank applies its own cap at once (its memory is what ran out);
        at a decision all ranks adopt the minimum so that they route alike again.
        """
        if all_min is None:
            return
        local = self.controller.memory_cap
        shared = float(
            all_min(torch.tensor([float(local)], dtype=torch.float64, device=device)).item()
        )
        if shared < 1.0:
            self.agreed_cap = shared
        if shared < local:
            self.controller.set_memory_cap(shared)

    @staticmethod
    def mean_reduce(
        all_mean: TensorFn | None, device: torch.device
    ) -> Callable[[dict[str, float]], dict[str, float]] | None:
        """The controller's ``reduce`` hook: average a dict of statistics across ranks."""
        if all_mean is None:
            return None

        def reduce(values: dict[str, float]) -> dict[str, float]:
            keys = sorted(values)
            t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
            return {k: float(v) for k, v in zip(keys, all_mean(t).tolist(), strict=True)}

        return reduce

    def decide(
        self, all_mean: TensorFn | None = None, all_min: TensorFn | None = None, device: Any = "cpu"
    ) -> Decision:
        """Take a decision every rank takes alike and route the next batches with it."""
        device = torch.device(device)
        self.steps_since_decision = 0
        self.agree_on_memory_cap(all_min, device)
        return self.controller.decide(reduce=self.mean_reduce(all_mean, device))
