"""The arguments of :class:`~ff_lightning.frontends.accelerate.FusionAccelerate`: one check,
raising a :class:`~ff_lightning.errors.ConfigError` that names the argument and the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ff_lightning.control.session import check_fusion_args
from ff_lightning.errors import ConfigError
from ff_lightning.frontends.datamodule import FusionDataModule

__all__ = ["check_accelerate_args"]


def check_accelerate_args(
    datamodule: Any,
    mode: str,
    ratio: float | None,
    *,
    interval: str,
    every_n_steps: int,
    log_every_n_steps: int,
    reserve_mb: float,
    warmup_steps: int | None,
    objective: str,
    tolerance: float,
    log_fn: Callable[..., Any] | None,
    accelerator: Any,
) -> str:
    """Raise :class:`ConfigError` unless the adapter's arguments are valid; returns the mode as
    :func:`~ff_lightning.control.session.check_fusion_args` normalises it."""
    if not isinstance(datamodule, FusionDataModule):
        raise ConfigError(
            "FusionAccelerate needs a FusionDataModule to route augmentation, got "
            f"{type(datamodule).__name__}; wrap your datasets as `dm = FusionDataModule("
            "train_dataset, val_dataset, policy='randaugment')` and pass `FusionAccelerate(dm)`"
        )
    mode = check_fusion_args(
        mode,
        ratio,
        interval=interval,
        every_n_steps=every_n_steps,
        log_every_n_steps=log_every_n_steps,
        reserve_mb=reserve_mb,
        warmup_steps=warmup_steps,
        example="FusionAccelerate(dm, mode='fixed', ratio=0.3)",
        objective=objective,
        tolerance=tolerance,
    )
    if log_fn is not None and not callable(log_fn):
        raise ConfigError(
            f"`log_fn` must be callable as log_fn(metrics, step=...), e.g. accelerator.log, got {log_fn!r}"
        )
    if accelerator is not None and not (
        hasattr(accelerator, "device") and hasattr(accelerator, "num_processes")
    ):
        raise ConfigError(
            "`accelerator` must be an accelerate.Accelerator (or have `device`, "
            f"`num_processes` and `reduce`), got {type(accelerator).__name__}"
        )
    return mode
