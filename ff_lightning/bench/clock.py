"""Training throughput over the steps after a warm-up."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


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
            torch.cuda.synchronize(pl_module.device)  # sync point: the two stamps only
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
        # Warm-up skip: worker start-up and allocator warm-up are not the pipeline's speed.
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
