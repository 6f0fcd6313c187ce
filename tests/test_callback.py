"""FusionFlow callback wired into a real Trainer on CPU: modes, logging, OOM, checkpoints, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.errors import ConfigError
from ff_lightning.testing.probes import FakeProbe

from .test_datamodule import TensorImages, TinyNet


def _dm(**kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(image_size=32, batch_size=8, num_workers=0, seed=0)
    args.update(kw)
    return FusionDataModule(TensorImages(32), TensorImages(8, seed=1), **args)


def _trainer(cb: L.Callback, tmp_path: Path, **kw: Any) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    args: dict[str, Any] = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(str(tmp_path), name="logs"),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    args.update(kw)
    extra = args.pop("extra_callbacks", [])
    return L.Trainer(callbacks=[cb, *extra], **args)


class RatioSpy(L.Callback):
    """Records the device share of each batch the model received."""

    def __init__(self, dm: FusionDataModule) -> None:
        self.dm = dm
        self.n_device: list[int] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.n_device.append(self.dm.device_stage.last.n_device)


@pytest.mark.parametrize(
    ("mode", "ratio", "expected"), [("off", None, 0), ("gpu", None, 8), ("fixed", 0.25, 2)]
)
def test_fixed_modes_route_the_expected_share(
    mode: str, ratio: float | None, expected: int, tmp_path: Path
) -> None:
    dm = _dm()
    cb = FusionFlow(mode=mode, ratio=ratio, log_every_n_steps=1)
    spy = RatioSpy(dm)
    _trainer(cb, tmp_path, extra_callbacks=[spy]).fit(TinyNet(), datamodule=dm)
    assert spy.n_device == [expected] * 8
    assert cb.ratio == expected / 8
    assert [d.kind for d in cb.history][0] == "init" and len(
        cb.history
    ) == 3  # init + one per epoch
    assert all(d.reason for d in cb.history)


def test_metrics_are_logged_under_fusionflow(tmp_path: Path) -> None:
    dm = _dm()
    cb = FusionFlow(mode="fixed", ratio=0.5, log_every_n_steps=1)
    trainer = _trainer(cb, tmp_path)
    trainer.fit(TinyNet(), datamodule=dm)
    trainer.logger.save()  # type: ignore[union-attr]
    import csv

    # What the user finds in metrics.csv: plain floats, logged without tensors on the device.
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:  # type: ignore[union-attr]
        rows = list(csv.DictReader(f))
    logged = {}
    for row in rows:
        logged.update({k: v for k, v in row.items() if v not in ("", None)})
    for key in (
        "fusionflow/ratio",
        "fusionflow/data_wait_ms",
        "fusionflow/aug_ms",
        "fusionflow/step_ms",
        "fusionflow/worker_aug_ms",
        "fusionflow/device_samples",
    ):
        assert key in logged, key
    assert float(logged["fusionflow/ratio"]) == 0.5
    assert float(logged["fusionflow/device_samples"]) == 4
    assert float(logged["fusionflow/aug_ms"]) > 0 and float(logged["fusionflow/step_ms"]) > 0
    assert float(logged["fusionflow/data_wait_ms"]) >= 0


def test_auto_mode_decides_every_n_steps_with_reasons(tmp_path: Path) -> None:
    dm = _dm()
    cb = FusionFlow(mode="auto", interval="steps", every_n_steps=4, warmup_steps=0)
    _trainer(cb, tmp_path, max_epochs=3).fit(TinyNet(), datamodule=dm)
    decisions = cb.history[1:]
    assert len(decisions) == 3 * 4 // 4
    assert all(isinstance(d.reason, str) and d.reason for d in decisions)
    assert 0.0 <= cb.ratio <= 1.0 and dm.ratio == cb.ratio


def test_needs_a_fusion_datamodule(tmp_path: Path) -> None:
    loader = DataLoader(
        TensorDataset(torch.zeros(4, 3 * 32 * 32), torch.zeros(4, dtype=torch.long)), batch_size=2
    )

    class Flat(TinyNet):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

    with pytest.raises(
        ConfigError, match=r"FusionFlow needs a FusionDataModule.*FusionDataModule\(train_dataset"
    ):
        _trainer(FusionFlow(), tmp_path).fit(Flat(), train_dataloaders=loader)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "fast"}, r"`mode` must be one of \('auto', 'off', 'gpu', 'fixed'\), got 'fast'"),
        ({"mode": "fixed"}, r"`ratio` is required when mode='fixed'"),
        ({"mode": "fixed", "ratio": 1.5}, r"`ratio` must be in \[0, 1\], got 1.5"),
        ({"interval": "hourly"}, r"`interval` must be one of \('epoch', 'steps'\), got 'hourly'"),
        ({"every_n_steps": 0}, r"`every_n_steps` must be an integer >= 1, got 0"),
        ({"reserve_mb": -1}, r"`reserve_mb` must be >= 0"),
        (
            {"mode": "auto", "ratio": 0.3},
            r"`ratio` is only used when mode='fixed', got mode='auto'",
        ),
        ({"controller_kwargs": {"hysteresis": 2.0}}, r"`controller_kwargs`: `hysteresis`"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FusionFlow(**kwargs)


def test_yaml_off_boolean_means_off() -> None:
    assert FusionFlow(mode=False).mode == "off"  # type: ignore[arg-type]


def test_out_of_memory_in_augmentation_falls_back_and_caps(tmp_path: Path) -> None:
    """A forced OOM: chunks halve, then single samples go to the CPU; training goes on."""
    dm = _dm()
    original = dm.policy.apply_batch
    calls: list[int] = []

    def device_apply(images: torch.Tensor, params: Any) -> torch.Tensor:
        calls.append(images.shape[0])
        if images.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (forced by the test)")
        return original(images, params)

    dm.device_stage._apply_device = device_apply  # type: ignore[method-assign]
    dm.device_stage._cpu = lambda x, p: original(x, p)  # type: ignore[method-assign]
    probe = FakeProbe(free=8 << 30, total=16 << 30)
    cb = FusionFlow(mode="gpu", probe=probe, reserve_mb=0)
    expected_dm = _dm()
    _trainer(cb, tmp_path, max_epochs=1).fit(TinyNet(), datamodule=dm)
    guard = dm.memory_guard
    assert guard.oom_events >= 1 and max(calls) == 8 and 2 in calls
    assert guard.cpu_fallback_samples == 0  # chunks of 2 fit: nothing needed the CPU

    # Now even one sample fails: everything routed to the device is augmented on the CPU.
    def always_oom(images: torch.Tensor, params: Any) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (forced by the test)")

    dm2 = _dm()
    dm2.device_stage._apply_device = always_oom  # type: ignore[method-assign]
    dm2.device_stage._cpu = lambda x, p: original(x, p)  # type: ignore[method-assign]
    cb2 = FusionFlow(mode="gpu", probe=FakeProbe(free=8 << 30, total=16 << 30), reserve_mb=0)
    spy = RatioSpy(dm2)
    _trainer(cb2, tmp_path, max_epochs=1, extra_callbacks=[spy]).fit(TinyNet(), datamodule=dm2)
    assert dm2.memory_guard.cpu_fallback_samples == 8  # only the first batch hit the wall
    # The cap reaches the router at once (no batch waits for the epoch-end decision); the
    # batch right after the failure was already in flight with the old split.
    assert spy.n_device[0] == 8 and spy.n_device[-1] == 0
    assert cb2.ratio < 1.0  # the memory cap lowered the share
    assert any(d.kind == "memory" for d in cb2.history)

    # Nothing was skipped: the fallback applied the same parameters.
    dm2.set_ratio(1.0)
    expected_dm.set_ratio(0.0)
    batch = next(iter(dm2.train_dataloader()))
    ref = next(iter(expected_dm.train_dataloader()))
    torch.testing.assert_close(
        dm2.device_stage.augment(batch["images"], batch["route"]),
        expected_dm.device_stage.augment(ref["images"], ref["route"]),
        rtol=0,
        atol=0,
    )


def test_checkpoint_restores_ratio_and_history(tmp_path: Path) -> None:
    dm = _dm()
    cb = FusionFlow(mode="auto", interval="steps", every_n_steps=4, warmup_steps=0)
    trainer = _trainer(cb, tmp_path, max_epochs=1)
    trainer.fit(TinyNet(), datamodule=dm)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    key = cb.state_key
    assert key in state["callbacks"]
    saved = state["callbacks"][key]
    # Each value is saved once, in the controller's state.
    assert set(saved) == {"controller"}
    assert saved["controller"]["ratio"] == cb.ratio
    assert len(saved["controller"]["history"]) == len(cb.history)
    # Pretend the controller had moved to 0.375 before the checkpoint.
    saved["controller"]["ratio"] = 0.375
    torch.save(state, ckpt)

    dm2 = _dm()
    cb2 = FusionFlow(mode="auto", interval="steps", every_n_steps=100, warmup_steps=0)
    spy = RatioSpy(dm2)
    _trainer(cb2, tmp_path, max_epochs=2, extra_callbacks=[spy]).fit(
        TinyNet(), datamodule=dm2, ckpt_path=ckpt
    )
    assert spy.n_device and spy.n_device[0] == 3  # round(0.375 * 8): the resumed run kept the share
    assert len(cb2.history) >= len(saved["controller"]["history"])


def test_ddp_reduce_averages_statistics_across_ranks() -> None:
    class Strategy:
        root_device = torch.device("cpu")

        def reduce(self, t: torch.Tensor, reduce_op: str) -> torch.Tensor:
            assert reduce_op == "mean"
            other = torch.tensor([3.0, 1.0], dtype=t.dtype)  # what the other rank measured
            return (t + other) / 2

    class Trainer:
        world_size = 2
        strategy = Strategy()

    reduce = FusionFlow()._reduce_fn(Trainer())  # type: ignore[arg-type]
    assert reduce({"b": 1.0, "a": 5.0}) == {"a": 4.0, "b": 1.0}
    assert FusionFlow()._reduce_fn(type("T", (), {"world_size": 1})()) is None  # type: ignore[arg-type]


def test_ddp_ranks_agree_on_the_smallest_memory_cap() -> None:
    class Strategy:
        root_device = torch.device("cpu")
        ops: list[str] = []

        def reduce(self, t: torch.Tensor, reduce_op: str) -> torch.Tensor:
            self.ops.append(reduce_op)
            other = torch.full_like(t, 0.25)  # the other rank ran out of memory above 0.25
            return torch.minimum(t, other) if reduce_op == "min" else (t + other) / 2

    class Trainer:
        world_size = 2
        strategy = Strategy()

    cb = FusionFlow(mode="gpu")
    assert cb.ratio == 1.0
    cb._agree_on_memory_cap(Trainer())  # type: ignore[arg-type]
    assert cb.ratio == 0.25 and Trainer.strategy.ops == ["min"]
    cb._agree_on_memory_cap(type("T", (), {"world_size": 1})())  # type: ignore[arg-type]
    assert cb.ratio == 0.25
    assert cb.session.agreed_cap == 0.25  # later local caps can only lower it, never lift it


def test_validation_inside_an_epoch_is_not_counted_as_data_wait(tmp_path: Path) -> None:
    import time

    from ff_lightning.control.controller import StepStats

    class SlowVal(TinyNet):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            time.sleep(1.0)

    seen: list[StepStats] = []
    cb = FusionFlow(mode="fixed", ratio=0.5)
    observe = cb.controller.observe
    cb.controller.observe = lambda s: (seen.append(s), observe(s))[1]  # type: ignore[method-assign]
    trainer = _trainer(cb, tmp_path, max_epochs=1, limit_val_batches=1, val_check_interval=2)
    trainer.fit(SlowVal(), datamodule=_dm())
    assert len(seen) == 2  # 4 steps: the first of the epoch and the first after validation skipped
    # Loading a batch in the main process takes far less than the 1 s validation step.
    assert max(s.data_wait_s for s in seen) < 0.5
