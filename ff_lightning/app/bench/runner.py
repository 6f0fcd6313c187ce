"""The interleaved rounds: every mode trains the same job, and ``benchmark.json`` is written.

Every mode's throughput is taken over the same steps: the first ``warmup_steps`` of each run
(worker start-up, allocator warm-up) are excluded; ``auto`` pays for its own exploration
inside the measured steps.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ff_lightning.app.bench.modes import (
    CeilingDataModule,
    ceiling_batches,
    label,
    parse_mode,
    split_variant,
    stock_datamodule,
)
from ff_lightning.app.bench.progress import BenchProgress
from ff_lightning.app.bench.report import (
    device_name,
    environment,
    load_average,
    print_table,
    summarise,
    write_chart,
)
from ff_lightning.app.checks import (
    SEED_MAX,
    check_benchmark,
    check_policy,
    check_trainer,
    setup_errors,
)
from ff_lightning.app.meters import StepClock
from ff_lightning.app.models import LoaderOnly
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_int

log = logging.getLogger("ff_lightning")


def _trainer(cfg: DictConfig, callbacks: list[L.Callback], steps: int, out_dir: Path) -> L.Trainer:
    from ff_lightning.app.train import build_trainer

    return build_trainer(
        cfg,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=-1,
        max_steps=steps,
        limit_train_batches=None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )


def run_one(
    cfg: DictConfig,
    mode: str,
    ratio: float | None,
    out_dir: Path,
    callbacks: list[L.Callback] | None = None,
) -> dict[str, Any]:
    """Train ``benchmark.steps`` steps in one mode and return its measured throughput."""
    from ff_lightning.app.train import build_datamodule, build_model

    b = cfg.benchmark
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Loader only: a model that touches each batch and computes nothing (what bounds a GPU job).
    model = LoaderOnly() if b.get("loader_only", False) else build_model(cfg)
    clock = StepClock(b.warmup_steps)
    extra = list(callbacks or [])
    fusion = None
    given, decode = mode, None
    t0 = time.perf_counter()
    if mode == "ceiling":
        # Build the batches where the model will run, so Lightning's transfer is a no-op.
        wants_gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto")
        device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
        dm: Any = CeilingDataModule(ceiling_batches(cfg, b.ceiling_batches, device), b.steps)
    elif mode in ("torchvision", "timm"):
        if mode == "timm" and cfg.augment.name != "transform":
            raise ConfigError(
                "`benchmark.modes` has 'timm', which runs the user's own timm transform: choose "
                "an augment config that hands one over (augment=timm_rand_m9_mstd05_inc1)"
            )
        dm = stock_datamodule(cfg)
    else:
        mode, decode = split_variant(mode)
        run_cfg = cfg
        if decode is not None:  # "auto+decode" / "auto-decode": data.device_decode for this run
            run_cfg = cfg.copy()
            with open_dict(run_cfg):
                run_cfg.data.device_decode = decode
        dm = build_datamodule(run_cfg)
        fusion = _fusion(cfg, mode, ratio)
        extra.insert(0, fusion)
    trainer = _trainer(cfg, [*extra, clock], b.steps, out_dir)
    trainer.fit(model, datamodule=dm)
    result: dict[str, Any] = {
        "mode": given if decode is not None else label(mode, ratio),
        "ratio": fusion.ratio if fusion is not None else (1.0 if mode == "ceiling" else None),
        "samples_per_sec": clock.samples_per_sec(),
        "steps": clock.steps,
        "wall_seconds": time.perf_counter() - t0,
    }
    if fusion is not None and mode == "auto":
        result["decisions"] = [
            {k: d.get(k) for k in ("ratio", "kind", "reason", "throughput")}
            for d in (x.to_dict() if hasattr(x, "to_dict") else x for x in fusion.history)
        ]
    return result


def _merge_rounds(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One result per mode: the last round's record with the median samples/s over rounds and
    the spread of the rounds (``(max - min) / median``)."""
    results = []
    for name, rs in runs.items():
        merged = dict(rs[-1])
        rounds = [x["samples_per_sec"] for x in rs]
        median = statistics.median(rounds)
        merged["samples_per_sec"] = median
        merged["rounds"] = rounds
        merged["spread"] = (max(rounds) - min(rounds)) / median if median > 0 else 0.0
        if name == "auto":
            merged["final_ratios"] = [x["ratio"] for x in rs]
        results.append(merged)
    return results


def _fusion(cfg: DictConfig, mode: str, ratio: float | None) -> Any:
    """The benchmark's FusionFlow for one mode: the run's mode, the job's ``reserve_mb``."""
    from ff_lightning import FusionFlow

    kwargs: dict[str, Any] = {"mode": mode, "reserve_mb": cfg.fusionflow.reserve_mb}
    if mode == "fixed":
        kwargs["ratio"] = ratio
    if mode == "auto":
        kwargs.update(interval="steps", every_n_steps=cfg.benchmark.auto_every_n_steps)
    with setup_errors({"reserve_mb": "fusionflow.reserve_mb"}, "fusionflow"):
        return FusionFlow(**kwargs)


def check_job(cfg: DictConfig) -> None:
    """What can be checked of the job without its data, before the first run: the seed, the
    trainer, the model, the policy and the FusionFlow settings the runs use."""
    from ff_lightning.app.train import build_model

    check_int("seed", cfg.get("seed"), 0, SEED_MAX, fix="set e.g. seed=0")
    check_trainer(cfg.trainer)
    check_policy(cfg)
    build_model(cfg)
    _fusion(cfg, "off", None)


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured mode side by side; write ``benchmark.json`` (and ``benchmark.png``)."""
    t_start = time.perf_counter()
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    b = cfg.benchmark
    check_benchmark(b)
    modes = [parse_mode(m) for m in b.modes]
    check_job(cfg)
    repeats = int(b.get("repeats", 1))
    threads = b.get("torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    env = environment(cfg)
    env["load_average_start"] = load_average()
    # Rounds interleave the modes (off, gpu, ..., off, gpu, ...) so that slow drifts of a shared
    # machine's speed hit every mode alike; each mode reports the median over its rounds.
    runs: dict[str, list[dict[str, Any]]] = {}
    total = repeats * len(modes)
    with BenchProgress(total, enabled=bool(b.get("progress", True))) as progress:
        k = 0
        for rnd in range(repeats):
            for mode, ratio in modes:
                k += 1
                name = label(mode, ratio)
                log.info("benchmark %d/%d (round %d): %s", k, total, rnd + 1, name)
                bar = progress.start_run(f"{k}/{total} {name}", int(b.steps))
                r = run_one(cfg, mode, ratio, out_dir, callbacks=bar)
                log.info(
                    "  %s: %.1f samples/s (final ratio %s)", name, r["samples_per_sec"], r["ratio"]
                )
                progress.end_run(f"{name}: {r['samples_per_sec']:.0f} samples/s")
                runs.setdefault(r["mode"], []).append(r)
    summary = summarise(_merge_rounds(runs), device_name(cfg))
    env["load_average_end"] = load_average()
    summary["environment"] = env
    summary["wall_seconds"] = time.perf_counter() - t_start
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    summary["torch"] = torch.__version__
    with open(out_dir / "benchmark.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print_table(summary)
    if b.get("plot", True):
        arch = OmegaConf.select(cfg, "model.arch", default="model")
        subtitle = (
            f"{arch}, {cfg.augment.name}, {env['image_size']} px, batch {env['batch_size']}, "
            f"{env['num_workers']} worker(s), {b.steps} steps x {repeats} round(s)"
        )
        chart = write_chart(summary, out_dir / "benchmark.png", subtitle)
        if chart is not None:
            log.info("chart written to %s", chart)
    log.info(
        "benchmark written to %s (%.0f s)", out_dir / "benchmark.json", summary["wall_seconds"]
    )
    return summary
