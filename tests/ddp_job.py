"""A tiny FusionFlow job for the multi-process tests (run as a script, one process per rank).

    python tests/ddp_job.py OUT_DIR [--devices N] [--num-nodes N]

Each rank writes ``OUT_DIR/rank{global_rank}.json`` with the share after every decision and the
dataset indices it trained on, per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ff_lightning import FusionDataModule, FusionFlow  # noqa: E402
from tests.test_datamodule import TensorImages, TinyNet  # noqa: E402


class Recorder(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.indices: dict[int, list[int]] = {}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if "route" in batch:
            self.indices.setdefault(self.current_epoch, []).extend(batch["route"].indices.tolist())
        return batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--num-nodes", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dm = FusionDataModule(TensorImages(64), image_size=32, batch_size=8, num_workers=0, seed=3)
    cb = FusionFlow(mode="auto", interval="steps", every_n_steps=2, warmup_steps=0)
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[cb],
    )
    trainer.fit(model, datamodule=dm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "ratios": [d.ratio for d in cb.history],
        "kinds": [d.kind for d in cb.history],
        "indices": {str(k): v for k, v in model.indices.items()},
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
