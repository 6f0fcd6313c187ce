"""Pieces shared by the two front ends of the controller: the Lightning ``FusionFlow``
callback and the ``FusionAccelerate`` adapter (argument checks, controller construction and
the per-step ``fusionflow/*`` metrics), so both validate and log identically."""

from __future__ import annotations

from typing import Any

from ff_lightning.errors import ConfigError
from ff_lightning.fusion.controller import MODES, Controller

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
        try:
            ok = 0.0 <= float(ratio) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"`ratio` must be in [0, 1], got {ratio!r}")
    return str(mode)


def build_controller(
    mode: str,
    ratio: float | None,
    warmup_steps: int | None,
    controller_kwargs: dict[str, Any] | None,
) -> Controller:
    """A :class:`Controller` for validated front-end arguments; bad extras become ``ConfigError``."""
    kwargs = dict(controller_kwargs or {})
    if warmup_steps is not None:
        kwargs.setdefault("warmup_steps", warmup_steps)
    try:
        return Controller(mode, None if ratio is None else float(ratio), **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`controller_kwargs`: {err}") from None


def step_metrics(
    ratio: float, wait: float, step_s: float, aug_s: float, rec: Any, guard: Any
) -> dict[str, float]:
    """The per-step ``fusionflow/*`` metrics (times in ms, memory in MiB)."""
    metrics = {
        "fusionflow/ratio": ratio,
        "fusionflow/data_wait_ms": wait * 1e3,
        "fusionflow/step_ms": step_s * 1e3,
        "fusionflow/aug_ms": aug_s * 1e3,
        "fusionflow/worker_aug_ms": rec.cpu_aug_s * 1e3,
        "fusionflow/device_samples": float(rec.n_device),
        "fusionflow/h2d_ms": rec.h2d_s * 1e3,
    }
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
