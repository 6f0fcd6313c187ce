"""Exact mid-epoch resume: the resumed run trains exactly the remaining batches of the epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.errors import ConfigError
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
        {
            "version": 2,
            "epoch": stop_at // 12,
            "samples": 8 * (stop_at % 12),
            "batches": stop_at % 12,
            "batch_size": 8,
            "dataset_len": 96,
            "seed": 4,
            "replicas": 1,
        }
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
    assert state["epoch"] == 0 and state["samples"] == 24 and state["batch_size"] == 8
    again = [b["route"].indices.tolist() for b in _dm(0).train_dataloader()]
    # This release's state, and the previous release's {epoch, batches}, resume alike.
    for saved in (state, {"epoch": 0, "batches": 3}):
        fresh = _dm(0).train_dataloader()
        fresh.load_state_dict(saved)
        rest = [b["route"].indices.tolist() for b in fresh]
        assert seen + rest == again and len(rest) == 9
    # A bad state names what is expected.
    with pytest.raises(ValueError, match="`epoch` and `samples`"):
        fresh.load_state_dict({"position": 3})


def _flat(batches: list[list[int]]) -> list[int]:
    return [k for b in batches for k in b]


@pytest.mark.parametrize(("before", "after"), [(8, 16), (16, 8), (8, 12)])
def test_a_changed_batch_size_resumes_at_the_same_sample(before: int, after: int) -> None:
    def dm(batch: int, n: int = 64) -> FusionDataModule:
        return FusionDataModule(
            TensorImages(n), image_size=16, batch_size=batch, num_workers=0, seed=4
        )

    full = _flat([b["route"].indices.tolist() for b in dm(before).train_dataloader()])
    loader = dm(before).train_dataloader()
    it = iter(loader)
    first = _flat([next(it)["route"].indices.tolist() for _ in range(3)])  # 3 batches taken
    resumed = dm(after).train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    rest = [b["route"].indices.tolist() for b in resumed]
    # Every sample of the epoch exactly once, in the uninterrupted order ...
    assert first + _flat(rest) == full and len(set(full)) == 64
    # ... the rest in batches of the new size (a short last one).
    assert all(len(b) == after for b in rest[:-1]) and 0 < len(rest[-1]) <= after


def test_a_changed_dataset_or_seed_cannot_resume_mid_epoch_silently() -> None:
    def dm(n: int = 64, seed: int = 4) -> FusionDataModule:
        return FusionDataModule(
            TensorImages(n), image_size=16, batch_size=8, num_workers=0, seed=seed
        )

    loader = dm().train_dataloader()
    it = iter(loader)
    next(it), next(it), next(it)
    state = loader.state_dict()
    with pytest.raises(ConfigError, match=r"24 samples into epoch 0.*dataset_len 64 -> 80"):
        dm(n=80).train_dataloader().load_state_dict(state)
    with pytest.raises(ConfigError, match=r"seed 4 -> 5"):
        dm(seed=5).train_dataloader().load_state_dict(state)
    # At an epoch boundary the order of the next epoch is the new dataset's: that is fine.
    boundary = dict(state, epoch=1, samples=0)
    resumed = dm(n=80).train_dataloader()
    resumed.load_state_dict(boundary)
    assert sum(len(b["targets"]) for b in resumed) == 80


@pytest.mark.parametrize(("before", "after"), [(8, 16), (16, 8)])
def test_a_trainer_resumed_with_another_batch_size_trains_each_sample_once(
    tmp_path: Path, before: int, after: int
) -> None:
    def dm(batch: int) -> FusionDataModule:
        return FusionDataModule(
            TensorImages(64), image_size=32, batch_size=batch, num_workers=0, seed=4
        )

    first = Recorder()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    _trainer(tmp_path / "a", max_steps=3, callbacks=[ckpt_cb, FusionFlow("fixed", 0.5)]).fit(
        first, datamodule=dm(before)
    )
    ckpt = next((tmp_path / "ckpt").glob("*step=3*.ckpt"))
    rest = Recorder()
    _trainer(tmp_path / "b", max_epochs=1, enable_checkpointing=False).fit(
        rest, datamodule=dm(after), ckpt_path=str(ckpt)
    )
    trained = _flat(first.order) + _flat(rest.order)
    assert sorted(trained) == list(range(64)), (len(trained), len(set(trained)))
