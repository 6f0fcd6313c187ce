"""The runs users make, each ending in correct training or one clear error: bad arguments,
gradient accumulation, refits, two callbacks, a loader without its DataModule, a user
``transfer_batch_to_device``, ``trainer.test`` without a test set."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.errors import ConfigError
from ff_lightning.testing import FakeProbe
from tests.test_datamodule import TensorImages, TinyNet


def _dm(**kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(image_size=32, batch_size=8, num_workers=0, seed=0)
    args.update(kw)
    return FusionDataModule(TensorImages(32), TensorImages(8, seed=1), **args)


def _trainer(tmp_path: Path, callbacks: list, **kw: Any) -> L.Trainer:
    args: dict[str, Any] = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )
    args.update(kw)
    return L.Trainer(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(policy=None), r"`policy` must be a policy name .* got None; use policy='none'"),
        (dict(hflip="no"), r"`hflip` must be true or false, got 'no'"),
        (dict(drop_last="False"), r"`drop_last` must be true or false, got 'False'"),
        (dict(seed=1.7), r"`seed` must be an integer in \[0, 9223372036854775807\], got 1.7"),
        (dict(seed=-1), r"`seed` must be an integer in \[0"),
        (dict(policy_kwargs={"fill": "black"}), r"`fill` must be a number or a sequence .*'black'"),
        (dict(policy_kwargs=[("num_ops", 2)]), r"`policy_kwargs` must be a dict"),
    ],
)
def test_bad_datamodule_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _dm(**kwargs)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_reserve_is_rejected(value: float) -> None:
    with pytest.raises(ConfigError, match=r"`reserve_mb` must be a finite number of MiB"):
        FusionFlow(reserve_mb=value)


def test_the_largest_seed_trains() -> None:
    dm = _dm(seed=2**63 - 1)
    dm.set_ratio(0.5)
    batch = next(iter(dm.train_dataloader()))
    x, _ = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    assert x.shape == (8, 3, 32, 32)


def test_the_datamodules_reserve_is_used_unless_the_callback_sets_one(tmp_path) -> None:
    dm = _dm(reserve_mb=5)
    cb = FusionFlow(mode="fixed", ratio=0.5, probe=FakeProbe(free=1 << 30))
    _trainer(tmp_path, [cb], max_steps=1).fit(TinyNet(), datamodule=dm)
    assert cb.session.guard.reserve_bytes == 5 << 20
    other = FusionFlow(mode="fixed", ratio=0.5, reserve_mb=7, probe=FakeProbe(free=1 << 30))
    with pytest.warns(UserWarning, match=r"`reserve_mb`=7 replaces the DataModule's reserve_mb=5"):
        _trainer(tmp_path, [other], max_steps=1).fit(TinyNet(), datamodule=_dm(reserve_mb=5))
    assert other.session.guard.reserve_bytes == 7 << 20


def test_gradient_accumulation_counts_optimizer_steps_and_logs_each_once(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    cb = FusionFlow(
        mode="auto", interval="steps", every_n_steps=4, warmup_steps=0, log_every_n_steps=1
    )
    trainer = _trainer(
        tmp_path,
        [cb],
        max_epochs=3,  # 4 batches per epoch, 2 per optimizer step: 6 optimizer steps
        accumulate_grad_batches=2,
        logger=CSVLogger(str(tmp_path), name="logs"),
        log_every_n_steps=1,
    )
    trainer.fit(TinyNet(), datamodule=_dm())
    assert trainer.global_step == 6
    # Decisions every 4 optimizer steps (not every 4 batches): one in 6 steps.
    assert len(cb.history) - 1 == 1
    rows = list(csv.DictReader(open(next(Path(tmp_path).glob("logs/*/metrics.csv")))))
    steps = [r["step"] for r in rows if r.get("fusionflow/ratio")]
    assert len(steps) == len(set(steps)), steps  # no step logged twice


def test_a_refit_without_fusionflow_uses_the_datamodules_own_share(tmp_path) -> None:
    dm = _dm(ratio=0.0)
    cb = FusionFlow(mode="gpu")
    _trainer(tmp_path, [cb], max_steps=2).fit(TinyNet(), datamodule=dm)
    assert dm.ratio == cb.ratio == 1.0  # the controller's share while it drives
    seen: list[int] = []

    class Count(TinyNet):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            seen.append(batch["route"].n_device)
            return batch

    _trainer(tmp_path, [], max_steps=2).fit(Count(), datamodule=dm)
    assert dm.ratio == 0.0 and seen == [0, 0]


def test_two_fusionflow_callbacks_are_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"2 FusionFlow callbacks \(modes 'auto', 'gpu'\)"):
        _trainer(tmp_path, [FusionFlow("auto"), FusionFlow("gpu")]).fit(TinyNet(), datamodule=_dm())


def test_a_loader_used_without_its_datamodule_says_how_to_fix_it(tmp_path) -> None:
    dm = _dm()
    with pytest.raises(TypeError, match=r"raw batch.*trainer.fit\(model, datamodule=dm\)"):
        _trainer(tmp_path, [], max_steps=1).fit(TinyNet(), train_dataloaders=dm.train_dataloader())


def test_a_user_transfer_batch_to_device_is_called_or_explained(tmp_path) -> None:
    class Unpacks(TinyNet):
        def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
            x, y = batch  # written for (images, targets)
            return x.to(device), y.to(device)

    with pytest.raises(
        ConfigError, match=r"Unpacks.transfer_batch_to_device failed on .*raw batch"
    ):
        _trainer(tmp_path, [], max_steps=1).fit(Unpacks(), datamodule=_dm())

    calls: list[str] = []

    class ByKey(TinyNet):
        def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
            calls.append(sorted(batch.keys())[0])
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, [], max_steps=1).fit(ByKey(), datamodule=_dm())
    assert calls == ["images"]
    assert not [w for w in caught if "in both" in str(w.message)]  # no misleading warning


def test_trainer_test_without_a_test_set_says_so(tmp_path) -> None:
    class Testable(TinyNet):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            pass

    with pytest.raises(ConfigError, match=r"`trainer.test` needs a test set: pass `test_dataset=`"):
        _trainer(tmp_path, []).test(Testable(), datamodule=_dm())
    ran: list[int] = []

    class Counted(Testable):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            ran.append(batch[0].shape[0])

    dm = FusionDataModule(
        TensorImages(16),
        test_dataset=TensorImages(8, seed=2),
        image_size=32,
        batch_size=8,
        num_workers=0,
    )
    _trainer(tmp_path, []).test(Counted(), datamodule=dm)
    assert ran == [8]
