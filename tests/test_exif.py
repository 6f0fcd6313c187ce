"""EXIF orientation (issue 10, item 6): images come back as ``PIL.ImageOps.exif_transpose``
gives them, on the worker route, the device-decode route and in validation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from ff_lightning import FusionDataModule
from ff_lightning.pipeline.worker.geometry import eval_geometry, orient
from ff_lightning.sources.datasets import ImageFolderSource
from tests.test_decode import _by_index, _mad, _picture

SIZE = 24


def _exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def _upright(data: bytes) -> torch.Tensor:
    """The reference: PIL's decode, then ``exif_transpose``."""
    with Image.open(io.BytesIO(data)) as img:
        return TF.pil_to_tensor(ImageOps.exif_transpose(img).convert("RGB"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for split in ("train", "val"):
        d = tmp_path / split / "a"
        d.mkdir(parents=True)
        for o in range(1, 9):  # every orientation, on a 60 x 30 (w x h) stored image
            (d / f"o{o}.jpg").write_bytes(_exif_jpeg(_picture(30, 60, o), o))
    return tmp_path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_exif_transpose(orientation: int) -> None:
    data = _exif_jpeg(_picture(5, 7, 0), orientation)
    with Image.open(io.BytesIO(data)) as img:
        stored = TF.pil_to_tensor(img.convert("RGB"))
    assert torch.equal(orient(stored, orientation), _upright(data))


def test_orientation_6_comes_back_upright_from_the_source(tree: Path) -> None:
    source = ImageFolderSource(tree, "train")
    i = [source.path(k).name for k in range(len(source))].index("o6.jpg")
    img, _ = source[i]
    assert img.size == (30, 60)  # exif_transpose's size, not the stored 60 x 30
    ref = _upright(source.path(i).read_bytes())
    assert torch.equal(TF.pil_to_tensor(img), ref)


def _dm(tree: Path, **kw: Any) -> FusionDataModule:
    return FusionDataModule(
        ImageFolderSource(tree, "train"),
        ImageFolderSource(tree, "val"),
        image_size=SIZE,
        batch_size=8,
        num_workers=0,
        policy="none",
        hflip=False,
        crop_scale=(1.0, 1.0),
        crop_ratio=(0.1, 10.0),
        val_crop_fraction=1.0,
        **kw,
    )


@pytest.mark.parametrize("device_decode", [True, False])
@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_training_routes_see_the_upright_image(
    tree: Path, device_decode: bool, ratio: float
) -> None:
    dm = _dm(tree, device_decode=device_decode)
    got, _ = _by_index(dm, ratio)
    source = dm.train_dataset
    for i, (img, _) in got.items():
        data = source.path(i).read_bytes()
        ref = TF.resize(_upright(data), [SIZE, SIZE], antialias=True)
        assert _mad(img, ref) <= 1.0, source.path(i).name
    # Sanity: ignoring the tag would be visibly different for a rotated image.
    i6 = [source.path(k).name for k in range(len(source))].index("o6.jpg")
    with Image.open(source.path(i6)) as raw:
        stored = TF.resize(TF.pil_to_tensor(raw.convert("RGB")), [SIZE, SIZE], antialias=True)
    assert _mad(got[i6][0], stored) > 10


def test_validation_sees_the_upright_image(tree: Path) -> None:
    dm = _dm(tree)
    batch = next(iter(dm.val_dataloader()))
    source = dm.val_dataset
    for k, img in enumerate(batch["images"]):
        ref = eval_geometry(_upright(source.path(k).read_bytes()), size=SIZE, crop_fraction=1.0)
        assert _mad(img, ref) <= 1.0
