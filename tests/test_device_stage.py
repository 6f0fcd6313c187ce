"""DeviceStage: the device half as a plain object (prepare/finish), output dtype, gpu-mode fast path."""

from __future__ import annotations

import types
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import (
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
)

from ff_lightning import FusionDataModule, FusionFlow
from tests.test_datamodule import TensorImages, TinyNet, _dm


def _attach(dm: FusionDataModule, plugin: Any) -> None:
    dm.trainer = types.SimpleNamespace(  # type: ignore[assignment]
        precision_plugin=plugin, lightning_module=None, global_rank=0
    )


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (Precision(), torch.float32),
        # Lightning hands mixed-precision modules float32 and lets autocast cast (finding 9).
        (MixedPrecision("bf16-mixed", "cpu"), torch.float32),
        (MixedPrecision("16-mixed", "cpu"), torch.float32),
        (HalfPrecision("bf16-true"), torch.bfloat16),
        (HalfPrecision("16-true"), torch.float16),
        (DoublePrecision(), torch.float64),
    ],
)
def test_output_dtype_follows_the_trainer_precision(plugin: Any, expected: torch.dtype) -> None:
    dm = _dm()
    _attach(dm, plugin)
    assert dm.resolved_output_dtype() == expected
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    x, _ = dm.on_after_batch_transfer(batch, 0)
    assert x.dtype == expected
    # The same values as float32 normalisation, rounded once to the output dtype.
    ref_dm = _dm()
    ref, _ = ref_dm.on_after_batch_transfer(
        ref_dm.on_before_batch_transfer(next(iter(ref_dm.train_dataloader())), 0), 0
    )
    torch.testing.assert_close(x, ref.to(expected), rtol=0, atol=0)


def test_explicit_output_dtype_wins_over_the_precision() -> None:
    dm = _dm(output_dtype="float32")
    _attach(dm, HalfPrecision("bf16-true"))
    assert dm.resolved_output_dtype() == torch.float32
    half = _dm(output_dtype="bfloat16")  # half inputs under *-mixed, when asked for
    _attach(half, MixedPrecision("bf16-mixed", "cpu"))
    assert half.resolved_output_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match=r"`output_dtype` must be one of"):
        _dm(output_dtype="int8")


def test_bf16_true_training_runs_end_to_end() -> None:
    """Lightning converts float inputs for ``bf16-true``; our float32 output used to skip that
    and the first layer failed on a dtype mismatch."""
    seen: list[torch.dtype] = []

    class Net(TinyNet):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(batch[0].dtype)
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-true",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(Net(), datamodule=_dm())
    assert seen == [torch.bfloat16, torch.bfloat16]


def test_gpu_mode_hands_the_whole_batch_to_the_kernels_without_gathering() -> None:
    dm = _dm()
    dm.set_ratio(1.0)
    batch = next(iter(dm.train_dataloader()))
    got: list[torch.Tensor] = []
    stage = dm.device_stage
    original = stage._apply_device

    def spy(images: torch.Tensor, params: Any) -> torch.Tensor:
        got.append(images)
        return original(images, params)

    stage._apply_device = spy  # type: ignore[method-assign]
    stage.augment(batch["images"], batch["route"])
    # The kernels read the transferred batch itself (a view of its storage), not a gathered copy.
    assert len(got) == 1 and got[0].data_ptr() == batch["images"].data_ptr()
    assert got[0].shape == batch["images"].shape


def test_prepare_and_finish_are_the_whole_device_half() -> None:
    """What the Accelerate adapter and the benchmark do: prepare, move, finish."""
    dm = _dm(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    dm.set_ratio(0.5)
    stage = dm.device_stage
    batch = stage.prepare(next(iter(dm.train_dataloader())))
    assert stage.last is batch["route"].stats and stage.ready_at is not None
    x, y = stage.finish(batch)
    assert (
        x.dtype == torch.float32 and float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6
    )
    assert stage.steps == 1 and stage.last.h2d_s is not None and stage.last.n_device == 4
    # Validation batches carry no route: normalised only, the step count does not move.
    xv, _ = stage.finish(stage.prepare(next(iter(dm.val_dataloader()))))
    assert xv.shape == (8, 3, 32, 32) and stage.steps == 1


# --------------------------------------------------------------------------- CUDA
class _Capture(TinyNet):
    """Records the dataset indices (host, before transfer) and the images the step receives."""

    def __init__(self, sync_check_from: int | None = None) -> None:
        super().__init__()
        self.sync_check_from = sync_check_from
        self._pending: list[list[int]] = []
        self.images: dict[int, torch.Tensor] = {}
        self.step_no = 0

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "route" in batch:
            self._pending.append(batch["route"].indices.tolist())
            if self.sync_check_from is not None and self.step_no >= self.sync_check_from:
                # From here until our device stage is done, any host-device sync raises: the
                # copy (pinned, non-blocking), the device augmentation and the normalisation.
                torch.cuda.set_sync_debug_mode("error")
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        torch.cuda.set_sync_debug_mode("default")
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        for i, idx in enumerate(self._pending.pop(0)):
            self.images[idx] = x[i].detach().float().cpu()
        self.step_no += 1
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1).float()), y)


def _cuda_fit(mode: str, ratio: float | None) -> dict[int, torch.Tensor]:
    dm = FusionDataModule(
        TensorImages(48, pil=True),
        image_size=32,
        batch_size=8,
        num_workers=2,
        pin_memory=True,
        seed=5,
        policy="randaugment",
        policy_kwargs={"num_ops": 3},
    )
    model = _Capture(sync_check_from=2 if mode == "fixed" else None)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[FusionFlow(mode=mode, ratio=ratio)],
    )
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return model.images


@pytest.mark.cuda
@pytest.mark.parametrize("matmul_precision", ["highest", "high"])
def test_cuda_fit_device_route_matches_worker_route(matmul_precision: str) -> None:
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        mixed = _cuda_fit("fixed", 0.5)
        worker = _cuda_fit("off", None)
    finally:
        torch.set_float32_matmul_precision(old)
    assert mixed.keys() == worker.keys() == set(range(48))
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    for i in mixed:
        # In grey levels: bf16 output rounding is below half a level; kernels may differ by
        # rare one-level roundings between the CPU and the GPU.
        diff = (mixed[i] - worker[i]).abs() * std * 255
        assert float(diff.mean()) <= 0.5 and float(diff.max()) <= 3.0, f"sample {i} differs"


def test_normalize_false_hands_the_model_floats_in_unit_range() -> None:
    dm = _dm(normalize=False)
    dm.set_ratio(0.5)
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    raw = dm.device_stage.augment(batch["images"].clone(), batch["route"])
    x, _ = dm.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(x, raw.float() / 255.0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with pytest.raises(ValueError, match=r"`normalize` must be true or false"):
        _dm(normalize="yes")
