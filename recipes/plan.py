"""How many CPU workers does the job need? Measure it at several worker counts, CPU-only and auto.

    python recipes/plan.py                             # bench_light's job, 1 .. all usable CPUs
    python recipes/plan.py plan.workers=[1,2,4,8]      # chosen counts
    python recipes/plan.py experiment=bench_heavy plan.steps=150

Prints a table (workers, CPU-only samples/s, auto samples/s, auto's share) and a recommendation
in plain words, e.g. "auto with 1 worker matches CPU-only with 2 workers (...): 1 CPU (50%)
saved"; writes plan.json and plan.png (when matplotlib is installed) into the Hydra run
directory. Same configs as train.py and benchmark.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="plan")
def main(cfg: DictConfig) -> None:
    from ff_lightning.app.cli import recipe_errors
    from ff_lightning.app.plan import run_plan

    logging.getLogger("lightning.pytorch").propagate = False
    with recipe_errors():
        run_plan(cfg)


if __name__ == "__main__":
    from ff_lightning.app.cli import check_command_line, recipe_errors

    # Hydra reports a misspelled option or key in several lines: check the command line first.
    with recipe_errors():
        check_command_line(CONFIG_DIR, "plan")
    main()
