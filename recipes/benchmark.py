"""Benchmark the FusionFlow modes side by side on one training job.

    python recipes/benchmark.py                          # quick light regime, a few minutes on 2 cores
    python recipes/benchmark.py experiment=bench_light   # the same job, all modes, 2 x 300 steps
    python recipes/benchmark.py experiment=bench_heavy   # heavy model
    python recipes/benchmark.py experiment=bench_224     # 224 px images, RandAugment with 2 ops
    python recipes/benchmark.py benchmark.modes=[torchvision,off,auto] benchmark.steps=100
    python recipes/benchmark.py -m data.num_workers=1,2 data.batch_size=32,64   # a sweep

Writes benchmark.json (per-mode samples/s; auto_vs_best_fixed, auto_vs_off, auto_vs_ceiling,
auto_vs_torchvision, off_vs_torchvision; the environment) and benchmark.png (samples/s per
mode, when matplotlib is installed) into the Hydra run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from ff_lightning.app.bench import run_benchmark
    from ff_lightning.app.cli import recipe_errors

    # Each mode builds a Trainer; keep Lightning's per-Trainer banners out of the output.
    for name in ("lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).propagate = False
    with recipe_errors():
        run_benchmark(cfg)


if __name__ == "__main__":
    from ff_lightning.app.cli import check_command_line, recipe_errors

    # Hydra reports a misspelled option or key in several lines: check the command line first.
    with recipe_errors():
        check_command_line(CONFIG_DIR, "benchmark")
    main()
