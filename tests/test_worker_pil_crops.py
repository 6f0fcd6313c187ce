"""The workers' batched random resized crop of PIL images (bilinear, bicubic, nearest, timm's
random choice) equals the per-sample kernel (torchvision's PIL crop then resize), bit for bit,
with its flips, for one and three channels. (Bilinear used to resize with a source box, which
reads past the crop's edges: not torchvision's bytes.)"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ff_lightning.augment import rng
from ff_lightning.pipeline.worker.geometry import N_CROP_UNIFORMS, flip_flags
from ff_lightning.pipeline.worker.steps import WorkerGeometry, geometry_batch, geometry_one


def _images(channels: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    sizes = [(70, 90), (90, 70), (64, 64), (20, 30), (150, 40), (33, 200)]
    out = []
    for h, w in sizes:
        x = torch.randint(0, 256, (h, w, channels), dtype=torch.uint8, generator=g).numpy()
        out.append(Image.fromarray(x[..., 0] if channels == 1 else x))
    return out


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "random"])
@pytest.mark.parametrize("size", [24, 64])
def test_batched_pil_crops_equal_the_per_sample_kernel(
    channels: int, interpolation: str, size: int
) -> None:
    images = _images(channels)
    idx = torch.arange(100, 100 + len(images))
    geo = WorkerGeometry(
        size=size, crop_scale=(0.05, 1.0), interpolation=interpolation, channels=channels
    )
    got = geometry_batch(images, idx, 3, geometry=geo, prefix=None, seed=5)
    u = rng.uniform(5, 3, idx, rng.STREAM_CROP, N_CROP_UNIFORMS, dtype=torch.float64).tolist()
    want = torch.stack(
        [
            geometry_one(im, geo, row, seed=5, epoch=3, index=i)
            for im, row, i in zip(images, u, idx.tolist(), strict=True)
        ]
    )
    flips = flip_flags(5, 3, idx, geo.flip_p)
    want[flips] = want[flips].flip(-1)
    assert got.shape == (len(images), channels, size, size) and got.is_contiguous()
    assert torch.equal(got, want)
