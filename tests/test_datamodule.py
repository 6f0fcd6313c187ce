"""FusionDataModule: worker/device split, route independence, hooks, errors."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from ff_lightning import FusionDataModule
from ff_lightning.errors import ConfigError


class TensorImages(Dataset):
    """Random uint8 images of varied sizes with int targets."""

    def __init__(self, n: int = 24, seed: int = 0, pil: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            h, w = 40 + (i % 3) * 8, 48 + (i % 2) * 10
            img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
            # Smooth it a little so the geometric ops act on structure, not pure noise.
            img = torch.nn.functional.avg_pool2d(img[None].float(), 3, 1, 1)[0].to(torch.uint8)
            self.items.append(
                (Image.fromarray(img.permute(1, 2, 0).numpy()) if pil else img, i % 4)
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _dm(**kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(
        image_size=32, batch_size=8, num_workers=0, seed=3, policy="randaugment"
    )
    args.update(kw)
    return FusionDataModule(
        TensorImages(pil=args.pop("pil", False)), TensorImages(8, seed=1), **args
    )


def _augmented_by_index(
    dm: FusionDataModule, ratio: float, epoch: int = 0
) -> dict[int, torch.Tensor]:
    """uint8 images after the policy (both routes), keyed by dataset index."""
    dm.set_ratio(ratio)
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    out = {}
    for batch in loader:
        route = batch["route"]
        assert route.device_mask.sum().item() == round(ratio * len(batch["targets"]))
        images = dm.device_stage.augment(batch["images"], route)
        for i, idx in enumerate(route.indices.tolist()):
            out[idx] = images[i]
    return out


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
@pytest.mark.parametrize("pil", [False, True])
def test_route_does_not_change_what_the_model_sees(policy: str, pil: bool) -> None:
    dm = _dm(policy=policy, pil=pil)
    cpu = _augmented_by_index(dm, 0.0)
    dev = _augmented_by_index(dm, 1.0)
    mixed = _augmented_by_index(dm, 0.5)
    assert cpu.keys() == dev.keys() == mixed.keys() == set(range(24))
    for i in cpu:
        # The CPU route runs the same batched kernels with B=1: bit-identical on CPU.
        assert torch.equal(cpu[i], dev[i]) and torch.equal(cpu[i], mixed[i]), f"sample {i} differs"


def test_epochs_draw_new_augmentations() -> None:
    dm = _dm()
    e0, e1 = _augmented_by_index(dm, 0.5, 0), _augmented_by_index(dm, 0.5, 1)
    assert sum(not torch.equal(e0[i], e1[i]) for i in e0) > 20


def test_training_batch_reaches_the_model_normalised() -> None:
    dm = _dm(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    dm.set_ratio(0.5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (8, 3, 32, 32)
    route = batch["route"]
    # One batched record for the device share only; the CPU share was augmented in the worker.
    assert route.params.op_ids.shape[0] == 4 and route.stats.cpu_aug_s >= 0
    raw = dm.device_stage.augment(batch["images"].clone(), route)
    x, y = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    torch.testing.assert_close(x, (raw.float() / 255 - 0.5) / 0.25)
    assert y.dtype == torch.long and y.shape == (8,)
    last = dm.device_stage.last
    assert last is route.stats and last.n_device == 4 and last.batch_size == 8


def test_validation_batches_are_only_resized_and_normalised() -> None:
    dm = _dm(val_crop_fraction=1.0)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch.keys()) == {"images", "targets"}
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    # Deterministic: the same images every time.
    x2, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    torch.testing.assert_close(x, x2)


def test_mixup_gives_soft_targets_and_erasing_runs() -> None:
    dm = _dm(mixup_alpha=0.4, random_erasing=0.5, num_classes=4)
    batch = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert y.shape == (8, 4) and torch.allclose(y.sum(1), torch.ones(8))


@pytest.mark.parametrize("value", [0.0, "random"])
def test_erasing_follows_the_sample_on_every_route(value: Any) -> None:
    """RandomErasing (constant or timm's per-pixel noise) is keyed by (seed, epoch, index):
    what the model sees of a sample is the same at every share and in any later pass."""
    from torchvision.transforms import v2

    t = v2.Compose(
        [
            v2.RandomResizedCrop(32),
            v2.RandAugment(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
            v2.RandomErasing(0.5, value=value),
        ]
    )
    dm = FusionDataModule(
        TensorImages(), TensorImages(8, seed=1), transform=t, batch_size=8, num_workers=0, seed=3
    )

    def seen(ratio: float) -> dict[int, torch.Tensor]:
        dm.set_ratio(ratio)
        out = {}
        for batch in dm.train_dataloader():
            x, _ = dm.on_after_batch_transfer(batch, 0)
            for i, idx in enumerate(batch["route"].indices.tolist()):
                out[idx] = x[i]
        return out

    cpu, dev, mixed = seen(0.0), seen(1.0), seen(0.5)
    erased = 0
    for i in cpu:
        assert torch.equal(cpu[i], dev[i]) and torch.equal(cpu[i], mixed[i]), f"sample {i}"
        erased += int((cpu[i] == 0).all(0).any()) if value == 0.0 else 0
    assert value != 0.0 or erased >= 4  # the constant boxes are there


def test_worker_processes_and_ratio_changes_between_batches() -> None:
    dm = _dm(num_workers=1, persistent_workers=True, prefetch_factor=1)
    loader = dm.train_dataloader()
    counts = []
    for i, batch in enumerate(loader):
        counts.append(batch["route"].n_device)
        if i == 0:
            dm.set_ratio(1.0)  # no IPC: the sampler in this process reads it
    # Batches already requested from the worker keep the old split; later ones use the new one.
    assert counts[0] == 0 and counts[-1] == 8
    # Persistent workers: a second epoch works with the same worker and the new ratio.
    assert all(b["route"].n_device == 8 for b in loader)


class TinyNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_user_module_hooks_run_in_the_documented_order() -> None:
    seen: list[str] = []

    class Module(TinyNet):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            assert isinstance(batch, dict) and batch["images"].dtype == torch.uint8
            seen.append("before")
            return batch

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            x, y = batch  # ours already ran: normalised floats
            assert x.dtype == torch.float32
            seen.append("after")
            return x * 0, y

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            assert torch.all(batch[0] == 0)  # the module's hook result reaches training_step
            seen.append("step")
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_steps=2,
        limit_val_batches=0,
    )
    trainer.fit(Module(), datamodule=_dm())
    assert seen == ["before", "after", "step"] * 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0"),
        ({"image_size": -4}, r"`image_size` must be an integer >= 1, got -4"),
        ({"num_workers": -1}, r"`num_workers` must be an integer >= 0, got -1"),
        ({"crop_scale": (0.9, 0.1)}, r"`crop_scale` must satisfy"),
        ({"random_erasing": 2.0}, r"`random_erasing` must be a probability"),
        ({"mixup_alpha": 0.2}, r"`num_classes` is required"),
        ({"std": (0.1, 0.0, 0.1)}, r"`mean` and `std` must be 3 number\(s\) each"),
        ({"route_strategy": "fastest"}, r"`route_strategy` must be one of"),
        ({"policy": "randaugmnt"}, r"`policy` must be one of"),
        ({"policy": "randaug"}, r"`policy` must be one of .*got 'randaug'"),
        ({"policy_kwargs": {"num_ops": -1}}, r"`num_ops` must be an integer >= 0, got -1"),
        ({"policy_kwargs": {"magnitude": 99}}, r"`magnitude` must be an integer in \[0, 30\]"),
        ({"policy_kwargs": {"colour": 1}}, r"unknown keyword argument\(s\) \['colour'\]"),
        ({"reserve_mb": -5}, r"`reserve_mb` must be a number >= 0, got -5"),
        ({"prefetch_factor": 0}, r"`prefetch_factor` must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    # Every configuration error is a ConfigError (a ValueError) naming the key.
    with pytest.raises(ConfigError, match=match):
        _dm(**kwargs)


def test_iterable_datasets_are_rejected_up_front() -> None:
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            return iter([(torch.zeros(3, 8, 8, dtype=torch.uint8), 0)] * 4)

        def __len__(self) -> int:  # a length does not make it indexable
            return 4

    with pytest.raises(ConfigError, match=r"`train_dataset` must be a map-style dataset"):
        FusionDataModule(Stream(), image_size=8)


def test_empty_and_non_map_datasets_are_rejected() -> None:
    with pytest.raises(ConfigError, match="`train_dataset` is empty"):
        FusionDataModule([], image_size=32)
    with pytest.raises(ConfigError, match="map-style dataset"):
        FusionDataModule(iter([1, 2]), image_size=32)  # type: ignore[arg-type]


def test_bad_items_give_clear_errors() -> None:
    class Bad(Dataset):
        def __init__(self, item: Any) -> None:
            self.item = item

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> Any:
            return self.item

    # Item 0 is checked when the DataModule is built, in the main process.
    for item, match in [
        ((torch.rand(3, 8, 8), 0), "dtype torch.uint8"),
        ((torch.zeros(2, 8, 8, dtype=torch.uint8), 0), "1, 3 or 4 channels"),
        (("not an image", 0), "a PIL image, a uint8 tensor"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "must be a pair"),
    ]:
        with pytest.raises(ConfigError, match=rf"`train_dataset`: dataset item 0.*{match}"):
            FusionDataModule(Bad(item), image_size=8, batch_size=2, num_workers=0)


def test_grayscale_and_rgba_tensors_are_accepted() -> None:
    class Odd(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> Any:
            c = (1, 4, 3, 1)[i]
            return torch.full((c, 20, 30), 100, dtype=torch.uint8), 0

    dm = FusionDataModule(
        Odd(), image_size=16, batch_size=4, num_workers=0, policy="none", channels=3
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 16, 16)


@pytest.mark.cuda
@pytest.mark.parametrize("policy", ["randaugment", "augmix"])
def test_device_hook_adds_no_cuda_synchronisation(policy: str) -> None:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    dm = _dm(policy=policy, pin_memory=True)
    dm.set_ratio(0.5)
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    batch = move_data_to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call below raises
    try:
        x, y = dm.on_after_batch_transfer(batch, 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.is_cuda and x.dtype == torch.float32 and y.is_cuda


def test_small_tensors_leave_a_worker_by_value() -> None:
    # A batch pickled on its way out of a worker: the targets travel as bytes (no
    # shared-memory segment to map), the images as a tensor; it arrives as a plain dict.
    import pickle

    from ff_lightning.pipeline.worker.dataset import _WorkerBatch, collate_batch

    batch = {"images": torch.zeros(8, 3, 64, 64, dtype=torch.uint8), "targets": torch.arange(8)}
    assert collate_batch(batch) is batch  # in the main process: untouched
    sent = _WorkerBatch(batch)
    got = pickle.loads(pickle.dumps(sent))
    assert isinstance(got, dict) and set(got.keys()) == {"images", "targets"}
    assert torch.equal(got["targets"], batch["targets"]) and got["targets"].dtype == torch.int64
    assert torch.equal(got["images"], batch["images"])
    reduced = sent.__reduce__()[1][0]
    assert not torch.is_tensor(reduced["targets"]) and torch.is_tensor(reduced["images"])
