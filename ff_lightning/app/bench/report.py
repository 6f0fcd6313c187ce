"""``benchmark.json``'s ratios and environment record, the printed table and the bar chart."""

from __future__ import annotations

import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

log = logging.getLogger("ff_lightning")

#: ``benchmark.json``'s ratio keys: (key, numerator mode, denominator mode or "best fixed").
RATIOS = (
    ("auto_vs_best_fixed", "auto", "best_fixed"),
    ("auto_vs_off", "auto", "off"),
    ("auto_vs_ceiling", "auto", "ceiling"),
    ("auto_vs_torchvision", "auto", "torchvision"),
    ("off_vs_torchvision", "off", "torchvision"),
    ("auto_vs_timm", "auto", "timm"),
    ("off_vs_timm", "off", "timm"),
)
#: Distributions whose versions the environment record carries, by the name it uses.
PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "lightning": "lightning",
    "kornia": "kornia",
    "ff_lightning": "ff-lightning",
}


def summarise(results: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """The contract's ratios from per-mode results (``None`` where a mode is missing)."""
    speeds: dict[str, float] = {r["mode"]: r["samples_per_sec"] for r in results}
    fixed = [
        r["samples_per_sec"]
        for r in results
        if r["mode"].startswith("fixed") or r["mode"] in ("off", "gpu")
    ]
    speeds_best = {**speeds, "best_fixed": max(fixed) if fixed else None}
    out: dict[str, Any] = {"device": device, "results": results}
    out["best_fixed"] = speeds_best["best_fixed"]
    for key, num, den in RATIOS:
        a, b = speeds_best.get(num), speeds_best.get(den)
        out[key] = a / b if a and b else None
    out["flags"] = ceiling_flags(results)
    if "auto+decode" in speeds:  # experiment=bench_decode: device decode on vs off, side by side
        for key, den in (
            ("auto_decode_vs_auto", "auto"),
            ("auto_decode_vs_torchvision", "torchvision"),
        ):
            b = speeds.get(den)
            out[key] = speeds["auto+decode"] / b if b else None
    return out


def ceiling_flags(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Modes that beat the ``ceiling`` (pre-augmented batches: the training step alone) by more
    than the rounds' spread. No data pipeline can do that; only the machine's noise can, so the
    run's ratios deserve doubt."""
    ceiling = next((r for r in results if r["mode"] == "ceiling"), None)
    if ceiling is None or not ceiling.get("samples_per_sec"):
        return []
    flags = []
    for r in results:
        if r["mode"] == "ceiling":
            continue
        excess = r["samples_per_sec"] / ceiling["samples_per_sec"] - 1.0
        spread = max(r.get("spread", 0.0), ceiling.get("spread", 0.0))
        if excess > spread:
            flags.append(
                {
                    "mode": r["mode"],
                    "vs_ceiling": 1.0 + excess,
                    "spread": spread,
                    "note": f"{r['mode']} measured {1.0 + excess:.2f}x the ceiling, beyond the "
                    f"rounds' spread ({spread:.0%}): the machine's speed moved during the run; "
                    "read this run's ratios with that in mind, or rerun with more rounds",
                }
            )
    return flags


def device_name(cfg: DictConfig) -> str:
    """The device the job trains on, in words."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def _version(dist: str, module: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        mod = sys.modules.get(module)
        return getattr(mod, "__version__", None)


def environment(cfg: DictConfig) -> dict[str, Any]:
    """Where and how the benchmark ran: versions, device, CPUs, workers, threads, command line."""
    try:
        cpus_usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus_usable = None
    return {
        "packages": {name: _version(dist, name) for name, dist in PACKAGES.items()},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(cfg),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable,
        "num_workers": int(cfg.data.num_workers),
        "batch_size": int(cfg.data.batch_size),
        "image_size": int(cfg.data.image_size),
        "torch_threads": torch.get_num_threads(),
        "argv": list(sys.argv),
        "overrides": _hydra_overrides(),
    }


def _hydra_overrides() -> list[str] | None:
    """This job's command-line overrides (in a ``-m`` sweep: this job's values, not the sweep's)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without @hydra.main (tests, notebooks)
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def print_table(summary: dict[str, Any], console: Any = None) -> None:
    """The per-mode table and the ratio lines, with rich."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no need to squeeze into 80 columns
            console.width = max(console.width, 120)
    best = summary.get("best_fixed")
    tv = next((r for r in summary["results"] if r["mode"] == "torchvision"), None)
    table = Table(title=f"ff_lightning benchmark ({summary['device']})")
    cols = (
        "mode",
        "final ratio",
        "samples/s (median)",
        "spread",
        "rounds",
        "vs best fixed",
        "vs torchvision",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in summary["results"]:
        v = r["samples_per_sec"]
        table.add_row(
            r["mode"],
            "" if r.get("ratio") is None else f"{r['ratio']:.2f}",
            f"{v:.1f}",
            f"{r['spread']:.0%}" if r.get("spread") is not None else "",
            " ".join(f"{x:.0f}" for x in r.get("rounds", [])),
            f"{v / best:.3f}" if best else "",
            f"{v / tv['samples_per_sec']:.3f}" if tv else "",
        )
    console.print(table)
    for key, _, _ in RATIOS:
        v = summary.get(key)
        console.print(f"{key}: {v:.3f}" if v is not None else f"{key}: n/a")
    for flag in summary.get("flags", []):
        console.print(f"[bold yellow]flag:[/] {flag['note']}")


def write_chart(summary: dict[str, Any], path: Path, subtitle: str = "") -> Path | None:
    """A bar chart of the median samples/s per mode (rounds as dots); ``None`` without
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 'ff-lightning[plot]')", path.name)
        return None
    results = summary["results"]
    names = [r["mode"] for r in results]
    means = [r["samples_per_sec"] for r in results]
    colours = {"torchvision": "#7f7f7f", "auto": "#d62728", "ceiling": "#c7c7c7"}
    fig = Figure(figsize=(1.1 * len(names) + 2.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    xs = range(len(names))
    ax.bar(xs, means, color=[colours.get(n, "#1f77b4") for n in names])
    for x, r in zip(xs, results, strict=True):
        rounds = r.get("rounds", [])
        ax.plot([x] * len(rounds), rounds, "k.", markersize=4)
        ax.annotate(
            f"{r['samples_per_sec']:.0f}",
            (x, max([r["samples_per_sec"], *rounds])),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_ylabel("training samples/s (median over rounds)")
    ax.set_title(f"ff_lightning benchmark: {summary['device']}\n{subtitle}", fontsize=9)
    fig.savefig(path, dpi=120)
    return path
