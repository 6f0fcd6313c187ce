"""Nothing Lightning, the DataLoader or spawn pickles holds a local closure."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch

from ff_lightning import FusionDataModule, FusionFlow
from tests.test_datamodule import TensorImages, TinyNet


def _dm(**kw: object) -> FusionDataModule:
    args: dict = dict(image_size=32, batch_size=8, num_workers=0, seed=2)
    args.update(kw)
    return FusionDataModule(TensorImages(32), TensorImages(8, seed=1), **args)


def test_datamodule_and_callback_pickle_before_and_after_attaching() -> None:
    dm, cb = _dm(), FusionFlow(mode="fixed", ratio=0.5)
    for obj in (dm, cb, dm.train_dataloader().dataset, dm.router):
        pickle.loads(pickle.dumps(obj))
    cb.session.attach(dm.pipeline, torch.device("cpu"))  # binds the router to the controller
    dm2 = pickle.loads(pickle.dumps(dm))
    assert dm2.ratio == 0.5  # the share still comes from a (copied) controller


def test_spawned_workers_produce_the_same_batches_as_forked_ones() -> None:
    ref = _dm(num_workers=1, multiprocessing_context="fork")
    spawned = _dm(num_workers=1, multiprocessing_context="spawn", persistent_workers=False)
    ref.set_ratio(0.5)
    spawned.set_ratio(0.5)
    a = next(iter(ref.train_dataloader()))
    b = next(iter(spawned.train_dataloader()))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
    assert torch.equal(a["route"].device_index, b["route"].device_index)


def test_bad_start_method_is_named() -> None:
    with pytest.raises(ValueError, match=r"`multiprocessing_context` must be one of"):
        _dm(multiprocessing_context="threads")


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path) -> None:
    cb = FusionFlow(mode="fixed", ratio=0.25)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
    )
    model = TinyNet()
    before = model.layer.weight.detach().clone()
    trainer.fit(model, datamodule=_dm())  # used to fail pickling a local closure
    # The spawned ranks trained: rank 0's weights come back to the parent process.
    assert not torch.equal(before, model.layer.weight.detach())
