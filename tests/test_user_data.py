"""The data users have: dict items, NumPy arrays, HWC tensors, 16-bit and float PIL images,
NumPy targets, mixed channel counts, and a Hugging Face ``datasets.Dataset`` end to end."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from ff_lightning import FusionDataModule
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline import Pipeline
from tests.test_datamodule import TinyNet


class Items(Dataset):
    """``make(i)`` for each of ``n`` items."""

    def __init__(self, make: Any, n: int = 8) -> None:
        self.make, self.n = make, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.make(i)


def _rgb(i: int, size: int = 24) -> np.ndarray:
    g = np.random.default_rng(i)
    return g.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)


def _eval_images(dataset: Dataset, **kw: Any) -> torch.Tensor:
    pipe = Pipeline(
        dataset, dataset, image_size=16, batch_size=4, num_workers=0, val_crop_fraction=1.0, **kw
    )
    return next(iter(pipe.eval_loader("val")))["images"]


def test_sixteen_bit_and_float_images_are_scaled_to_eight_bits() -> None:
    grey = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    assert Image.fromarray(grey).mode.startswith("I")  # a 16-bit grey PIL image
    i16 = Items(lambda i: (Image.fromarray(grey), 0), n=4)
    x = _eval_images(i16, channels=1)
    # The true scaled mean is about 127 (0..65535 over 0..255); not all 255.
    assert 120 <= x.float().mean() <= 135 and x.shape[1] == 1
    unit = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    assert Image.fromarray(unit).mode == "F"
    f32 = Items(lambda i: (Image.fromarray(unit), 0), n=4)
    x = _eval_images(f32, channels=3)  # as RGB
    assert 120 <= x.float().mean() <= 135 and x.shape[1] == 3


@pytest.mark.parametrize(
    ("make", "kw"),
    [
        (lambda i: {"image": Image.fromarray(_rgb(i)), "label": i % 3}, {}),
        (lambda i: {"img": torch.from_numpy(_rgb(i)).permute(2, 0, 1), "labels": i % 3}, {}),
        (
            lambda i: {"pic": _rgb(i), "y_true": np.int64(i % 3)},
            dict(image_key="pic", label_key="y_true"),
        ),
        (lambda i: (_rgb(i), np.array(i % 3)), {}),  # NumPy HWC image, 0-d array target
        (lambda i: (torch.from_numpy(_rgb(i)), np.array([i % 3])), {}),  # HWC tensor
        (lambda i: (_rgb(i)[:, :, 0], np.float32(i % 3)), {}),  # NumPy HW (grey)
    ],
)
def test_dict_items_arrays_and_numpy_targets_are_read(make: Any, kw: dict) -> None:
    dm = FusionDataModule(Items(make), image_size=16, batch_size=4, num_workers=0, **kw)
    batch = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    assert x.shape == (4, dm.channels, 16, 16) and y.dtype == torch.long
    assert set(y.tolist()) <= {0, 1, 2}


def test_hwc_pixels_arrive_in_chw_order() -> None:
    img = _rgb(0)
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    a = _eval_images(Items(lambda i: (img, 0), n=4), policy="none")
    b = _eval_images(Items(lambda i: (chw, 0), n=4), policy="none")
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"pixels": 1, "label": 0}, r"dict without an image key: it has \['label', 'pixels'\]"),
        ({"image": _rgb(0)}, r"dict without a label key"),
        ((_rgb(0).astype(np.float32), 0), r"image arrays must be uint8"),
        ((_rgb(0), np.array([1, 2])), r"target array of shape \(2,\)"),
        ((_rgb(0), "cat"), r"has target 'cat'"),
        ((_rgb(0), 1.5), r"has target 1.5"),
    ],
)
def test_an_unsupported_item_is_a_config_error_at_construction(item: Any, match: str) -> None:
    # Raised in the main process, when the DataModule is built, not at the first batch.
    with pytest.raises(ConfigError, match=rf"`train_dataset`: dataset item 0.*{match}"):
        FusionDataModule(Items(lambda i: item), image_size=16, batch_size=4, num_workers=0)


def test_a_named_key_that_is_missing_is_named() -> None:
    with pytest.raises(ConfigError, match=r"has no `image_key` 'jpeg'; its keys are"):
        FusionDataModule(
            Items(lambda i: {"image": _rgb(i), "label": 0}),
            image_key="jpeg",
            image_size=16,
            batch_size=4,
            num_workers=0,
        )


def test_the_channel_count_comes_from_a_sample_not_item_zero(caplog) -> None:
    def mixed(i: int) -> tuple[Any, int]:  # a grayscale first image in a colour dataset
        return (Image.fromarray(_rgb(i)[:, :, 0]) if i == 0 else Image.fromarray(_rgb(i)), 0)

    with caplog.at_level("INFO", logger="ff_lightning"):
        dm = FusionDataModule(Items(mixed, n=16), image_size=16, batch_size=4, num_workers=0)
    assert dm.channels == 3
    assert "channels=3 (1 of 8 sampled are single-channel and are converted)" in caplog.text
    gray = FusionDataModule(
        Items(lambda i: (_rgb(i)[:, :, 0], 0), n=16), image_size=16, batch_size=4, num_workers=0
    )
    assert gray.channels == 1
    x = next(
        iter(
            FusionDataModule(
                Items(mixed, n=16), image_size=16, batch_size=4, num_workers=0
            ).train_dataloader()
        )
    )["images"]
    assert x.shape[1] == 3  # the grey item converted, not the dataset made one-channel


def test_a_hugging_face_dataset_trains_end_to_end(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {
        "image": [Image.fromarray(_rgb(i, 36)) for i in range(16)],
        "label": [i % 4 for i in range(16)],
    }
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    assert isinstance(ds[0]["image"], Image.Image)
    dm = FusionDataModule(ds, ds, image_size=32, batch_size=8, num_workers=1, seed=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(TinyNet(), datamodule=dm)
    assert trainer.global_step == 2
