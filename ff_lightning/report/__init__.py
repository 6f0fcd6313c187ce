"""The end-of-fit report: where a training run's time went, and what the controller did.

- :mod:`~ff_lightning.report.stats`: :class:`FitReport` (pure: ``update`` per training step,
  ``compute`` at the end of the fit) and its one-line :func:`verdict`.
- :mod:`~ff_lightning.report.render`: :func:`format_report` renders the result as text,
  :func:`print_report` prints it with rich, :func:`write_report` writes
  ``fusionflow_report.json`` and :func:`plot_report` draws ``fusionflow.png`` (matplotlib is
  optional).
- :mod:`~ff_lightning.report.recorder`: :class:`FitRecorder` is what a front end holds: it
  samples the memory probe (GPU utilisation, free memory, allocator counters) every step.
"""

from __future__ import annotations

from ff_lightning.report.recorder import FitRecorder, probe_sample
from ff_lightning.report.render import (
    REPORT_JSON,
    REPORT_PNG,
    format_report,
    plot_report,
    print_report,
    write_report,
)
from ff_lightning.report.stats import LOADER_BOUND, FitReport, step_record, verdict

__all__ = [
    "LOADER_BOUND",
    "REPORT_JSON",
    "REPORT_PNG",
    "FitRecorder",
    "FitReport",
    "format_report",
    "plot_report",
    "print_report",
    "probe_sample",
    "step_record",
    "verdict",
    "write_report",
]
