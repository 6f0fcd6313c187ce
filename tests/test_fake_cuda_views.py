"""The multi-view device stage on fake CUDA tensors (``ff_lightning.testing.fake_cuda``).

The worker's batch of view groups is pinned, moved to ``cuda:0`` and finished as the training
loop does (``Pipeline.prepare`` -> move -> ``finish``): at every device share, in the list and
dict forms, with per-view random erasing, and with lightly's SimCLR views (Pillow's blur on the
device), no host read of a device value, no host/device mix, no device-to-host copy, no
blocking or pageable host-to-device copy and no stream drain.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchvision.transforms import v2

from ff_lightning.pipeline import Pipeline
from ff_lightning.pipeline.batch import RoutedBatch
from ff_lightning.pipeline.pipeline import move_to_device
from ff_lightning.testing.fake_cuda import FakeCuda, unavailable_reason
from tests.views_cases import GLOBAL, LOCAL, dino_groups, global_view, source

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

B = 8


def _pinned(value: Any) -> Any:
    """The batch as the DataLoader's pin-memory thread hands it over."""
    if torch.is_tensor(value):
        return value.pin_memory()
    if isinstance(value, list):
        return [_pinned(v) for v in value]
    if isinstance(value, dict):
        return type(value)({k: _pinned(v) for k, v in value.items()})
    return value


def _finish_on_fake_cuda(
    pipe: Pipeline, r: float, dtype: torch.dtype, epoch: int = 1
) -> tuple[Any, Any, Any]:
    b = pipe.options.batch_size
    rb = RoutedBatch(tuple(range(3, 3 + b)), epoch, r, round(r * b))
    raw = pipe.train_loader().dataset.__getitems__(rb)
    groups = len(raw["images"])
    with FakeCuda() as cuda:
        batch = pipe.prepare(_pinned(raw))  # pinned (stubbed here) as the DataLoader pins
        moved = move_to_device(batch, torch.device("cuda", 0))
        assert cuda.counts.h2d == groups + 1  # each group's images and the targets, once
        cuda.reset()
        views, targets = pipe.finish(moved, dtype=dtype)
        assert cuda.violations == []
        counts = cuda.counts
        assert counts.d2h == 0, "a device-to-host copy"
        assert counts.h2d_sync == 0, "a host-to-device copy from pageable memory, or blocking"
        assert counts.drains == 0, cuda.drains
    return views, targets, counts


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("fmt", ["list", "dict"])
def test_views_finish_on_the_device_without_a_host_read(r: float, fmt: str) -> None:
    pipe = Pipeline(
        source(),
        views=dino_groups(n_local=3),
        views_format=fmt,
        batch_size=B,
        num_workers=0,
        seed=3,
        ratio=r,
    )
    views, targets, counts = _finish_on_fake_cuda(pipe, r, torch.bfloat16)
    if fmt == "list":
        assert [tuple(v.shape) for v in views] == [(B, 3, GLOBAL, GLOBAL)] * 2 + [
            (B, 3, LOCAL, LOCAL)
        ] * 3
        tensors = views
    else:
        assert tuple(views["global_crops"].shape) == (2 * B, 3, GLOBAL, GLOBAL)
        assert tuple(views["local_crops"].shape) == (3 * B, 3, LOCAL, LOCAL)
        tensors = list(views.values())
    assert all(v.device.type == "cuda" and v.dtype == torch.bfloat16 for v in tensors)
    assert targets.device.type == "cuda" and targets.shape == (B,)
    if r == 0.0:
        assert counts.device_ops <= 40, counts.top(10)  # normalisation only


def test_erased_views_on_the_device() -> None:
    erase = v2.Compose([global_view(1.0), v2.RandomErasing(p=0.9, value="random")])
    pipe = Pipeline(source(), views=[(erase, 2)], batch_size=B, num_workers=0, seed=3, ratio=1.0)
    views, _, _ = _finish_on_fake_cuda(pipe, 1.0, torch.float32, epoch=2)
    assert [tuple(v.shape) for v in views] == [(B, 3, GLOBAL, GLOBAL)] * 2


def test_lightly_simclr_views_on_the_device() -> None:
    """lightly's SimCLRTransform at device share 1: ColorJitter, grayscale and Pillow's blur
    (``PillowGaussianBlur``) run on the device images."""
    lightly = pytest.importorskip("lightly.transforms")
    pipe = Pipeline(
        source(),
        views=lightly.SimCLRTransform(input_size=GLOBAL, rr_prob=0.5),
        batch_size=B,
        num_workers=0,
        seed=3,
        ratio=1.0,
    )
    views, _, counts = _finish_on_fake_cuda(pipe, 1.0, torch.float32, epoch=2)
    assert [tuple(v.shape) for v in views] == [(B, 3, GLOBAL, GLOBAL)] * 2
    assert counts.device_ops > 40  # the routed chain ran on the device, not only the tail
