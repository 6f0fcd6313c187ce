"""The CPU objective in a real Trainer on CPU: 2 -> 1 workers through Lightning's dataloader
reload, with the sample order, the routing and the augmentation unchanged across the rebuild.

The clock is injected: the callback's clock advances 1 s per training step and the device
stage sees each batch in hand at once (no data wait), so the job is device-bound whatever the
machine does and the controller's decisions are exact.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.frontends import callback as callback_module
from ff_lightning.pipeline.device import stage as stage_module

from .test_datamodule import TensorImages, TinyNet

B, N = 4, 48  # 12 steps per epoch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def step(self) -> float:  # the callback's reading: one training step is 1 s
        self.now += 1.0
        return self.now

    def read(self) -> float:  # the device stage's reading: the batch is in hand at once
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(callback_module, "time", SimpleNamespace(perf_counter=c.step))
    monkeypatch.setattr(stage_module, "time", SimpleNamespace(perf_counter=c.read))
    return c


class Metrics(Logger):
    """Keeps every logged metric dict."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append(dict(metrics))


class Spy(TinyNet):
    """Records, per training batch, the epoch, the dataset indices, the device-routed count and
    the images the model receives; per epoch, the loader's workers and the live processes."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[int, list[int], int]] = []
        self.images: dict[tuple[int, int], torch.Tensor] = {}
        self.order: dict[int, list[int]] = {}
        self.n_device: dict[int, list[int]] = {}
        self.loader_workers: list[int] = []
        self.live_workers: list[int] = []

    def on_train_epoch_start(self) -> None:
        self.loader_workers.append(self.trainer.train_dataloader.num_workers)
        self.live_workers.append(-1)  # filled at the first batch, once the workers run

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if "route" in batch:
            route = batch["route"]
            epoch = self.trainer.current_epoch
            self.pending.append((epoch, route.indices.tolist(), int(route.device_mask.sum())))
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and self.pending:
            epoch, indices, n_dev = self.pending.pop(0)
            images, _ = batch
            for i, idx in enumerate(indices):
                self.images[(epoch, idx)] = images[i].clone()
            self.order.setdefault(epoch, []).extend(indices)
            self.n_device.setdefault(epoch, []).append(n_dev)
            if self.live_workers[-1] < 0:
                self.live_workers[-1] = _live_children(self.trainer.train_dataloader.num_workers)
        return batch


def _live_children(expected: int, timeout_s: float = 10.0) -> int:
    """Live child processes, once no more than ``expected`` or after ``timeout_s``: a replaced
    loader's workers exit asynchronously (joined when its iterator is collected), so a busy
    machine may still show them for a moment; a leaked loader would keep them for good."""
    deadline = time.monotonic() + timeout_s
    while len(multiprocessing.active_children()) > expected and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return len(multiprocessing.active_children())


def _fit(tmp_path: Path, fusion: FusionFlow, epochs: int = 3) -> tuple[Spy, Metrics, Any]:
    dm = FusionDataModule(TensorImages(N), image_size=32, batch_size=B, num_workers=2, seed=5)
    model, logger = Spy(), Metrics()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[fusion],
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    return model, logger, trainer


def test_cpu_objective_reloads_the_loader_with_one_worker_and_keeps_every_sample(
    tmp_path: Path, clock: Clock
) -> None:
    kw: dict[str, Any] = dict(warmup_steps=1, controller_kwargs={"min_ratio": 0.25})
    fusion = FusionFlow(
        "auto", objective="cpu", report=True, report_dir=str(tmp_path / "report"), **kw
    )
    spy, logger, trainer = _fit(tmp_path / "cpu", fusion)

    workers = [d for d in fusion.history if d.kind == "workers"]
    assert [(d.prev_workers, d.workers) for d in workers] == [(2, 1), (1, 1)]
    assert workers[0].reason == (
        "workers: 2 workers settled at r=0.25 (4 samples/s); trying 1, device share r=0.25 "
        "from the cost model"
    )
    assert workers[1].reason == (
        "workers: 1 worker at r=0.25 within tolerance (+0.0% vs the best 4); at the minimum, "
        "1 of 2 workers saved (50%)"
    )
    # Lightning rebuilt the loader for epoch 1; the old loader's two workers are gone.
    assert spy.loader_workers == [2, 1, 1]
    assert spy.live_workers == [2, 1, 1]
    assert trainer.reload_dataloaders_every_n_epochs == 0  # the Trainer's own value is back
    logged = [m["fusionflow/workers"] for m in logger.logged if "fusionflow/workers" in m]
    assert logged[0] == 2.0 and logged[-1] == 1.0 and set(logged) == {1.0, 2.0}
    # The routing survived the rebuild: every batch carries the controller's share (1 of 4).
    assert spy.n_device[0] == spy.n_device[1] == [1] * (N // B)

    # The same job at a fixed share with 2 workers throughout: the same order, the same images.
    ref, _, _ = _fit(tmp_path / "ref", FusionFlow("fixed", 0.25))
    assert spy.order == ref.order
    assert all(sorted(v) == list(range(N)) for v in spy.order.values())
    assert spy.images.keys() == ref.images.keys()
    for key, image in ref.images.items():
        assert torch.equal(spy.images[key], image), f"(epoch, index) {key} differs"

    report = json.loads((tmp_path / "report" / "fusionflow_report.json").read_text())
    assert report["workers"] == {"configured": 2, "final": 1, "saved": 1}


def test_throughput_objective_never_touches_the_loader(tmp_path: Path, clock: Clock) -> None:
    fusion = FusionFlow("auto", warmup_steps=1)
    spy, logger, _ = _fit(tmp_path, fusion, epochs=2)
    assert spy.loader_workers == [2, 2]
    assert not [d for d in fusion.history if d.kind == "workers"]
    assert not any("fusionflow/workers" in m for m in logger.logged)


def test_accelerate_adapter_rebuilds_its_loader_for_the_cpu_objective(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    from ff_lightning.frontends import accelerate as accelerate_module
    from ff_lightning.frontends.accelerate import FusionAccelerate

    monkeypatch.setattr(accelerate_module, "time", SimpleNamespace(perf_counter=clock.step))

    def run(**kw: Any) -> tuple[FusionAccelerate, list[int], dict[tuple[int, int], torch.Tensor]]:
        dm = FusionDataModule(TensorImages(N), image_size=32, batch_size=B, num_workers=2, seed=5)
        fusion = FusionAccelerate(dm, warmup_steps=1, **kw)
        workers, images = [], {}
        for epoch in range(3):
            workers.append(fusion.train_loader.num_workers)  # the loader this epoch runs on
            for x, _, idx in fusion.train_epoch(epoch, with_indices=True):
                for i, k in enumerate(idx.tolist()):
                    images[(epoch, k)] = x[i].clone()
        return fusion, workers, images

    fusion, workers, images = run(
        mode="auto", objective="cpu", controller_kwargs={"min_ratio": 0.25}
    )
    moves = [(d.prev_workers, d.workers) for d in fusion.history if d.kind == "workers"]
    assert moves == [(2, 1), (1, 1)]
    assert workers == [2, 1, 1]  # rebuilt with one worker after epoch 0
    assert fusion.controller.workers == fusion.datamodule.train_workers == 1
    _, _, ref = run(mode="fixed", ratio=0.25)
    assert images.keys() == ref.keys()
    assert all(torch.equal(images[k], ref[k]) for k in ref)
