"""Both Lightning namespaces: a `pytorch_lightning` Trainer and a `lightning.pytorch` one."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.frontends.namespaces import NAMESPACES, overrides
from tests.test_datamodule import TensorImages

pytest.importorskip("pytorch_lightning")


def _module_class(ns: Any) -> type:
    class Net(ns.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3 * 32 * 32, 4)
            self.seen: list[str] = []
            self.dtypes: list[torch.dtype] = []

        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            self.seen.append("before")
            return batch

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            self.seen.append("after")
            return batch

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            self.dtypes.append(x.dtype)
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Net


def test_both_namespaces_are_known() -> None:
    assert NAMESPACES == ("lightning.pytorch", "pytorch_lightning")


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_fit_works_under_either_trainer(namespace: str) -> None:
    ns = importlib.import_module(namespace)
    dm = FusionDataModule(TensorImages(), image_size=32, batch_size=8, num_workers=0, seed=1)
    assert isinstance(dm, ns.LightningDataModule)
    cb = FusionFlow(mode="fixed", ratio=0.5)
    assert isinstance(cb, ns.Callback)
    model = _module_class(ns)()
    trainer = ns.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[cb],
    )
    trainer.fit(model, datamodule=dm)
    # The user's hooks ran around ours, and the batches were split and normalised.
    assert model.seen == ["before", "after"] * 2
    assert model.dtypes == [torch.float32] * 2
    assert dm.device_stage.steps == 2 and dm.device_stage.last.n_device == 4
    assert cb.ratio == 0.5 and all(d.reason for d in cb.history)


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_overrides_sees_the_user_hooks_of_either_namespace(namespace: str) -> None:
    ns = importlib.import_module(namespace)
    model = _module_class(ns)()
    assert overrides(model, "on_before_batch_transfer")
    assert overrides(model, "training_step")
    assert not overrides(model, "transfer_batch_to_device")  # Lightning's default
    assert not overrides(ns.LightningModule(), "on_after_batch_transfer")
