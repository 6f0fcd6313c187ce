"""Benchmark the FusionFlow modes side by side on one training job.

    python recipes/benchmark.py                          # light model on the embedded dataset
    python recipes/benchmark.py experiment=bench_heavy   # heavy model
    python recipes/benchmark.py benchmark.modes=[off,auto] benchmark.steps=100

Writes benchmark.json (per-mode samples/s, auto_vs_best_fixed, auto_vs_off, auto_vs_ceiling)
into the Hydra run directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from ff_lightning.benchmark import run_benchmark
    from ff_lightning.errors import FFLightningError

    logging.getLogger("lightning.pytorch").propagate = False
    try:
        run_benchmark(cfg)
    except FFLightningError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
