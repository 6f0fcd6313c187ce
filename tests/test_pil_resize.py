"""The native crop + resize of the workers: Pillow's bytes for every shape, filter and order.

``_pil_native.resize_crop`` replaces ``image.crop(box).resize(size, BILINEAR | BICUBIC)`` (what
torchvision's and timm's random resized crops run on PIL images) and writes the result planar,
mirrored when asked. It must give the installed Pillow's bytes: the coefficients and integer
sums are Pillow's, and the order of the two passes (Pillow 13 starts vertically when the height
shrinks more than twice the width) is read from the installed Pillow once per process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ff_lightning.augment import _native, _pil_native
from ff_lightning.pipeline.worker.steps import WorkerGeometry, geometry_batch

pytestmark = pytest.mark.skipif(_pil_native.lib() is None, reason="native library not loaded")


def _pillow(image: Image.Image, box, size: tuple[int, int], resample: int, mirror: bool):
    out = image.crop(box).resize(size, resample)
    if mirror:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(out)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def test_native_crop_resize_gives_pillows_bytes() -> None:
    rng = np.random.default_rng(0)
    for case in range(400):
        h, w = (int(v) for v in rng.integers(12, 260, 2))
        mode = "L" if case % 5 == 0 else "RGB"
        arr = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
        left, top = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        box = (left, top, int(rng.integers(left + 1, w + 1)), int(rng.integers(top + 1, h + 1)))
        out_h = int(rng.choice([8, 32, 96, 224]))
        out_w = out_h if case % 3 else int(rng.integers(5, 240))
        resample = int(rng.choice([Image.BILINEAR, Image.BICUBIC]))
        mirror = bool(case % 2)
        want = _pillow(Image.fromarray(arr, mode), box, (out_w, out_h), resample, mirror)
        got = np.empty(want.shape, dtype=np.uint8)
        assert _pil_native.resize_crop(arr, box, got, resample, mirror=mirror)
        assert np.array_equal(got, want), (case, mode, (h, w), box, (out_h, out_w), resample)


def test_a_large_photo_is_resized_in_row_blocks_with_pillows_bytes() -> None:
    """Crops taller than the loop's block of rows (a 12 MP photo's crop, here 700 rows)."""
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (760, 900, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    for box, size in [((0, 0, 900, 760), (224, 224)), ((30, 20, 880, 720), (300, 180))]:
        for resample in (Image.BILINEAR, Image.BICUBIC):
            want = _pillow(image, box, size, resample, False)
            got = np.empty(want.shape, dtype=np.uint8)
            assert _pil_native.resize_crop(arr, box, got, resample)
            assert np.array_equal(got, want), (box, size, resample)


@pytest.mark.parametrize(
    ("shape", "size"), [((10, 5), (7, 4)), ((5, 10), (4, 7)), ((90, 40), (30, 38))]
)
def test_the_order_of_the_passes_is_the_installed_pillows(shape, size) -> None:
    """Shapes where starting vertically and starting horizontally round differently."""
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    box = (0, 0, shape[1], shape[0])
    want = _pillow(Image.fromarray(arr), box, size, Image.BICUBIC, False)
    got = np.empty(want.shape, dtype=np.uint8)
    assert _pil_native.resize_crop(arr, box, got, Image.BICUBIC)
    assert np.array_equal(got, want)
    assert _pil_native._pillow_order() in (0, 1)


def test_other_filters_and_bad_arguments() -> None:
    arr = np.zeros((20, 20, 3), dtype=np.uint8)
    out = np.empty((3, 8, 8), dtype=np.uint8)
    assert not _pil_native.resize_crop(arr, (0, 0, 10, 10), out, Image.NEAREST)  # Pillow's job
    with pytest.raises(ValueError, match="crop box"):
        _pil_native.resize_crop(arr, (5, 5, 25, 10), out, Image.BILINEAR)
    with pytest.raises(ValueError, match="image's C"):
        _pil_native.resize_crop(arr, (0, 0, 10, 10), np.empty((1, 8, 8), np.uint8), 2)
    for empty in ((3, 0, 5), (3, 5, 0)):  # Pillow refuses a zero side too
        with pytest.raises(ValueError, match="H, W >= 1"):
            _pil_native.resize_crop(arr, (0, 0, 10, 10), np.empty(empty, np.uint8), 2)
    with pytest.raises(ValueError, match="must be uint8"):
        _pil_native.resize_crop(arr.astype(np.float32), (0, 0, 10, 10), out, 2)
    with pytest.raises(ValueError, match="image's C"):
        _pil_native.resize_crop(np.zeros((20, 20, 4), np.uint8), (0, 0, 10, 10), out, 2)
    # the loop itself refuses empty sides (no read before its first row)
    so = _pil_native.lib()
    assert so.ff_pil_resize(arr.ctypes.data, 60, 20, 20, 3, out.ctypes.data, 0, 8, 2, 0, 1) == -1


def test_a_grayscale_image_fills_every_channel_of_a_colour_batch() -> None:
    """``crop_into`` (the device-decode regime's crop of files the source decodes) broadcasts a
    one-channel image into the three channels of its batch, as it did before the native loop."""
    from ff_lightning.pipeline.worker.geometry import crop_into

    gray = Image.fromarray(np.arange(30 * 40, dtype=np.uint8).reshape(30, 40) % 251, "L")
    out = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    crop_into(out, [1], [gray], [(3, 5, 20, 25)])
    want = np.asarray(gray.crop((5, 3, 30, 23)).resize((16, 16), Image.BILINEAR))
    for c in range(3):
        assert np.array_equal(out[1, c].numpy(), want)
    assert not out[0].any()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random"])
def test_the_worker_crops_are_the_same_with_and_without_the_native_loop(interpolation) -> None:
    rng = np.random.default_rng(2)
    images = [
        Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
        for h, w in rng.integers(30, 200, (12, 2))
    ]
    geo = WorkerGeometry(crop="random_resized", size=48, interpolation=interpolation, hflip=0.5)
    idx = torch.arange(12)
    native = geometry_batch(images, idx, 3, geometry=geo, prefix=None, seed=5)
    with _native.disabled():
        assert not _pil_native.resize_crop(
            np.asarray(images[0]), (0, 0, 10, 10), np.empty((3, 4, 4), np.uint8), 2
        )
        pillow = geometry_batch(images, idx, 3, geometry=geo, prefix=None, seed=5)
    assert torch.equal(native, pillow)
