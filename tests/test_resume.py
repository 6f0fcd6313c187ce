"""Exact mid-epoch resume: the resumed run trains exactly the remaining batches of the epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.pipeline.loader import ResumableDataLoader
from tests.test_datamodule import TensorImages, TinyNet


class Recorder(TinyNet):
    """Records, per training step, the dataset indices and the images the step receives."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[list[int]] = []
        self.order: list[list[int]] = []
        self.images: dict[int, torch.Tensor] = {}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if "route" in batch:
            self._pending.append(batch["route"].indices.tolist())
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        idx = self._pending.pop(0)
        self.order.append(idx)
        for i, k in enumerate(idx):
            self.images[k] = batch[0][i].detach().clone()
        return super().training_step(batch, batch_idx)


def _dm(workers: int) -> FusionDataModule:
    return FusionDataModule(
        TensorImages(96),  # 12 batches of 8 per epoch
        image_size=32,
        batch_size=8,
        num_workers=workers,
        persistent_workers=False,
        seed=4,
    )


def _trainer(tmp: Path, **kw: Any) -> L.Trainer:
    args: dict[str, Any] = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp),
        callbacks=[FusionFlow(mode="fixed", ratio=0.5)],
    )
    args.update(kw)
    return L.Trainer(**args)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_at", [4, 16])  # mid-epoch 0, and mid-epoch 1
def test_resume_trains_exactly_the_remaining_batches(
    tmp_path: Path, workers: int, stop_at: int
) -> None:
    full = Recorder()
    _trainer(tmp_path / "full", max_epochs=2, enable_checkpointing=False).fit(
        full, datamodule=_dm(workers)
    )
    assert len(full.order) == 24

    first = Recorder()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=stop_at, save_top_k=-1)
    _trainer(tmp_path / "a", max_steps=stop_at, callbacks=[ckpt_cb, FusionFlow("fixed", 0.5)]).fit(
        first, datamodule=_dm(workers)
    )
    ckpt = next((tmp_path / "ckpt").glob(f"*step={stop_at}*.ckpt"))
    state = torch.load(ckpt, weights_only=False)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": stop_at // 12, "batches": stop_at % 12}
    ]

    rest = Recorder()
    _trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=False).fit(
        rest, datamodule=_dm(workers), ckpt_path=str(ckpt)
    )
    # No batch trained twice, none skipped, in the same order as the uninterrupted run ...
    assert first.order + rest.order == full.order
    # ... and each (epoch, index) got the same augmentation.
    epoch1 = {k for b in full.order[12:] for k in b}
    for k, x in rest.images.items():
        if k in epoch1 or stop_at < 12:
            torch.testing.assert_close(x, full.images[k], rtol=0, atol=0)


def test_loader_state_round_trip_skips_without_loading() -> None:
    dm = _dm(0)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    it = iter(loader)
    seen = [next(it)["route"].indices.tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 3}
    fresh = _dm(0).train_dataloader()
    fresh.load_state_dict(state)
    rest = [b["route"].indices.tolist() for b in fresh]
    again = [b["route"].indices.tolist() for b in _dm(0).train_dataloader()]
    assert seen + rest == again and len(rest) == 9
    # A bad state names what is expected.
    with pytest.raises(ValueError, match="`epoch` and `batches`"):
        fresh.load_state_dict({"position": 3})
