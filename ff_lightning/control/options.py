"""The controller's arguments: one check of everything :class:`~ff_lightning.control.controller.
Controller` accepts, raising a :class:`ValueError` that names the argument, says what is allowed
and echoes what was given."""

from __future__ import annotations

from ff_lightning.control.records import MODES
from ff_lightning.control.workers import OBJECTIVES

__all__ = ["check_controller_args"]


def check_controller_args(
    mode: str,
    ratio: float | None,
    *,
    min_ratio: float,
    max_ratio: float,
    hysteresis: float,
    step: float,
    min_step: float,
    warmup_steps: int | None,
    quantum: float | None,
    regime_tol: float,
    min_steps: int,
    max_window: int,
    objective: str,
    tolerance: float,
) -> None:
    """Raise :class:`ValueError` unless the arguments of ``Controller(...)`` are valid."""
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
        raise ValueError(f"`min_ratio` must not exceed `max_ratio`, got {min_ratio} > {max_ratio}")
    if not 0.0 <= hysteresis < 1.0:
        raise ValueError(f"`hysteresis` must be in [0, 1), got {hysteresis!r}")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"`step` must be in (0, 1], got {step!r}")
    if not 0.0 < min_step <= step:
        raise ValueError(f"`min_step` must be in (0, step={step}], got {min_step!r}")
    if warmup_steps is not None and (not isinstance(warmup_steps, int) or warmup_steps < 0):
        raise ValueError(f"`warmup_steps` must be None or a non-negative int, got {warmup_steps!r}")
    if quantum is not None and not 0.0 < quantum <= 1.0:
        raise ValueError(f"`quantum` must be None or in (0, 1], got {quantum!r}")
    if not 0.0 < regime_tol < 1.0:
        raise ValueError(f"`regime_tol` must be in (0, 1), got {regime_tol!r}")
    if not isinstance(min_steps, int) or min_steps < 1:
        raise ValueError(f"`min_steps` must be a positive int, got {min_steps!r}")
    if not isinstance(max_window, int) or max_window < min_steps:
        raise ValueError(f"`max_window` must be an int >= `min_steps`, got {max_window!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "cpu" and mode != "auto":
        raise ValueError(
            f"`objective='cpu'` needs mode='auto' (it moves the workers' share to the device), "
            f"got mode={mode!r}"
        )
    if isinstance(tolerance, bool) or not 0.0 <= tolerance < 1.0:
        raise ValueError(f"`tolerance` must be in [0, 1), got {tolerance!r}")
