"""The controller's options: one frozen dataclass, checked when it is built.

A bad value raises a :class:`ValueError` that names the argument, says what is allowed and
echoes what was given (the front ends turn it into a ``ConfigError`` for ``controller_kwargs``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODES", "OBJECTIVES", "ControllerOptions"]

MODES = ("auto", "off", "gpu", "fixed")
OBJECTIVES = ("throughput", "cpu")


@dataclass(frozen=True)
class ControllerOptions:
    """How the controller chooses the device share (see :class:`~ff_lightning.control.
    controller.Controller` for each field)."""

    mode: str = "auto"
    ratio: float | None = None
    min_ratio: float = 0.0
    max_ratio: float = 1.0
    hysteresis: float = 0.02
    step: float = 0.1
    min_step: float = 0.01
    warmup_steps: int | None = None
    quantum: float | None = None
    regime_tol: float = 0.1
    min_steps: int = 3
    max_window: int = 4096
    objective: str = "throughput"
    tolerance: float = 0.03

    def __post_init__(self) -> None:
        mode, ratio = self.mode, self.ratio
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if mode == "fixed":
            if ratio is None:
                raise ValueError("`ratio` is required when mode='fixed'")
            if not 0.0 <= float(ratio) <= 1.0:
                raise ValueError(f"`ratio` must be in [0, 1], got {ratio!r}")
        elif ratio is not None:
            raise ValueError(f"`ratio` is only used when mode='fixed', got mode={mode!r}")
        for name, val in (("min_ratio", self.min_ratio), ("max_ratio", self.max_ratio)):
            if not 0.0 <= val <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {val!r}")
        if self.min_ratio > self.max_ratio:
            raise ValueError(
                f"`min_ratio` must not exceed `max_ratio`, got {self.min_ratio} > {self.max_ratio}"
            )
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"`hysteresis` must be in [0, 1), got {self.hysteresis!r}")
        if not 0.0 < self.step <= 1.0:
            raise ValueError(f"`step` must be in (0, 1], got {self.step!r}")
        if not 0.0 < self.min_step <= self.step:
            raise ValueError(f"`min_step` must be in (0, step={self.step}], got {self.min_step!r}")
        warmup = self.warmup_steps
        if warmup is not None and (not isinstance(warmup, int) or warmup < 0):
            raise ValueError(f"`warmup_steps` must be None or a non-negative int, got {warmup!r}")
        if self.quantum is not None and not 0.0 < self.quantum <= 1.0:
            raise ValueError(f"`quantum` must be None or in (0, 1], got {self.quantum!r}")
        if not 0.0 < self.regime_tol < 1.0:
            raise ValueError(f"`regime_tol` must be in (0, 1), got {self.regime_tol!r}")
        if not isinstance(self.min_steps, int) or self.min_steps < 1:
            raise ValueError(f"`min_steps` must be a positive int, got {self.min_steps!r}")
        if not isinstance(self.max_window, int) or self.max_window < self.min_steps:
            raise ValueError(f"`max_window` must be an int >= `min_steps`, got {self.max_window!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "cpu" and mode != "auto":
            raise ValueError(
                "`objective='cpu'` needs mode='auto' (it moves the workers' share to the "
                f"device), got mode={mode!r}"
            )
        tol = self.tolerance
        if isinstance(tol, bool) or not 0.0 <= tol < 1.0:
            raise ValueError(f"`tolerance` must be in [0, 1), got {tol!r}")

    @property
    def fixed_ratio(self) -> float:
        """The share of the fixed modes (``off``: 0, ``gpu``: 1, ``fixed``: ``ratio``)."""
        return {"off": 0.0, "gpu": 1.0, "fixed": float(self.ratio or 0.0)}.get(self.mode, 0.0)
