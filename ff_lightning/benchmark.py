"""Side-by-side training-throughput benchmark of the FusionFlow modes (``recipes/benchmark.py``).

The same job (model, data, policy, batch size, workers, seed) runs once per mode, one after
the other in one process: ``off``, ``gpu``, fixed ratios, ``auto`` and a ``ceiling`` run whose
batches are already augmented, normalised and resident on the device (it measures compute
alone: no mode can beat it). Every mode's throughput is taken over the same steps: the first
``warmup_steps`` of each run (worker start-up, allocator warm-up) are excluded; ``auto`` pays
for its own exploration inside the measured steps.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ff_lightning.errors import ConfigError

log = logging.getLogger("ff_lightning")


class StepClock(L.Callback):
    """Training throughput over the steps after a warm-up, from two timestamps.

    On CUDA the clock synchronises only at those two stamps (the end of the warm-up and the
    end of training): per-step synchronisation would leave the device idle at every step's
    start and hide the cost of any synchronisation inside the training step itself.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.samples_after_warmup = 0
        self.t_start: float | None = None
        self.t_end: float | None = None

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.steps += 1
        if self.steps == self.warmup_steps + 1:
            self.t_start = self._now(pl_module)
        elif self.steps > self.warmup_steps + 1:
            self.samples_after_warmup += int(batch[0].shape[0])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t_end = self._now(pl_module)

    def samples_per_sec(self) -> float:
        if self.t_start is None or self.t_end is None or self.samples_after_warmup == 0:
            raise RuntimeError(
                f"the benchmark ran {self.steps} steps, not enough after {self.warmup_steps} "
                "warm-up steps; raise benchmark.steps or lower benchmark.warmup_steps"
            )
        return self.samples_after_warmup / (self.t_end - self.t_start)


class CeilingDataModule(L.LightningDataModule):
    """Replays batches that were augmented and normalised beforehand, already on the device."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> None:
        super().__init__()
        self.batches = batches
        self.steps = steps

    def train_dataloader(self) -> Any:
        batches, steps = self.batches, self.steps

        class _Replay:
            def __len__(self) -> int:
                return steps

            def __iter__(self):  # noqa: ANN204
                for i in range(steps):
                    yield batches[i % len(batches)]

        return _Replay()

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # already resident: the ceiling pays no transfer


def _parse_mode(mode: Any) -> tuple[str, float | None]:
    if mode is False:
        return "off", None  # YAML 1.1 reads an unquoted `off` as false
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        if not 0.0 <= float(mode) <= 1.0:
            raise ConfigError(f"a fixed ratio in `benchmark.modes` must be in [0, 1], got {mode!r}")
        return "fixed", float(mode)
    if mode in ("off", "gpu", "auto", "ceiling"):
        return str(mode), None
    raise ConfigError(
        "`benchmark.modes` entries must be 'off', 'gpu', 'auto', 'ceiling' or a ratio in [0, 1], "
        f"got {mode!r}"
    )


def _trainer(cfg: DictConfig, callbacks: list[L.Callback], steps: int, out_dir: Path) -> L.Trainer:
    return instantiate(
        cfg.trainer,
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


def _ceiling_batches(
    cfg: DictConfig, n: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from ff_lightning.train import build_datamodule

    dm = build_datamodule(cfg)
    dm.num_workers = 0
    loader = dm.train_dataloader()
    batches = []
    for i, batch in enumerate(loader):
        if i >= n:
            break
        batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
        x, y = dm.on_after_batch_transfer(batch, 0)
        batches.append((x.contiguous(), y))
    return batches


def run_one(cfg: DictConfig, mode: str, ratio: float | None, out_dir: Path) -> dict[str, Any]:
    """Train ``benchmark.steps`` steps in one mode and return its measured throughput."""
    from ff_lightning import FusionFlow
    from ff_lightning.train import build_datamodule

    b = cfg.benchmark
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = instantiate(cfg.model)
    clock = StepClock(b.warmup_steps)
    t0 = time.perf_counter()
    if mode == "ceiling":
        # Build the batches where the model will run, so Lightning's transfer is a no-op.
        wants_gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto")
        device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
        dm: Any = CeilingDataModule(_ceiling_batches(cfg, b.ceiling_batches, device), b.steps)
        callbacks: list[L.Callback] = [clock]
        fusion = None
    else:
        dm = build_datamodule(cfg)
        kwargs: dict[str, Any] = {"mode": mode, "reserve_mb": cfg.fusionflow.reserve_mb}
        if mode == "fixed":
            kwargs["ratio"] = ratio
        if mode == "auto":
            kwargs.update(interval="steps", every_n_steps=b.auto_every_n_steps)
        fusion = FusionFlow(**kwargs)
        callbacks = [fusion, clock]
    trainer = _trainer(cfg, callbacks, b.steps, out_dir)
    trainer.fit(model, datamodule=dm)
    result: dict[str, Any] = {
        "mode": mode if mode != "fixed" else f"fixed:{ratio:g}",
        "ratio": fusion.ratio if fusion is not None else None,
        "samples_per_sec": clock.samples_per_sec(),
        "steps": clock.steps,
        "wall_seconds": time.perf_counter() - t0,
    }
    if mode == "ceiling":
        result["ratio"] = 1.0
    if fusion is not None and mode == "auto":
        result["decisions"] = [
            {k: d.get(k) for k in ("ratio", "kind", "reason", "throughput")}
            for d in (x.to_dict() if hasattr(x, "to_dict") else x for x in fusion.history)
        ]
    return result


def summarise(results: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """The contract's ratios from per-mode results."""
    by_mode = {r["mode"]: r["samples_per_sec"] for r in results}
    fixed = [
        r["samples_per_sec"]
        for r in results
        if r["mode"].startswith("fixed") or r["mode"] in ("off", "gpu")
    ]
    out: dict[str, Any] = {"device": device, "results": results}
    auto = by_mode.get("auto")
    out["best_fixed"] = max(fixed) if fixed else None
    out["auto_vs_best_fixed"] = auto / max(fixed) if auto and fixed else None
    out["auto_vs_off"] = auto / by_mode["off"] if auto and by_mode.get("off") else None
    out["auto_vs_ceiling"] = auto / by_mode["ceiling"] if auto and by_mode.get("ceiling") else None
    return out


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    best = summary.get("best_fixed") or 1.0
    table = Table(title=f"ff_lightning benchmark ({summary['device']})")
    for col in ("mode", "final ratio", "samples/s (mean)", "rounds", "vs best fixed"):
        table.add_column(col, justify="right")
    for r in summary["results"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        rounds = " ".join(f"{v:.0f}" for v in r.get("rounds", []))
        table.add_row(
            r["mode"],
            ratio,
            f"{r['samples_per_sec']:.1f}",
            rounds,
            f"{r['samples_per_sec'] / best:.3f}",
        )
    Console().print(table)
    for key in ("auto_vs_best_fixed", "auto_vs_off", "auto_vs_ceiling"):
        v = summary.get(key)
        Console().print(f"{key}: {v:.3f}" if v is not None else f"{key}: n/a")


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured mode side by side and write ``benchmark.json``."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    b = cfg.benchmark
    if int(b.steps) <= int(b.warmup_steps) + 1:
        raise ConfigError(
            f"`benchmark.steps` must exceed `benchmark.warmup_steps` + 1, got steps={b.steps}, warmup={b.warmup_steps}"
        )
    modes = [_parse_mode(m) for m in b.modes]
    threads = b.get("torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    accel = cfg.trainer.accelerator
    device = (
        torch.cuda.get_device_name(0)
        if accel in ("gpu", "cuda") and torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    repeats = int(b.get("repeats", 1))
    if repeats < 1:
        raise ConfigError(f"`benchmark.repeats` must be an integer >= 1, got {repeats}")
    # Rounds interleave the modes (off, gpu, ..., off, gpu, ...) so that slow drifts of a shared
    # machine's speed hit every mode alike; each mode reports the mean over its rounds.
    runs: dict[str, list[dict[str, Any]]] = {}
    total = repeats * len(modes)
    k = 0
    for rnd in range(repeats):
        for mode, ratio in modes:
            k += 1
            label = mode if ratio is None else f"fixed:{ratio:g}"
            log.info("benchmark %d/%d (round %d): %s", k, total, rnd + 1, label)
            r = run_one(cfg, mode, ratio, out_dir)
            log.info(
                "  %s: %.1f samples/s (final ratio %s)", label, r["samples_per_sec"], r["ratio"]
            )
            runs.setdefault(r["mode"], []).append(r)
    results = []
    for label, rs in runs.items():
        merged = dict(rs[-1])
        merged["samples_per_sec"] = sum(x["samples_per_sec"] for x in rs) / len(rs)
        merged["rounds"] = [x["samples_per_sec"] for x in rs]
        if label == "auto":
            merged["final_ratios"] = [x["ratio"] for x in rs]
        results.append(merged)
    summary = summarise(results, device)
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    summary["torch"] = torch.__version__
    with open(out_dir / "benchmark.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    _print_table(summary)
    log.info("benchmark written to %s", out_dir / "benchmark.json")
    return summary
