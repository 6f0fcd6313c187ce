"""A Chain of routed transforms driven by the pipeline's worker half and device stage exactly
like a policy: the same pixels at every routing ratio (route independence, bit for bit on
CPU), records crossing the worker boundary by pickling."""

from __future__ import annotations

import pickle

import pytest
import torch

from ff_lightning.augment import build_policy
from ff_lightning.augment.transforms import (
    Chain,
    ColorJitter,
    GaussianBlur,
    RandomAffine,
    RandomApply,
    RandomGrayscale,
)
from ff_lightning.pipeline.batch import RoutedBatch
from ff_lightning.pipeline.device.stage import DeviceStage
from ff_lightning.pipeline.worker.dataset import AugmentingDataset


def _source(n: int = 24) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 256, (3, 40 + i, 48), dtype=torch.uint8, generator=g), i % 3)
        for i in range(n)
    ]


def _chain() -> Chain:
    return Chain(
        [
            ColorJitter(0.4, 0.4, 0.4, 0.1),
            RandomGrayscale(0.2),
            RandomApply([GaussianBlur(5)], p=0.5),
            RandomAffine(15, interpolation="bilinear"),
            build_policy("trivialaugment"),
        ]
    )


@pytest.mark.parametrize("strategy", ["costliest", "random"])
def test_chain_gives_the_same_pixels_at_every_ratio(strategy: str) -> None:
    chain = _chain()
    data = AugmentingDataset(_source(), train=True, image_size=32, policy=chain, seed=5)
    stage = DeviceStage(chain, mean=(0.5,) * 3, std=(0.5,) * 3)
    indices = tuple(range(3, 19))
    seen = []
    for k in (0, 7, 16):
        rb = RoutedBatch(indices, 2, k / 16, k, strategy)
        batch = pickle.loads(pickle.dumps(data.__getitems__(rb)))  # the worker boundary
        route = batch["route"]
        assert route.n_device == k and (route.params is None) == (k == 0)
        images = stage.augment(batch["images"], route)
        seen.append(images)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])
    # and the chain applied alone gives them too
    data_plain = AugmentingDataset(_source(), train=True, image_size=32, policy=Chain([]), seed=5)
    crops = data_plain.__getitems__(RoutedBatch(indices, 2, 0.0, 0))["images"]
    rec = chain.sample(torch.tensor(indices), 2, 5)
    assert torch.equal(chain.apply_batch(crops, rec), seen[0])
