"""The fault table (README, "What is handled"): each fault gives one clear error or is handled."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ff_lightning.errors import ConfigError, CorruptImageError, one_line
from tests.test_configs import _compose


class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        raise CorruptImageError(f"cannot decode image /data/cats/{i}.jpg: truncated file")


def test_a_worker_error_becomes_one_line_naming_the_file() -> None:
    loader = DataLoader(_Broken(), batch_size=2, num_workers=1)
    with pytest.raises(CorruptImageError) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)  # what the DataLoader hands us
    line = one_line(info.value)
    assert line == "cannot decode image /data/cats/0.jpg: truncated file"
    assert "\n" not in line


def test_one_line_leaves_plain_messages_alone() -> None:
    assert one_line(ConfigError("`ratio` must be a number in [0, 1], got 2")) == (
        "`ratio` must be a number in [0, 1], got 2"
    )


def test_null_num_classes_names_the_key() -> None:
    from ff_lightning.app.train import build_datamodule

    cfg = _compose(["augment.mixup_alpha=0.2", "data.num_classes=null"])
    with pytest.raises(ConfigError, match=r"`data.num_classes` must be the number of classes"):
        build_datamodule(cfg)


def test_ratio_given_as_a_string_is_rejected() -> None:
    from ff_lightning import FusionFlow

    with pytest.raises(ConfigError, match=r"`ratio`"):
        FusionFlow(mode="fixed", ratio="0.5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"`ratio`"):
        FusionFlow(mode="fixed", ratio=1.5)


def test_float_tensor_targets_that_are_whole_numbers_are_accepted() -> None:
    from ff_lightning import FusionDataModule

    class Items(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> Any:
            return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor(i % 2)

    dm = FusionDataModule(Items(), image_size=8, batch_size=4, num_workers=0, policy="none")
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"].tolist() == (batch["route"].indices % 2).tolist()


def test_data_on_error_is_a_recipe_key_and_raise_ends_in_one_line(tmp_path) -> None:
    from ff_lightning.app.train import build_datamodule

    root = tmp_path / "tree"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            from PIL import Image

            Image.new("RGB", (20, 20), (10, 20, 30)).save(d / "ok.jpg")
            (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    cfg = _compose(
        [
            "data=imagefolder",
            f"data.root={root}",
            "data.num_classes=2",
            "data.on_error=raise",
            "data.num_workers=1",
            "data.image_size=16",
            "data.batch_size=4",
        ]
    )
    assert cfg.data.source.on_error == "raise"
    # The first file is read when the DataModule is built (item 0 is checked there), so the
    # error may come at construction or at the first batch: one line either way.
    with pytest.raises((CorruptImageError, ConfigError)) as info:
        dm = build_datamodule(cfg)
        next(iter(dm.train_dataloader()))
    line = one_line(info.value)
    assert "broken.jpg" in line and "\n" not in line
