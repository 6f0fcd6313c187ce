"""The end-of-fit statistics: one record per training step in, a JSON-serialisable summary out.

Pure: no Trainer, no rendering. A front end feeds :meth:`FitReport.update` one record per
training step and calls :meth:`FitReport.compute` at the end of the fit with the controller's
decisions; :func:`verdict` says in one line what the numbers mean.

A step record is anything with the fields of ``ff_lightning.control.records.StepStats``
(``batch_size, n_device, data_wait_s, step_s, device_aug_s, cpu_aug_s, n_cpu, h2d_s, prep_s,
ratio``), read with ``getattr`` so that any record of that shape works; :func:`step_record` also
accepts the ``(wait_s, step_s, device_aug_s, batch_record)`` tuple that ``FusionSession.end_step``
returned before the records were merged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

__all__ = ["LOADER_BOUND", "FitReport", "step_record", "verdict"]

LOADER_BOUND = 0.05  # a step waited for data longer than this share of it: the loader bound it
_MB = 1.0 / (1024 * 1024)


def step_record(measured: Any) -> Any:
    """One step's record from what ``FusionSession.end_step`` returned (``None`` stays ``None``).

    A ``(wait_s, step_s, device_aug_s, batch_record)`` tuple is merged into one record with the
    ``StepStats`` field names; anything else is taken to be such a record already.
    """
    if isinstance(measured, tuple) and len(measured) == 4:
        wait, step_s, aug_s, rec = measured
        fields = {
            k: getattr(rec, k, None)
            for k in ("batch_size", "n_device", "cpu_aug_s", "n_cpu", "h2d_s", "prep_s", "ratio")
        }
        return SimpleNamespace(**fields, data_wait_s=wait, step_s=step_s, device_aug_s=aug_s)
    return measured


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or ``None``."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class _MinMeanMax:
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, v: float | None) -> None:
        if v is None:
            return
        self.n += 1
        self.total += v
        self.lo = min(self.lo, v)
        self.hi = max(self.hi, v)

    def summary(self) -> dict[str, float] | None:
        if not self.n:
            return None
        return {"mean": self.total / self.n, "min": self.lo, "max": self.hi}


class FitReport:
    """Accumulates one record per training step; :meth:`compute` summarises the fit.

    Sums are kept exactly for every step; the per-step series behind the plot keeps at most
    ``max_points`` points (every second one is dropped when it fills up).

    Args:
        mode: the front end's mode (``auto``, ``off``, ...), shown in the report.
        device: the training device, e.g. ``"cuda:0"`` or ``"cpu"``.
        num_workers: DataLoader worker processes.
        max_points: most points kept for the plot.
    """

    SERIES = ("step", "ratio", "samples_per_sec", "data_wait_ms", "gpu_util")

    def __init__(
        self,
        *,
        mode: str = "auto",
        device: str = "cpu",
        num_workers: int | None = None,
        max_points: int = 4096,
    ) -> None:
        if not isinstance(max_points, int) or max_points < 2:
            raise ValueError(f"`max_points` must be an integer >= 2, got {max_points!r}")
        self.mode = mode
        self.device = str(device)
        self.num_workers = num_workers
        self.max_points = max_points
        self.reset()

    def reset(self) -> None:
        self.steps = 0  # every step, measured or not
        self.measured = 0
        self._sum = dict.fromkeys(
            ("samples", "n_device", "n_cpu", "wait", "step", "device_aug", "loader_bound_step"),
            0.0,
        )
        self._cpu_aug = [0.0, 0.0]  # seconds, CPU-routed samples of the batches that stamped it
        self._prep = [0.0, 0.0]  # seconds, samples
        self._h2d = [0.0, 0]  # seconds, steps
        self._util = _MinMeanMax()
        self._free = _MinMeanMax()
        self._reserved = _MinMeanMax()
        self._peak = _MinMeanMax()
        self.series: dict[str, list[float]] = {k: [] for k in self.SERIES}
        self._stride = 1

    def update(
        self,
        record: Any,
        *,
        gpu_util: float | None = None,
        free_bytes: float | None = None,
        reserved_bytes: float | None = None,
        peak_bytes: float | None = None,
    ) -> None:
        """Add one training step. ``record=None`` counts a step that was not measured (the
        first after a clock reset); memory and utilisation are optional samples."""
        self.steps += 1
        if record is None:
            return
        rec = step_record(record)
        b = int(getattr(rec, "batch_size", 0) or 0)
        # Samples' worth of work: fractional with views (see StepStats).
        n_dev = float(getattr(rec, "n_device", 0) or 0)
        n_cpu = getattr(rec, "n_cpu", None)
        n_cpu = b - n_dev if n_cpu is None else float(n_cpu)
        wait = _num(getattr(rec, "data_wait_s", None)) or 0.0
        step_s = _num(getattr(rec, "step_s", None)) or 0.0
        s = self._sum
        self.measured += 1
        s["samples"] += b
        s["n_device"] += n_dev
        s["n_cpu"] += n_cpu
        s["wait"] += wait
        s["step"] += step_s
        s["device_aug"] += _num(getattr(rec, "device_aug_s", None)) or 0.0
        if step_s > 0 and wait > LOADER_BOUND * step_s:
            s["loader_bound_step"] += step_s
        cpu_aug = _num(getattr(rec, "cpu_aug_s", None))
        if cpu_aug is not None:
            self._cpu_aug[0] += cpu_aug
            self._cpu_aug[1] += n_cpu
        prep = _num(getattr(rec, "prep_s", None))
        if prep is not None:
            self._prep[0] += prep
            self._prep[1] += b
        h2d = _num(getattr(rec, "h2d_s", None))
        if h2d is not None:
            self._h2d[0] += h2d
            self._h2d[1] += 1
        util = _num(gpu_util)
        self._util.add(util)
        for acc, v in (
            (self._free, free_bytes),
            (self._reserved, reserved_bytes),
            (self._peak, peak_bytes),
        ):
            v = _num(v)
            acc.add(None if v is None else v * _MB)
        if (self.measured - 1) % self._stride == 0:
            self._add_point(
                self.steps,
                _num(getattr(rec, "ratio", None)),
                b / step_s if step_s > 0 else math.nan,
                wait * 1e3,
                util,
            )

    def _add_point(self, *values: float | None) -> None:
        for key, v in zip(self.SERIES, values, strict=True):
            self.series[key].append(math.nan if v is None else float(v))
        if len(self.series["step"]) >= self.max_points:
            # Full: keep every second point and sample half as often from now on.
            for key in self.SERIES:
                self.series[key] = self.series[key][::2]
            self._stride *= 2

    def compute(
        self, decisions: Iterable[Any] = (), final_ratio: float | None = None
    ) -> dict[str, Any]:
        """The report as a JSON-serialisable dict (times in ms, memory in MiB, shares in [0, 1]).

        Args:
            decisions: the controller's history (``Decision`` objects or their dicts), the
                initial record first.
            final_ratio: the device share at the end of the fit (default: the last decision's).
        """
        s = self._sum
        decisions = list(decisions)
        decs = [_decision_dict(d) for d in decisions]
        start = decs[0]["ratio"] if decs else None
        final = _num(final_ratio)
        if final is None and decs:
            final = decs[-1]["ratio"]
        baseline = next(
            (d["baseline_throughput"] for d in decs if _num(d.get("baseline_throughput"))), None
        )
        sps = s["samples"] / s["step"] if s["step"] > 0 else None
        memory = {
            "gpu_free_mb_min": self._free.summary()["min"] if self._free.n else None,
            "reserved_mb_max": self._reserved.summary()["max"] if self._reserved.n else None,
            "peak_allocated_mb_max": self._peak.summary()["max"] if self._peak.n else None,
        }
        out: dict[str, Any] = {
            "mode": self.mode,
            "device": self.device,
            "num_workers": self.num_workers,
            "steps": self.steps,
            "measured_steps": self.measured,
            "samples": int(s["samples"]),
            "samples_per_sec": sps,
            "share": {
                "start": start,
                "decisions": [d["ratio"] for d in decs[1:]],
                "final": final,
                "device_samples": s["n_device"] / s["samples"] if s["samples"] else None,
            },
            "data_wait_share": s["wait"] / s["step"] if s["step"] > 0 else None,
            "loader_bound_share": s["loader_bound_step"] / s["step"] if s["step"] > 0 else None,
            "data_wait_ms": 1e3 * s["wait"] / self.measured if self.measured else None,
            "step_ms": 1e3 * s["step"] / self.measured if self.measured else None,
            "h2d_ms": 1e3 * self._h2d[0] / self._h2d[1] if self._h2d[1] else None,
            "worker_cpu_ms_per_sample": (
                1e3 * self._cpu_aug[0] / self._cpu_aug[1] if self._cpu_aug[1] else None
            ),
            "worker_prep_ms_per_sample": (
                1e3 * self._prep[0] / self._prep[1] if self._prep[1] else None
            ),
            "device_aug_ms_per_sample": (
                1e3 * s["device_aug"] / s["n_device"] if s["n_device"] else None
            ),
            "gpu_util_pct": self._util.summary(),
            "memory": memory if any(v is not None for v in memory.values()) else None,
            "baseline_samples_per_sec": baseline,
            "speedup_vs_baseline": sps / baseline if sps and baseline else None,
            "decisions": decs[1:],
            "workers": _workers_saved(self.num_workers, decisions),
        }
        out["verdict"] = verdict(out)
        return out


def _decision_dict(d: Any) -> dict[str, Any]:
    if isinstance(d, Mapping):
        src: Any = dict(d)
        get = src.get
    else:
        get = lambda k, default=None: getattr(d, k, default)  # noqa: E731
    return {
        "index": get("index", 0),
        "kind": get("kind", ""),
        "ratio": _num(get("ratio")),
        "prev_ratio": _num(get("prev_ratio")),
        "reason": str(get("reason", "")),
        "throughput": _num(get("throughput")),
        "baseline_throughput": _num(get("baseline_throughput")),
    }


def _workers_saved(configured: int | None, decisions: list[Any]) -> dict[str, int] | None:
    """Workers the CPU objective saved: the configured count and the last one decided
    (``None`` when the controller did not choose the count)."""
    final = None
    for d in decisions:
        w = d.get("workers") if isinstance(d, Mapping) else getattr(d, "workers", None)
        final = int(w) if w is not None else final
    if final is None or configured is None:
        return None
    return {"configured": int(configured), "final": final, "saved": int(configured) - final}


def verdict(report: Mapping[str, Any]) -> str:
    """One line in plain words, from the numbers of :meth:`FitReport.compute`."""
    if not report.get("measured_steps"):
        return "no training step was measured"
    wait = report.get("data_wait_share") or 0.0
    bound = report.get("loader_bound_share") or 0.0
    if wait >= LOADER_BOUND:
        head = f"loader-bound {100 * bound:.0f}% of the time"
    else:
        head = f"device-bound {100 * (1 - bound):.0f}% of the time"
    dev = report["share"].get("device_samples") or 0.0
    text = f"{head}: the device took {100 * dev:.0f}% of the augmentation"
    speedup = report.get("speedup_vs_baseline")
    if speedup is not None:
        return f"{text} and training ran {speedup:.2f}x the CPU-only speed measured at the start"
    return f"{text}; the CPU-only speed was not measured (mode {report.get('mode')!r})"
