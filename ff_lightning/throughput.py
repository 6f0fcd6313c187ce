"""Training throughput measured in samples per second, validation time excluded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch


class ThroughputMeter:
    """Accumulates training samples and training wall time with pause/resume (no Trainer)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self.epochs: list[dict[str, float]] = []
        self._t0: float | None = None
        self._epoch_samples = 0
        self._epoch_seconds = 0.0

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = self.clock()

    def pause(self) -> None:
        if self._t0 is not None:
            dt = self.clock() - self._t0
            self.seconds += dt
            self._epoch_seconds += dt
            self._t0 = None

    def add(self, n: int) -> None:
        self.samples += n
        self._epoch_samples += n

    def end_epoch(self) -> None:
        self.pause()
        if self._epoch_samples:
            self.epochs.append(
                {
                    "samples": float(self._epoch_samples),
                    "seconds": self._epoch_seconds,
                    "samples_per_sec": self._epoch_samples / max(self._epoch_seconds, 1e-9),
                }
            )
        self._epoch_samples = 0
        self._epoch_seconds = 0.0

    @property
    def samples_per_sec(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def _batch_size(batch: Any) -> int:
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    if isinstance(batch, dict) and isinstance(batch.get("images"), torch.Tensor):
        return int(batch["images"].shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 0


class ThroughputTracker(L.Callback):
    """Times training epochs (validation paused out) and counts the samples trained on."""

    def __init__(self) -> None:
        self.meter = ThroughputMeter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.start()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.meter.add(_batch_size(batch))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.pause()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resume only when validation ran inside fitting (mid-epoch or at the epoch's end).
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.meter.start()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.meter.end_epoch()
