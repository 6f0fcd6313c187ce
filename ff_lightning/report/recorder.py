"""The report's side of a front end: :class:`FitRecorder` samples the memory probe every step
and, at the end of the fit, computes, prints, writes and plots the report."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ff_lightning.report.render import REPORT_PNG, plot_report, print_report, write_report
from ff_lightning.report.stats import FitReport

__all__ = ["FitRecorder", "probe_sample"]


def probe_sample(probe: Any) -> dict[str, float | None]:
    """One sample of a memory probe (``ff_lightning.pipeline.device.probes``) for :meth:`FitReport.update`.

    GPU utilisation (``utilization_percent``, NVML: the percent of the last sample period, 1/6 s
    to 1 s by GPU, in which a kernel ran) and NVML free memory are driver queries, and the
    allocator's reserved and peak bytes are host-side counters: none of them synchronises
    CUDA, so this can run every step. A probe that knows nothing (CPU) gives ``None`` values.
    """
    if probe is None:
        return {"gpu_util": None, "free_bytes": None, "reserved_bytes": None, "peak_bytes": None}
    util = getattr(probe, "utilization_percent", None)
    on = bool(getattr(probe, "available", False))
    return {
        "gpu_util": util() if util is not None else None,
        "free_bytes": probe.free_bytes() if on else None,
        "reserved_bytes": probe.reserved_bytes() if on else None,
        "peak_bytes": probe.peak_allocated_bytes() if on else None,
    }


class FitRecorder:
    """The report's side of a front end: one :meth:`step` per training step, :meth:`finish` at
    the end of the fit (no Trainer; the Lightning callback and the Accelerate adapter call it).

    Args:
        mode, device, num_workers: shown in the report.
        probe: the memory guard's probe, sampled every step (``None``: no device figures).
    """

    def __init__(self, *, mode: str, device: Any, num_workers: int | None, probe: Any = None):
        self.report = FitReport(mode=mode, device=str(device), num_workers=num_workers)
        self.probe = probe

    def step(self, measured: Any) -> None:
        """Record one step: what ``FusionSession.end_step`` returned (``None``: not measured)."""
        sample = probe_sample(self.probe) if measured is not None else {}
        self.report.update(measured, **sample)

    def finish(
        self,
        directory: str | Path,
        decisions: Iterable[Any],
        final_ratio: float | None = None,
        *,
        console: Any = None,
    ) -> dict[str, Any]:
        """Compute the report, print it, write ``fusionflow_report.json`` and ``fusionflow.png``
        into ``directory``; returns the report."""
        rep = self.report.compute(decisions, final_ratio)
        path = write_report(rep, directory)
        note = plot_report(self.report.series, Path(directory) / REPORT_PNG)
        print_report(rep, console)
        (console.print if console is not None else print)(f"report: {path}; {note}")
        return rep
