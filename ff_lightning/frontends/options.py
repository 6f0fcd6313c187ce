"""The controller front ends' options: one dataclass for ``FusionFlow`` and ``FusionAccelerate``.

:class:`FusionOptions` is checked once, when it is built; its errors are the
:class:`~ff_lightning.errors.ConfigError` users see, naming the argument, what is allowed and
what was given. :meth:`FusionOptions.controller` builds the controller from it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ff_lightning.control.controller import MODES, OBJECTIVES, Controller
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_choice, check_float, check_int

__all__ = ["INTERVALS", "FusionOptions"]

INTERVALS = ("epoch", "steps")


@dataclass(frozen=True)
class FusionOptions:
    """How a front end drives the controller.

    Attributes:
        mode: ``"auto"`` (the controller picks the share), ``"off"`` (CPU workers only),
            ``"gpu"`` (all policy augmentation on the device) or ``"fixed"`` (``ratio``).
        ratio: the device share for ``mode="fixed"`` (required there, rejected elsewhere).
        objective: ``"throughput"`` (the fastest share for the configured workers) or ``"cpu"``
            (``mode="auto"``): then, one worker at a time at epoch ends, the fewest DataLoader
            workers whose throughput stays within ``tolerance`` of the best.
        tolerance: throughput loss the ``"cpu"`` objective accepts to save workers (0.03: 3%).
        interval: decide every ``"epoch"`` (default) or every ``every_n_steps`` ``"steps"``.
        every_n_steps: steps between decisions when ``interval="steps"``.
        reserve_mb: device memory (MiB) the memory guard leaves free for training (``None``:
            the pipeline's ``reserve_mb``).
        log_every_n_steps: how often the per-step ``fusionflow/*`` metrics are logged.
        warmup_steps: steps ignored after each change of share (``None``: the loader's
            prefetch depth plus one, since batches already in flight carry the old split).
        probe: a memory probe to use instead of NVML/allocator detection (tests, custom
            devices); see :mod:`ff_lightning.pipeline.device.probes`.
        nvml_module: a ``pynvml``-like module for the NVML probe (tests).
        controller_kwargs: extra arguments of the controller (``min_ratio``, ``max_ratio``,
            ``hysteresis``, ``step``, ``regime_tol``, ...).
        report: at the end of training, print the FusionFlow report and write
            ``fusionflow_report.json`` and ``fusionflow.png``.
        report_dir: where they go (default: the trainer's log directory, else the working one).
    """

    mode: str = "auto"
    ratio: float | None = None
    objective: str = "throughput"
    tolerance: float = 0.03
    interval: str = "epoch"
    every_n_steps: int = 50
    reserve_mb: float | None = None
    log_every_n_steps: int = 10
    warmup_steps: int | None = None
    probe: Any = None
    nvml_module: Any = None
    controller_kwargs: Mapping[str, Any] | None = None
    report: bool = False
    report_dir: str | None = None
    #: The call shown in the error for a missing ``ratio`` (the front end's own example).
    example: str = field(default="FusionFlow(mode='fixed', ratio=0.3)", repr=False, compare=False)

    def __post_init__(self) -> None:
        mode = self.mode
        if mode is False:
            mode = "off"  # YAML 1.1 (and so Hydra) reads an unquoted `off` as false
        if mode not in MODES:
            raise ConfigError(f"`mode` must be one of {MODES}, got {mode!r}")
        object.__setattr__(self, "mode", str(mode))
        check_choice("interval", self.interval, INTERVALS)
        check_int("every_n_steps", self.every_n_steps, 1)
        check_int("log_every_n_steps", self.log_every_n_steps, 1)
        if self.warmup_steps is not None:
            check_int("warmup_steps", self.warmup_steps, 0)
        reserve = self.reserve_mb
        if reserve is not None:
            number = isinstance(reserve, (int, float)) and not isinstance(reserve, bool)
            if number and not math.isfinite(reserve):
                raise ConfigError(f"`reserve_mb` must be a finite number of MiB, got {reserve!r}")
            if not number or reserve < 0:
                raise ConfigError(f"`reserve_mb` must be >= 0 MiB, got {reserve!r}")
        ratio = self.ratio
        if mode == "fixed" and ratio is None:
            raise ConfigError(f"`ratio` is required when mode='fixed', e.g. {self.example}")
        if mode != "fixed" and ratio is not None:
            raise ConfigError(
                f"`ratio` is only used when mode='fixed', got mode={mode!r} with "
                f"ratio={ratio!r}; drop `ratio` or use mode='fixed'"
            )
        if ratio is not None:
            check_float("ratio", ratio)  # a number: the string "0.5" is a config slip, not 0.5
            if not 0.0 <= float(ratio) <= 1.0:
                raise ConfigError(f"`ratio` must be in [0, 1], got {ratio!r}")
        check_choice("objective", self.objective, OBJECTIVES)
        if self.objective == "cpu" and mode != "auto":
            raise ConfigError(
                f"`objective='cpu'` needs mode='auto' (it moves the work of the workers it "
                f"saves to the device), got mode={mode!r}"
            )
        check_float("tolerance", self.tolerance, 0.0, 1.0, high_open=True)
        object.__setattr__(self, "report", bool(self.report))

    @classmethod
    def build(cls, owner: str, example: str, **kwargs: Any) -> FusionOptions:
        """The options given to front end ``owner`` as keywords; an unknown keyword is a
        :class:`ConfigError` naming it and the closest option."""
        names = [f.name for f in fields(cls) if f.name != "example"]
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                raise ConfigError(
                    f"`{owner}` got an unknown argument `{key}`{hint}; the options are "
                    f"{', '.join(names)}"
                )
        return cls(example=example, **kwargs)

    def controller(self) -> Controller:
        """The controller these options describe; bad ``controller_kwargs`` are a ConfigError."""
        kwargs = dict(self.controller_kwargs or {})
        if self.warmup_steps is not None:
            kwargs.setdefault("warmup_steps", self.warmup_steps)
        kwargs.setdefault("objective", self.objective)
        kwargs.setdefault("tolerance", float(self.tolerance))
        ratio = None if self.ratio is None else float(self.ratio)
        try:
            return Controller(self.mode, ratio, **kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"`controller_kwargs`: {err}") from None
