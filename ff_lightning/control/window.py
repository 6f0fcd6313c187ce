"""The decision window: the steps measured since the last change, and their robust statistics.

:class:`Window` holds the most recent :class:`StepStats` (``update / summary / reset``, like
Lightning's throughput monitor); :meth:`Window.summary` returns a :class:`WindowSummary`, one
float per statistic, NaN where unknown. Across ranks the summary travels as a plain
``dict[str, float]`` (:meth:`WindowSummary.to_dict` / :meth:`WindowSummary.from_dict`).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from ff_lightning.pipeline.batch import StepStats

__all__ = ["Window", "WindowSummary", "finite"]

_TRIM = 0.2  # share trimmed from each end of noisy timings
_NAN = math.nan


def finite(x: float | None) -> bool:
    """Whether ``x`` is a known number (not ``None``, NaN or infinite)."""
    return x is not None and math.isfinite(x)


def _trimmed_mean(values: list[float], trim: float = _TRIM) -> tuple[float, float]:
    """Mean after dropping ``trim`` of the values at each end, and its standard error."""
    v = sorted(values)
    k = int(len(v) * trim)
    kept = v[k : len(v) - k] or v
    m = statistics.fmean(kept)
    se = statistics.stdev(kept) / math.sqrt(len(kept)) if len(kept) > 1 else 0.0
    return m, se


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else _NAN


@dataclass(frozen=True)
class WindowSummary:
    """Robust statistics of one window (NaN where unknown).

    Attributes:
        steps: steps in the window.
        samples_per_s: throughput, over blocks of ``num_workers`` steps (trimmed mean).
        se_rel: relative standard error of that throughput.
        step_s, wait_s: mean step time and data wait over the blocks used.
        batch_size, num_workers: medians over the window.
        routed_ratio: mean share of each batch routed to the device.
        cpu_cost, device_cost: median per-sample augmentation seconds, worker and device.
        compute_s: median step time without the wait and the device augmentation.
        h2d_s: median host-to-device copy time.
        loader_floor_s: the fastest the workers can deliver a batch, from their stamped CPU
            seconds (fixed and augmentation) over ``num_workers``.
        loader_fixed_s: the stamped route-independent part of it (decode, crop).
    """

    steps: float = _NAN
    samples_per_s: float = _NAN
    se_rel: float = _NAN
    step_s: float = _NAN
    wait_s: float = _NAN
    batch_size: float = _NAN
    num_workers: float = _NAN
    routed_ratio: float = _NAN
    cpu_cost: float = _NAN
    device_cost: float = _NAN
    compute_s: float = _NAN
    h2d_s: float = _NAN
    loader_floor_s: float = _NAN
    loader_fixed_s: float = _NAN

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> WindowSummary:
        """Build back from :meth:`to_dict`'s keys (others ignored, missing ones NaN)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names})


class Window:
    """The most recent ``max_steps`` steps measured since the last change.

    Args:
        max_steps: most recent steps kept.
    """

    def __init__(self, max_steps: int) -> None:
        self._steps: deque[StepStats] = deque(maxlen=max_steps)

    def update(self, stats: StepStats) -> None:
        """Add one (checked) step."""
        self._steps.append(stats)

    def reset(self) -> None:
        self._steps.clear()

    def __len__(self) -> int:
        return len(self._steps)

    def summary(self) -> WindowSummary:
        """Robust statistics of the steps in the window."""
        steps = list(self._steps)
        if not steps:
            return WindowSummary(steps=0.0)
        # Workers that start together deliver batches in bursts (one long wait, then W-1
        # batches at once), so per-step timings are bimodal and their median says nothing
        # about throughput. Measure over blocks of W consecutive steps (one worker round),
        # then take a trimmed mean over blocks against outliers (GC, checkpointing).
        k = max(int(_median([float(s.num_workers) for s in steps])), 1)
        blocks = [steps[i : i + k] for i in range(0, len(steps) - k + 1, k)] or [steps]
        per_sample = [sum(s.step_s for s in b) / sum(s.batch_size for s in b) for b in blocks]
        t, se = _trimmed_mean(per_sample, trim=0.1)
        used = [s for b in blocks for s in b]
        w = _median([float(s.num_workers) for s in steps])
        # The fastest the workers can deliver: the CPU seconds they stamp per batch / W.
        floor = fixed_s = _NAN
        if w >= 1 and all(s.cpu_aug_s is not None for s in used):
            prep = [s.prep_s for s in used]
            fixed = 0.0
            if all(v is not None for v in prep):
                fixed = statistics.fmean(prep)  # type: ignore[arg-type]
                fixed_s = fixed / w
            floor = (fixed + statistics.fmean(s.cpu_aug_s for s in used)) / w  # type: ignore[misc]
        return WindowSummary(
            steps=float(len(steps)),
            samples_per_s=1.0 / t if t > 0 else _NAN,
            se_rel=se / t if t > 0 else 0.0,
            step_s=statistics.fmean(s.step_s for s in used),
            wait_s=statistics.fmean(s.data_wait_s for s in used),
            batch_size=_median([float(s.batch_size) for s in steps]),
            num_workers=w,
            routed_ratio=statistics.fmean(s.n_device / s.batch_size for s in steps),
            cpu_cost=_median(
                [s.cpu_aug_s / s.n_cpu for s in steps if s.cpu_aug_s is not None and s.n_cpu]
            ),
            device_cost=_median([s.device_aug_s / s.n_device for s in steps if s.n_device]),
            compute_s=_median([max(s.step_s - s.data_wait_s - s.device_aug_s, 0.0) for s in steps]),
            h2d_s=_median([s.h2d_s for s in steps if s.h2d_s is not None]),
            loader_floor_s=floor,
            loader_fixed_s=fixed_s,
        )
