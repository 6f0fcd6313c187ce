"""Rendering the end-of-fit report: plain text (printed with rich), JSON and the matplotlib plot.

Takes what :meth:`~ff_lightning.report.stats.FitReport.compute` returns (and its ``series`` for
the plot); computes nothing itself. matplotlib is optional.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT_JSON",
    "REPORT_PNG",
    "format_report",
    "plot_report",
    "print_report",
    "write_report",
]

REPORT_JSON = "fusionflow_report.json"
REPORT_PNG = "fusionflow.png"


def _f(v: Any, fmt: str = ".1f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{fmt}}{unit}"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as plain text (what :func:`print_report` shows)."""
    r = report
    share = r["share"]
    ratios = [share["start"], *share["decisions"]]
    path = " -> ".join(_f(x, ".2f") for x in ratios)
    workers = "" if r.get("num_workers") is None else f", {r['num_workers']} workers"
    lines = [
        f"FusionFlow report: mode {r['mode']} on {r['device']}{workers}",
        f"  steps                {r['steps']} ({r['measured_steps']} measured), {r['samples']} samples",
        f"  samples/s            {_f(r['samples_per_sec'])}",
        f"  device share         {path}; final {_f(share['final'], '.2f')} "
        f"(device augmented {_f(_pct(share['device_samples']), '.0f', '%')} of the samples)",
        f"  data wait            {_f(_pct(r['data_wait_share']), '.0f', '%')} of step time, "
        f"{_f(r['data_wait_ms'])} ms per step "
        f"(loader-bound steps: {_f(_pct(r['loader_bound_share']), '.0f', '%')} of the time)",
        f"  worker CPU           {_f(r['worker_cpu_ms_per_sample'], '.2f')} ms/sample augmenting, "
        f"{_f(r['worker_prep_ms_per_sample'], '.2f')} ms/sample decoding and cropping",
        "  device augmentation  "
        + (
            f"{r['device_aug_ms_per_sample']:.2f} ms/sample"
            if r["device_aug_ms_per_sample"] is not None
            else "none (no sample was augmented on the device)"
        ),
        f"  step / H2D           {_f(r['step_ms'])} ms / {_f(r['h2d_ms'], '.2f')} ms",
    ]
    util, mem = r.get("gpu_util_pct"), r.get("memory")
    if util is not None:
        lines.append(
            f"  GPU utilisation      {util['mean']:.0f}% mean (min {util['min']:.0f}%, "
            f"max {util['max']:.0f}%, NVML)"
        )
    if mem is not None:
        lines.append(
            f"  GPU memory           free >= {_f(mem['gpu_free_mb_min'], '.0f')} MiB (NVML), "
            f"reserved <= {_f(mem['reserved_mb_max'], '.0f')} MiB, "
            f"peak allocated {_f(mem['peak_allocated_mb_max'], '.0f')} MiB"
        )
    base = r.get("baseline_samples_per_sec")
    lines.append(
        f"  CPU-only baseline    {_f(base)} samples/s"
        if base is not None
        else "  CPU-only baseline    not measured"
    )
    saved = r.get("workers")
    if saved:
        pct = 100.0 * saved["saved"] / saved["configured"] if saved["configured"] else 0.0
        lines.append(
            f"  workers saved        {saved['saved']} of {saved['configured']} ({pct:.0f}%): "
            f"{saved['final']} active at the end (objective cpu)"
        )
    lines.append("  decisions")
    if not r["decisions"]:
        lines.append("    (none)")
    for d in r["decisions"]:
        lines.append(
            f"    {d['index']:>3} {d['kind']:<8} {_f(d['prev_ratio'], '.2f')} -> "
            f"{_f(d['ratio'], '.2f')}  {d['reason']}"
        )
    lines.append(f"  verdict: {r['verdict']}")
    return "\n".join(lines)


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def print_report(report: Mapping[str, Any], console: Any = None) -> None:
    """Print :func:`format_report` with rich (plain ``print`` if rich cannot be imported)."""
    text = format_report(report)
    try:
        from rich.console import Console
        from rich.text import Text
    except ImportError:  # pragma: no cover - rich is a dependency
        print(text)
        return
    (console or Console()).print(Text(text), soft_wrap=True)  # long reasons stay on one line


def write_report(report: Mapping[str, Any], directory: str | Path) -> Path:
    """Write ``fusionflow_report.json`` into ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / REPORT_JSON
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def plot_report(series: Mapping[str, list[float]], path: str | Path) -> str:
    """Draw share, samples/s and data wait (and GPU utilisation when sampled) over steps.

    Returns a one-line note: where the PNG went, or why there is none (matplotlib missing, no
    steps). matplotlib is optional: ``pip install matplotlib`` (or ``ff-lightning[plot]``).
    """
    steps = list(series.get("step", []))
    if not steps:
        return "plot: no measured steps, nothing to draw"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "plot: skipped, matplotlib is not installed (pip install matplotlib)"
    panels = [
        ("ratio", "device share"),
        ("samples_per_sec", "samples/s"),
        ("data_wait_ms", "data wait (ms)"),
    ]
    if any(not math.isnan(v) for v in series.get("gpu_util", [])):
        panels.append(("gpu_util", "GPU util (%)"))
    fig = Figure(figsize=(8, 2.0 * len(panels) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(steps, series[key], lw=1.0, drawstyle="steps-post" if key == "ratio" else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.05, 1.05)
    axes[-1].set_xlabel("training step")
    fig.suptitle("FusionFlow: device share, throughput and data wait per step")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return f"plot: {out}"
