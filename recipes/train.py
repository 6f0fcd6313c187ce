"""Train a classifier with cooperative CPU/device augmentation.

    python recipes/train.py                                   # embedded dataset, defaults
    python recipes/train.py fusionflow=off trainer.max_epochs=1
    python recipes/train.py data=imagefolder data.root=/data/imagenet data.num_classes=1000 \
        model=resnet50 trainer=gpu trainer.max_epochs=90

Writes metrics.json (val_acc, train_samples_per_sec, offload_ratio, epochs, ...) into the Hydra
run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from ff_lightning.app.cli import recipe_errors
    from ff_lightning.app.train import train

    # Hydra's root handler already prints Lightning's messages; don't print them twice.
    logging.getLogger("lightning.pytorch").propagate = False
    # A configuration or data problem the user can fix: one `error:` line, exit status 2.
    with recipe_errors():
        metrics = train(cfg)
    return float(metrics["val_acc"])


if __name__ == "__main__":
    from ff_lightning.app.cli import check_command_line, recipe_errors

    # Hydra reports a misspelled option or key in several lines: check the command line first.
    with recipe_errors():
        check_command_line(CONFIG_DIR, "train")
    main()
