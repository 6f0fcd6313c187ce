"""The benchmark's torchvision mode: the stock pipeline on the same data as ours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ff_lightning.app.bench.modes import device_stage, stock_datamodule
from ff_lightning.app.stock import STOCK_POLICIES, StockDataModule, stock_dataset, stock_transform

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def _cfg(tmp_path: Path, *extra: str):  # noqa: ANN202
    overrides = [
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=4",
        "+data.source.val_per_class=1",
        "data.source_size=32",
        "data.image_size=24",
        "data.batch_size=6",
        "data.num_workers=0",
        f"output_dir={tmp_path / 'run'}",
        *extra,
    ]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="benchmark", overrides=overrides)


@pytest.mark.parametrize("policy", sorted(STOCK_POLICIES))
def test_stock_transform_gives_uint8_of_the_configured_size(policy: str) -> None:
    from PIL import Image

    image = Image.fromarray(torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy())
    kwargs = {"interpolation": "nearest", "fill": 0} if policy != "none" else None
    t = stock_transform(24, crop_scale=(0.25, 1.0), policy=policy, policy_kwargs=kwargs)
    out = t(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 24, 24)


def test_stock_pipeline_matches_ours_in_data_and_batch_format(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from ff_lightning.app.train import build_datamodule

    cfg = _cfg(tmp_path)
    stock, ours = stock_datamodule(cfg), build_datamodule(cfg)
    # Same images: torchvision's ImageFolder on the source's own folder.
    assert isinstance(stock.train_dataset, ImageFolder)
    assert len(stock.train_dataset) == len(ours.train_dataset)
    assert stock.train_dataset.classes == list(ours.train_dataset.classes)
    kinds = [type(t) for t in stock.transform.transforms]
    assert kinds == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandAugment, v2.PILToTensor]
    rand = stock.transform.transforms[2]
    assert (rand.num_ops, rand.magnitude) == (
        cfg.augment.kwargs.num_ops,
        cfg.augment.kwargs.magnitude,
    )
    assert stock.transform.transforms[0].scale == tuple(cfg.data.crop_scale)

    loader, our_loader = stock.train_dataloader(), ours.train_dataloader()
    assert loader.batch_size == cfg.data.batch_size
    assert loader.num_workers == our_loader.num_workers
    assert loader.pin_memory == our_loader.pin_memory

    images, targets = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 24, 24)
    x, y = stock.on_after_batch_transfer((images, targets), 0)
    ours_x, ours_y = device_stage(ours, next(iter(our_loader)), torch.device("cpu"))
    assert x.dtype == ours_x.dtype == torch.float32
    assert x.shape == ours_x.shape and y.shape == ours_y.shape and y.dtype == ours_y.dtype
    mean = torch.tensor(cfg.augment.mean).view(3, 1, 1)
    std = torch.tensor(cfg.augment.std).view(3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)


def test_policy_choice_follows_the_config(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    trivial = stock_datamodule(
        _cfg(tmp_path, "augment=trivialaugment", "~augment.kwargs.num_ops", "augment.hflip=false")
    )
    assert [type(t) for t in trivial.transform.transforms] == [
        v2.RandomResizedCrop,
        v2.TrivialAugmentWide,
        v2.PILToTensor,
    ]
    none = stock_datamodule(_cfg(tmp_path, "augment=none"))
    assert [type(t) for t in none.transform.transforms][1:] == [
        v2.RandomHorizontalFlip,
        v2.PILToTensor,
    ]


def test_policy_kwargs_that_do_not_fit_fail_early_with_the_fix(tmp_path: Path) -> None:
    from ff_lightning.app.bench.runner import check_policy
    from ff_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"~augment.kwargs.num_ops"):
        check_policy(_cfg(tmp_path, "augment=trivialaugment"))
    check_policy(_cfg(tmp_path, "augment=trivialaugment", "~augment.kwargs.num_ops"))


def test_tensor_sources_are_wrapped() -> None:
    source = [(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), i % 3) for i in range(5)]
    dm = StockDataModule(source, image_size=16, batch_size=5, num_workers=0, crop_scale=(0.5, 1))
    assert len(dm.train_dataset) == 5
    images, targets = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16)
    assert sorted(targets.tolist()) == [0, 0, 1, 1, 2]
    assert len(stock_dataset(source, stock_transform(16))) == 5


def test_device_stage_prefers_the_stage_object() -> None:
    calls: list[str] = []

    class Stage:
        def prepare(self, batch):  # noqa: ANN001, ANN202
            calls.append("prepare")
            return batch

        def finish(self, batch):  # noqa: ANN001, ANN202
            calls.append("finish")
            return batch["images"].float(), batch["targets"]

    class WithStage:
        class pipeline:  # noqa: N801
            @staticmethod
            def transfer(batch, device):  # noqa: ANN001, ANN205
                stage = Stage()
                return stage.finish(stage.prepare(batch))

    class WithHook:
        def on_after_batch_transfer(self, batch, idx):  # noqa: ANN001, ANN202
            calls.append("hook")
            return batch["images"].float(), batch["targets"]

    batch = {"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "targets": torch.zeros(2)}
    x, _ = device_stage(WithStage(), batch, torch.device("cpu"))
    assert calls == ["prepare", "finish"] and x.dtype == torch.float32
    device_stage(WithHook(), batch, torch.device("cpu"))
    assert calls[-1] == "hook"
