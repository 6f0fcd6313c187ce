"""Any channel count (MNIST-style one-channel data) and clear target errors."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.errors import ConfigError


class Gray(Dataset):
    """MNIST-like: uint8 [1, 28, 28] tensors (or ``L`` PIL images), int targets."""

    def __init__(self, n: int = 24, pil: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            x = torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8)
            x = torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).to(torch.uint8)
            self.items.append((Image.fromarray(x[0].numpy(), mode="L") if pil else x, i % 10))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _dm(**kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(image_size=24, batch_size=8, num_workers=0, seed=1)
    pil = kw.pop("pil", False)
    args.update(kw)
    return FusionDataModule(Gray(pil=pil), Gray(8, pil=pil), **args)


def _by_index(dm: FusionDataModule, ratio: float) -> dict[int, torch.Tensor]:
    dm.set_ratio(ratio)
    out = {}
    for batch in dm.train_dataloader():
        route = batch["route"]
        images = dm.device_stage.augment(batch["images"], route, batch["targets"])
        out.update({int(i): x for i, x in zip(route.indices, images, strict=True)})
    return out


@pytest.mark.parametrize("pil", [False, True])
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "augmix"])
def test_one_channel_data_stays_one_channel_on_both_routes(pil: bool, policy: str) -> None:
    dm = _dm(pil=pil, policy=policy, mean=(0.1307,), std=(0.3081,))
    assert dm.channels == 1 and dm.mean == (0.1307,)
    cpu, dev, mixed = _by_index(dm, 0.0), _by_index(dm, 1.0), _by_index(dm, 0.5)
    for i in cpu:
        assert cpu[i].shape == (1, 24, 24)
        assert torch.equal(cpu[i], dev[i]) and torch.equal(cpu[i], mixed[i]), i


def test_one_channel_model_trains_with_one_channel_statistics() -> None:
    seen: list[tuple[int, ...]] = []

    class MNISTNet(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(24 * 24, 10)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            seen.append(tuple(x.shape))
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _dm(mean=(0.1307,), std=(0.3081,), mixup_alpha=0.2, random_erasing=0.5, num_classes=10)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[FusionFlow(mode="fixed", ratio=0.5)],
    )
    trainer.fit(MNISTNet(), datamodule=dm)
    assert seen == [(8, 1, 24, 24)] * 2


def test_explicit_conversions_and_defaults() -> None:
    gray_as_rgb = _dm(channels=3)
    assert gray_as_rgb.mean == (0.485, 0.456, 0.406)
    batch = next(iter(gray_as_rgb.train_dataloader()))
    assert batch["images"].shape == (8, 3, 24, 24)
    default_gray = _dm()
    assert default_gray.channels == 1 and default_gray.mean == (0.449,)
    with pytest.raises(ConfigError, match=r"`mean` and `std` must be 1 number\(s\) each"):
        _dm(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match=r"`channels` must be one of \(1, 3\), got 2"):
        _dm(channels=2)


def test_rgb_data_converted_to_one_channel_uses_luma() -> None:
    class Rgb(Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> Any:
            return Image.new("RGB", (30, 30), (200, 100, 50)), 0

    dm = FusionDataModule(
        Rgb(), image_size=16, batch_size=8, num_workers=0, policy="none", channels=1
    )
    x = next(iter(dm.train_dataloader()))["images"]
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # PIL's "L" conversion
    assert x.shape == (8, 1, 16, 16) and abs(int(x[0, 0, 8, 8]) - expected) <= 1


class Labels(Dataset):
    def __init__(self, target: Any) -> None:
        self.target = target

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return torch.zeros(3, 8, 8, dtype=torch.uint8), self.target if i == 2 else 0


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("cat", r"dataset item 2 has target 'cat' \(str\); targets must be integer class indices"),
        (1.5, r"dataset item 2 has target 1.5 \(float\)"),
        (torch.tensor([1, 2]), r"dataset item 2 has a target tensor of shape \(2,\)"),
    ],
)
def test_a_bad_target_names_the_item_and_the_target(target: Any, match: str) -> None:
    dm = FusionDataModule(Labels(target), image_size=8, batch_size=4, num_workers=0)
    with pytest.raises(ConfigError, match=match):
        next(iter(dm.train_dataloader()))


def test_whole_number_targets_of_other_types_are_accepted() -> None:
    for target in (1.0, torch.tensor(1), torch.tensor([1])):
        dm = FusionDataModule(Labels(target), image_size=8, batch_size=4, num_workers=0)
        batch = next(iter(dm.train_dataloader()))
        assert sorted(batch["targets"].tolist()) == [0, 0, 0, 1]
