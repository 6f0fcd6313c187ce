"""The controller's records: what one step measured (:class:`StepStats`) and what one
decision chose, and why (:class:`Decision`).

Plain picklable dataclasses: a :class:`StepStats` is built once per batch, filled in by each
stage the batch passes through (the worker's collate, the device stage, the front end), and
read by the controller; it crosses the DataLoader worker boundary on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["KINDS", "MODES", "Decision", "StepStats"]

MODES = ("auto", "off", "gpu", "fixed")
KINDS = ("init", "model", "explore", "revert", "hold", "best", "memory", "mode", "workers")


@dataclass
class StepStats:
    """What was measured for one training step, filled in stage by stage.

    The worker's collate sets ``batch_size``, ``cpu_aug_s``, ``prep_s`` and ``ratio``; the
    device stage sets ``n_device``, ``device_aug_s`` and ``h2d_s``; the front end sets
    ``data_wait_s``, ``step_s`` and ``num_workers``. Every field has a default so the record
    can start empty; :meth:`check` validates the finished record (the controller calls it).

    Args:
        batch_size: samples in the batch.
        n_device: samples augmented on the device this step.
        data_wait_s: seconds the loop waited for the DataLoader.
        step_s: wall time of the whole step, wait included.
        device_aug_s: device augmentation time for the routed share.
        cpu_aug_s: worker CPU seconds spent augmenting this batch's CPU-routed samples, if the
            workers stamp it (``None`` otherwise; the controller then infers ``c`` from waits).
        n_cpu: samples augmented by the workers (:meth:`check` fills in
            ``batch_size - n_device`` when ``None``).
        num_workers: DataLoader workers (0: loading runs in the main process, no overlap).
        h2d_s: host-to-device copy time, if measured (reported only).
        ratio: the ratio the router used for this batch, if it reports it. It lets the
            controller skip batches routed before the last change exactly; without it a batch
            counts as routed with the current ratio when ``n_device`` is within one sample of
            ``ratio * batch_size``.
        prep_s: worker CPU seconds spent on the route-independent work of the whole batch
            (decode, crop), if stamped. With ``cpu_aug_s`` it gives the loader's sustainable
            speed and its fixed cost directly, instead of inferring them from waits.
    """

    batch_size: int = 0
    n_device: int = 0
    data_wait_s: float = 0.0
    step_s: float = 0.0
    device_aug_s: float = 0.0
    cpu_aug_s: float | None = None
    n_cpu: int | None = None
    num_workers: int = 0
    h2d_s: float | None = None
    ratio: float | None = None
    prep_s: float | None = None

    def check(self) -> StepStats:
        """Validate the finished record and fill in ``n_cpu``; returns ``self``."""
        if self.batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive, got {self.batch_size}")
        if not 0 <= self.n_device <= self.batch_size:
            raise ValueError(
                f"`n_device` must be in [0, batch_size={self.batch_size}], got {self.n_device}"
            )
        if self.step_s < 0 or self.data_wait_s < 0 or self.device_aug_s < 0:
            raise ValueError("`step_s`, `data_wait_s` and `device_aug_s` must be non-negative")
        if self.n_cpu is None:
            self.n_cpu = self.batch_size - self.n_device
        return self


@dataclass
class Decision:
    """One decision of the controller, with its reason and the numbers behind it.

    Attributes:
        ratio: share of each batch routed to the device from now on.
        reason: human-readable explanation, e.g. ``"revert: r=0.50 lost 7.2% throughput vs
            best r=0.25"``.
        kind: one of ``init, model, explore, revert, hold, best, memory, mode, workers``
            (``workers``: the CPU objective changed or settled the worker count).
        throughput: samples/s measured over the window that led to this decision (trimmed mean
            of the per-step rate, warm-up steps excluded); ``None`` when nothing was measured.
        step: size of an exploratory move (``None`` for other kinds).
        index: 0 for the initial record, then 1, 2, ... per ``Controller.decide`` call.
        prev_ratio: ratio in effect during the window.
        best_ratio, best_throughput: best measured point so far (auto mode).
        baseline_throughput: measured CPU-only (``min_ratio``) throughput (auto mode).
        model_ratio: the cost model's crossing point, when it could be fitted.
        data_wait_s: mean data wait per step over the window.
        steps: steps used for the measurement.
        workers: active DataLoader workers from this decision on (CPU objective; ``None``
            when the controller does not choose them), ``prev_workers`` before it.
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
    workers: int | None = None
    prev_workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
