"""The worker planner behind ``recipes/plan.py``: how many CPU workers does this job need?

It trains the configured job for a short while at several DataLoader worker counts, CPU-only
(``off``) and with ``auto``, using the benchmark's engine (:func:`ff_lightning.app.bench.run_one`,
its clock, progress bar and environment record). :func:`plan_table` turns the runs into one row
per worker count; :func:`recommend` says in plain words, from those numbers, the fewest workers
with which ``auto`` matches CPU-only with the most workers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ff_lightning.app.bench.progress import BenchProgress
from ff_lightning.app.bench.report import device_name, environment, load_average
from ff_lightning.app.bench.runner import check_job, run_one
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_bool, check_float, check_int

__all__ = [
    "PLAN_JSON",
    "PLAN_PNG",
    "format_table",
    "plan_table",
    "recommend",
    "run_plan",
    "usable_cpus",
    "worker_counts",
]

log = logging.getLogger("ff_lightning")

PLAN_JSON = "plan.json"
PLAN_PNG = "plan.png"
MODES = ("off", "auto")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_counts(spec: Sequence[int] | None, cpus: int) -> list[int]:
    """The worker counts to measure: ``spec`` (sorted, deduplicated), or 1 .. ``cpus``."""
    if spec is None:
        return list(range(1, max(cpus, 1) + 1))
    counts = sorted({check_int("plan.workers", w, 0) for w in spec})
    if not counts:
        raise ConfigError("`plan.workers` must list at least one worker count, got []")
    return counts


def _workers(spec: Any) -> list[Any] | None:
    """``plan.workers``: null or a list (a bare number is a one-entry list)."""
    if spec is None:
        return None
    if isinstance(spec, ListConfig):
        return list(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    raise ConfigError(
        f"`plan.workers` must be null or a list of worker counts, got {spec!r}; "
        "e.g. plan.workers=[1,2,4]"
    )


def _modes(spec: Iterable[Any]) -> list[str]:
    if not isinstance(spec, ListConfig | list | tuple):
        raise ConfigError(f"`plan.modes` must be a list among {MODES}, got {spec!r}")
    modes = ["off" if m is False else m for m in spec]  # YAML 1.1 reads `off` as false
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"`plan.modes` entries must be among {MODES}, got {list(spec)!r}")
    return modes


def plan_table(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per worker count from run records (``workers``, ``mode``, ``samples_per_sec``,
    ``ratio``): mean samples/s per mode over rounds, the rounds, and auto's final share."""
    by: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        by.setdefault(int(r["workers"]), {}).setdefault(r["mode"], []).append(r)
    rows = []
    for w in sorted(by):
        row: dict[str, Any] = {"workers": w}
        for mode in MODES:
            runs = by[w].get(mode, [])
            speeds = [float(x["samples_per_sec"]) for x in runs]
            row[f"{mode}_samples_per_sec"] = sum(speeds) / len(speeds) if speeds else None
            row[f"{mode}_rounds"] = speeds
        auto = by[w].get("auto", [])
        row["share"] = (
            float(auto[-1]["ratio"]) if auto and auto[-1].get("ratio") is not None else None
        )
        off, on = row["off_samples_per_sec"], row["auto_samples_per_sec"]
        row["auto_vs_off"] = on / off if on and off else None
        rows.append(row)
    return rows


def _n(w: int) -> str:
    return f"{w} worker" if w == 1 else f"{w} workers"


def recommend(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The plain-words recommendation, computed from the table.

    Reference: CPU-only with the most workers measured. The recommendation is the fewest
    workers with which ``auto`` is within ``tolerance`` of it; the saving counts worker
    processes (each one a CPU the job no longer needs)."""
    offs = [r for r in rows if r.get("off_samples_per_sec")]
    autos = [r for r in rows if r.get("auto_samples_per_sec")]
    if not offs or not autos:
        return {"text": "nothing to compare: the plan needs both CPU-only and auto runs"}
    ref = max(offs, key=lambda r: r["workers"])
    w_ref, x_ref = int(ref["workers"]), float(ref["off_samples_per_sec"])
    floor = (1.0 - tolerance) * x_ref
    ok = [r for r in autos if r["auto_samples_per_sec"] >= floor]
    off_ok = [r for r in offs if r["off_samples_per_sec"] >= floor]
    out: dict[str, Any] = {
        "reference_workers": w_ref,
        "reference_samples_per_sec": x_ref,
        "tolerance": tolerance,
        "fewest_off_workers": min(r["workers"] for r in off_ok),
    }
    if not ok:
        best = max(autos, key=lambda r: r["auto_samples_per_sec"])
        out.update(fewest_auto_workers=None, saved=0, saved_pct=0.0)
        out["text"] = (
            f"auto does not reach CPU-only with {_n(w_ref)} ({x_ref:.0f} samples/s) at any "
            f"count measured (best: {best['auto_samples_per_sec']:.0f} samples/s with "
            f"{_n(best['workers'])}); keep {_n(w_ref)}"
        )
        return out
    pick = min(ok, key=lambda r: r["workers"])
    w, x = int(pick["workers"]), float(pick["auto_samples_per_sec"])
    saved = max(w_ref - w, 0)
    pct = 100.0 * saved / w_ref if w_ref else 0.0
    out.update(fewest_auto_workers=w, auto_samples_per_sec=x, saved=saved, saved_pct=pct)
    speed = f"{x:.0f} vs {x_ref:.0f} samples/s, {x / x_ref - 1:+.1%}"
    if saved:
        cpus = "1 CPU" if saved == 1 else f"{saved} CPUs"
        text = f"auto with {_n(w)} matches CPU-only with {_n(w_ref)} ({speed}): {cpus} ({pct:.0f}%) saved"
    else:
        text = (
            f"auto needs all {_n(w_ref)} to match CPU-only with {_n(w_ref)} ({speed}): no CPU saved"
        )
    if out["fewest_off_workers"] <= w and out["fewest_off_workers"] < w_ref:
        text += (
            f"; CPU-only with {_n(out['fewest_off_workers'])} reaches it too (more workers do "
            "not pay on this machine)"
        )
    out["text"] = text
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def format_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The table's cells: workers, CPU-only samples/s, auto samples/s, share, auto/CPU-only."""
    return [
        [
            str(r["workers"]),
            _fmt(r["off_samples_per_sec"], ".1f"),
            _fmt(r["auto_samples_per_sec"], ".1f"),
            _fmt(r["share"], ".2f"),
            _fmt(r["auto_vs_off"], ".3f"),
        ]
        for r in rows
    ]


HEADER = ("workers", "CPU-only samples/s", "auto samples/s", "share", "auto / CPU-only")


def print_plan(plan: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"ff_lightning worker plan ({plan['device']})")
    for col in HEADER:
        table.add_column(col, justify="right")
    for cells in format_table(plan["rows"]):
        table.add_row(*cells)
    console.print(table)
    console.print(plan["recommendation"]["text"], soft_wrap=True)


def write_plot(plan: dict[str, Any], path: Path) -> Path | None:
    """samples/s against workers, CPU-only and auto; ``None`` without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 'ff-lightning[plot]')", path.name)
        return None
    rows, rec = plan["rows"], plan["recommendation"]
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for mode, colour in (("off", "#1f77b4"), ("auto", "#d62728")):
        pts = [
            (r["workers"], r[f"{mode}_samples_per_sec"])
            for r in rows
            if r[f"{mode}_samples_per_sec"]
        ]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                "o-",
                color=colour,
                label="CPU-only" if mode == "off" else "auto",
            )
    if rec.get("reference_samples_per_sec"):
        floor = (1.0 - rec["tolerance"]) * rec["reference_samples_per_sec"]
        ax.axhline(
            floor, color="grey", ls="--", lw=1, label=f"CPU-only max - {rec['tolerance']:.0%}"
        )
    ax.set_xticks([r["workers"] for r in rows])
    ax.set_xlabel("DataLoader workers")
    ax.set_ylabel("training samples/s")
    ax.set_title(f"ff_lightning worker plan: {plan['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def _run_cfg(cfg: DictConfig, workers: int, mode: str) -> DictConfig:
    """The job with ``workers`` workers, and the benchmark settings ``run_one`` reads.

    ``auto`` runs ``plan.auto_settle_steps`` more steps and leaves them out of its throughput
    with the warm-up: the plan compares the speed auto settles at, not its exploration."""
    p = cfg.plan
    settle = int(p.get("auto_settle_steps", 0)) if mode == "auto" else 0
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(c):
        c.data.num_workers = workers
        c.benchmark = {
            "steps": int(p.steps) + settle,
            "warmup_steps": int(p.warmup_steps) + settle,
            "auto_every_n_steps": int(p.auto_every_n_steps),
            "ceiling_batches": 1,
        }
    return c


def run_plan(cfg: DictConfig) -> dict[str, Any]:
    """Measure every (workers, mode), print the table and the recommendation, write
    ``plan.json`` (and ``plan.png``) into ``cfg.output_dir``; returns the plan."""
    t0 = time.perf_counter()
    p = cfg.plan
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = check_int("plan.steps", p.steps, 2)
    warmup = check_int("plan.warmup_steps", p.warmup_steps, 0)
    if steps <= warmup + 1:
        raise ConfigError(
            f"`plan.steps` must exceed `plan.warmup_steps` + 1, got steps={steps}, warmup={warmup}"
        )
    check_int("plan.auto_every_n_steps", p.auto_every_n_steps, 1)
    check_int("plan.auto_settle_steps", p.get("auto_settle_steps", 0), 0)
    repeats = check_int("plan.repeats", p.repeats, 1)
    tolerance = check_float("plan.tolerance", p.tolerance, 0.0, 1.0, high_open=True)
    cpus = usable_cpus()
    counts = worker_counts(_workers(p.workers), cpus)
    modes = _modes(p.modes)
    if p.get("torch_threads") is not None:
        check_int("plan.torch_threads", p.torch_threads, 1)
    for key in ("progress", "plot"):
        if key in p:
            check_bool(f"plan.{key}", p[key])
    check_job(cfg)
    if p.get("torch_threads"):
        torch.set_num_threads(int(p.torch_threads))
    env = environment(cfg)
    env["load_average_start"] = load_average()
    results: list[dict[str, Any]] = []
    total = repeats * len(counts) * len(modes)
    with BenchProgress(total, enabled=bool(p.get("progress", True))) as progress:
        k = 0
        # Rounds interleave every (workers, mode), so a slow drift of a shared machine's
        # speed hits them all alike.
        for _ in range(repeats):
            for w in counts:
                for mode in modes:
                    k += 1
                    run_cfg = _run_cfg(cfg, w, mode)
                    n_steps = int(run_cfg.benchmark.steps)
                    bar = progress.start_run(f"{k}/{total} {mode}, {_n(w)}", n_steps)
                    r = run_one(run_cfg, mode, None, out_dir, callbacks=bar)
                    r["workers"] = w
                    log.info("  %s with %s: %.1f samples/s", mode, _n(w), r["samples_per_sec"])
                    progress.end_run(f"{mode}, {_n(w)}: {r['samples_per_sec']:.0f} samples/s")
                    results.append(r)
    rows = plan_table(results)
    plan: dict[str, Any] = {
        "device": device_name(cfg),
        "cpus": cpus,
        "workers": counts,
        "rows": rows,
        "recommendation": recommend(rows, tolerance),
        "runs": [
            {
                k: r.get(k)
                for k in ("workers", "mode", "samples_per_sec", "ratio", "steps", "wall_seconds")
            }
            for r in results
        ],
    }
    env["load_average_end"] = load_average()
    plan["environment"] = env
    plan["wall_seconds"] = time.perf_counter() - t0
    plan["config"] = OmegaConf.to_container(cfg, resolve=True)
    (out_dir / PLAN_JSON).write_text(json.dumps(plan, indent=2, default=str) + "\n")
    print_plan(plan)
    if p.get("plot", True):
        chart = write_plot(plan, out_dir / PLAN_PNG)
        if chart is not None:
            log.info("plot written to %s", chart)
    log.info("plan written to %s (%.0f s)", out_dir / PLAN_JSON, plan["wall_seconds"])
    return plan
