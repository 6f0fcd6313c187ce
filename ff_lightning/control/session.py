"""Pieces shared by the two front ends of the controller, the Lightning ``FusionFlow`` callback
and the ``FusionAccelerate`` adapter: argument checks, controller construction, the per-step
``fusionflow/*`` metrics and :class:`FusionSession`, which drives the controller. The front
ends only tick the clock, log and talk to other ranks."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ff_lightning.control.controller import MODES, OBJECTIVES, Controller, Decision, StepStats
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.device.probes import make_probe
from ff_lightning.validation import check_choice, check_float

log = logging.getLogger("ff_lightning")

INTERVALS = ("epoch", "steps")


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"`{name}` must be an integer >= {low}, got {value!r}")
    return value


def check_fusion_args(
    mode: Any,
    ratio: Any,
    *,
    interval: str,
    every_n_steps: Any,
    log_every_n_steps: Any,
    reserve_mb: Any,
    warmup_steps: Any,
    example: str,
    objective: Any = "throughput",
    tolerance: Any = 0.03,
) -> str:
    """Validate the shared front-end arguments; returns ``mode`` (``False`` read as ``"off"``).

    ``example`` is a call shown in the error for a missing ``ratio``, e.g.
    ``"FusionFlow(mode='fixed', ratio=0.3)"``.
    """
    if mode is False:
        mode = "off"  # YAML 1.1 (and so Hydra) reads an unquoted `off` as false
    if mode not in MODES:
        raise ConfigError(f"`mode` must be one of {MODES}, got {mode!r}")
    if interval not in INTERVALS:
        raise ConfigError(f"`interval` must be one of {INTERVALS}, got {interval!r}")
    _check_int("every_n_steps", every_n_steps, 1)
    _check_int("log_every_n_steps", log_every_n_steps, 1)
    if warmup_steps is not None:
        _check_int("warmup_steps", warmup_steps, 0)
    if not isinstance(reserve_mb, (int, float)) or isinstance(reserve_mb, bool) or reserve_mb < 0:
        raise ConfigError(f"`reserve_mb` must be >= 0 MiB, got {reserve_mb!r}")
    if mode == "fixed" and ratio is None:
        raise ConfigError(f"`ratio` is required when mode='fixed', e.g. {example}")
    if mode != "fixed" and ratio is not None:
        raise ConfigError(
            f"`ratio` is only used when mode='fixed', got mode={mode!r} with ratio={ratio!r}; "
            "drop `ratio` or use mode='fixed'"
        )
    if ratio is not None:
        check_float("ratio", ratio)  # a number: the string "0.5" is a config slip, not 0.5
        if not 0.0 <= float(ratio) <= 1.0:
            raise ConfigError(f"`ratio` must be in [0, 1], got {ratio!r}")
    check_choice("objective", objective, OBJECTIVES)
    if objective == "cpu" and mode != "auto":
        raise ConfigError(
            f"`objective='cpu'` needs mode='auto' (it moves the work of the workers it saves to "
            f"the device), got mode={mode!r}"
        )
    check_float("tolerance", tolerance, 0.0, 1.0, high_open=True)
    return str(mode)


def build_controller(
    mode: str,
    ratio: float | None,
    warmup_steps: int | None,
    controller_kwargs: dict[str, Any] | None,
    *,
    objective: str = "throughput",
    tolerance: float = 0.03,
) -> Controller:
    """A :class:`Controller` for validated front-end arguments; bad extras become ``ConfigError``."""
    kwargs = dict(controller_kwargs or {})
    if warmup_steps is not None:
        kwargs.setdefault("warmup_steps", warmup_steps)
    kwargs.setdefault("objective", objective)
    kwargs.setdefault("tolerance", float(tolerance))
    try:
        return Controller(mode, None if ratio is None else float(ratio), **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`controller_kwargs`: {err}") from None


def step_metrics(
    ratio: float,
    stats: StepStats,
    guard: Any,
    workers: int | None = None,
    decode_fallbacks: int | None = None,
) -> dict[str, float]:
    """The per-step ``fusionflow/*`` metrics (times in ms, memory in MiB) of one measured step;
    ``fusionflow/workers`` when the controller chooses the worker count (``workers``) and
    ``fusionflow/decode_fallbacks`` when the device decodes (``decode_fallbacks``)."""
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
        metrics["fusionflow/oom_events"] = float(getattr(guard, "oom_events", 0))
        metrics["fusionflow/cpu_fallback_samples"] = float(
            getattr(guard, "cpu_fallback_samples", 0)
        )
    return metrics


TensorFn = Callable[[Tensor], Tensor]


class FusionSession:
    """The front-end-independent driver of one controller over one ``FusionDataModule``.

    The Lightning callback and the Accelerate adapter differ only in where their clock ticks
    and how they talk to other ranks; the rest lives here: attaching the memory guard, turning
    the DataModule's records into :class:`StepStats`, applying memory caps at once, and taking
    decisions that every rank takes alike.

    Cross-rank reductions are passed in as tensor functions (``all_mean``, ``all_min``) so the
    session needs neither a Trainer nor an Accelerator; ``None`` means one process.
    """

    def __init__(
        self,
        controller: Controller,
        *,
        interval: str,
        every_n_steps: int,
        reserve_mb: float,
        probe: Any = None,
        nvml_module: Any = None,
    ) -> None:
        self.controller = controller
        self.interval = interval
        self.every_n_steps = every_n_steps
        self.reserve_mb = reserve_mb
        self._probe = probe
        self._nvml_module = nvml_module
        self.dm: Any = None
        self.guard: MemoryGuard | None = None
        self.prev_end: float | None = None
        self.steps_since_decision = 0
        self.agreed_cap: float | None = None  # several ranks: the smallest cap any rank hit

    @property
    def ratio(self) -> float:
        return float(self.controller.ratio)

    def attach(self, dm: Any, device: torch.device) -> str | None:
        """Give ``dm``'s device stage a memory guard for ``device``; route with the controller.

        From here on the DataModule's router reads the share from the controller, its owner.
        Returns the probe's note (which probe, or why NVML fell back) for the caller to log.
        """
        note = None
        probe = self._probe
        if probe is None:
            probe, note = make_probe(device, nvml_module=self._nvml_module, logger=log)
        self.dm = dm
        self.guard = MemoryGuard(probe, reserve_mb=self.reserve_mb, logger=log)
        dm.device_stage.guard = self.guard
        dm.router.bind(self.controller)
        if self.controller.warmup_steps is None:
            # Batches already prefetched carry the old split: skip them after each change.
            depth = dm.num_workers * dm.prefetch_factor if dm.num_workers > 0 else 0
            self.controller.warmup_steps = depth + 1
        self._check_interval()
        # The CPU objective searches below the configured count (a restored state continues).
        self.controller.configure_workers(int(dm.num_workers))
        self.apply_workers()
        return note

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
        """Worker processes of the training loader the DataModule builds next."""
        dm = self.dm
        return int(getattr(dm, "train_workers", dm.num_workers))

    def apply_workers(self) -> bool:
        """Give the DataModule the controller's worker count (CPU objective); returns whether
        it changed, i.e. whether the front end must rebuild the training loader."""
        n = self.controller.workers
        if n is None or self.dm is None or n == self.active_workers:
            return False
        self.dm.set_num_workers(n)
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

    def end_step(self, now: float) -> StepStats | None:
        """Close the step that ended at ``now``.

        Completes the batch's record (data wait, step time, device time), feeds it to the
        controller, applies a memory cap at once and counts towards the next decision. Returns
        the record when the step was measured, ``None`` for the first step after a clock reset
        (its wait includes worker start-up or validation).
        """
        stage = self.dm.device_stage
        stats = stage.last
        # Device augmentation regions that have finished (CUDA: polled, never synchronised).
        device_aug_s = sum(stage.timer.collect())
        measured = None
        if self.prev_end is not None and stats is not None and stage.ready_at is not None:
            stats.data_wait_s = max(0.0, stage.ready_at - self.prev_end)
            stats.step_s = now - self.prev_end
            stats.device_aug_s = device_aug_s
            stats.num_workers = self.active_workers
            self.controller.observe(stats)
            measured = stats
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
        self.steps_since_decision += 1
        return measured

    @property
    def decode_fallbacks(self) -> int | None:
        """Device-decode samples decoded on the CPU instead (``None`` when decode is off)."""
        stage = getattr(self.dm, "device_stage", None)
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
