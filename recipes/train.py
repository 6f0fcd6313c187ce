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
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from ff_lightning.app.train import train
    from ff_lightning.errors import FFLightningError, one_line

    # Hydra's root handler already prints Lightning's messages; don't print them twice.
    logging.getLogger("lightning.pytorch").propagate = False
    try:
        metrics = train(cfg)
    except FFLightningError as err:
        # A configuration or data problem the user can fix: say what, without a traceback.
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    return float(metrics["val_acc"])


if __name__ == "__main__":
    main()
