"""Training throughput in samples per second: one meter, two Lightning faces.

:class:`ThroughputMeter` is the plain meter (no Trainer): samples and wall time with pause and
resume, per epoch. :class:`ThroughputTracker` feeds it from the Trainer's hooks with validation
paused out (``recipes/train.py``'s ``train_samples_per_sec``); :class:`StepClock` feeds it the
steps after a warm-up (the benchmark's samples/s). The Accelerate recipe uses the meter itself.
Lightning's own ``Throughput`` keeps a rolling window of rates; these runs need totals with
validation paused out, hence this meter.
"""

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
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and isinstance(batch[0], (list, dict))
        and isinstance(batch[1], torch.Tensor)
    ):
        return int(batch[1].shape[0])  # multi-view (views, targets): one target per sample
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


class StepClock(L.Callback):
    """Training throughput over the steps after a warm-up (the benchmark's measure).

    The meter starts at the end of the warm-up and stops at the end of training. On CUDA the
    clock synchronises only at those two stamps: per-step synchronisation would leave the
    device idle at every step's start and hide the cost of any synchronisation inside the
    training step itself.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.meter = ThroughputMeter()

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # sync point: the two stamps only

    @property
    def samples_after_warmup(self) -> int:
        return self.meter.samples

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
            self._sync(pl_module)
            self.meter.start()
        elif self.steps > self.warmup_steps + 1:
            self.meter.add(_batch_size(batch))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self.meter.pause()

    def samples_per_sec(self) -> float:
        if self.meter.samples == 0 or self.meter.seconds <= 0:
            raise RuntimeError(
                f"the benchmark ran {self.steps} steps, not enough after {self.warmup_steps} "
                "warm-up steps; raise benchmark.steps or lower benchmark.warmup_steps"
            )
        return self.meter.samples_per_sec
