"""Routing in the main process: device share per batch, costliest-first choice, epochs, DDP."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from ff_lightning.augment import rng
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.routing import (
    EpochSampler,
    FixedShare,
    RoutedBatch,
    RoutedBatchSampler,
    Router,
)
from ff_lightning.pipeline.worker.geometry import random_resized_crop_box


def sample_uniforms(seed: int, epoch: int, index: int, stream: int, n: int) -> list[float]:
    """The crop/flip draws of one sample, as the worker makes them (one RNG for everything)."""
    return rng.uniform(seed, epoch, [index], stream, n, dtype=torch.float64)[0].tolist()


def _router(ratio: float, **kw: object) -> Router:
    return Router(FixedShare(ratio), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [1, 3, 8, 33])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_batch_routes_round_r_b(batch_size: int, ratio: float, drop_last: bool) -> None:
    data = list(range(50))
    bs = RoutedBatchSampler(
        EpochSampler(data, seed=1), batch_size, drop_last, router=_router(ratio)
    )
    seen = []
    for batch in bs:
        assert isinstance(batch, RoutedBatch) and batch.ratio == ratio
        assert batch.n_device == round(ratio * len(batch))
        assert len(batch.device_positions(None)) == batch.n_device
        seen += list(batch.indices)
    n_expected = (50 // batch_size) * batch_size if drop_last else 50
    assert len(seen) == n_expected == len(set(seen))
    assert len(bs) == (50 // batch_size if drop_last else -(-50 // batch_size))


def test_new_ratio_applies_to_next_emitted_batch() -> None:
    share = FixedShare(0.0)
    it = iter(RoutedBatchSampler(EpochSampler(range(40)), 10, False, router=Router(share)))
    assert next(it).n_device == 0
    share.ratio = 0.5  # the router reads its owner's share at every batch: no copy to sync
    assert next(it).n_device == 5
    share.ratio = 1.0
    assert next(it).n_device == 10


def test_costliest_samples_go_to_the_device() -> None:
    cost = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 0.0])
    batch = _router(0.5, strategy="costliest").route([0, 1, 2, 3, 4, 5], epoch=0)
    assert batch.device_positions(cost).tolist() == [0, 2, 4]
    # Ties keep batch order; "random" takes the first k of the shuffled batch.
    assert batch.device_positions(torch.zeros(6)).tolist() == [0, 1, 2]
    rand = _router(0.5, strategy="random").route([0, 1, 2, 3, 4, 5], epoch=0)
    assert rand.device_positions(cost).tolist() == [0, 1, 2]


def test_epoch_sampler_is_deterministic_per_epoch_and_differs_between_epochs() -> None:
    s = EpochSampler(range(100), seed=3)
    a = list(s)
    assert list(s) == a
    s.set_epoch(1)
    b = list(s)
    assert sorted(b) == list(range(100)) and b != a
    assert list(EpochSampler(range(100), shuffle=False)) == list(range(100))


def test_epoch_travels_with_each_index() -> None:
    sampler = EpochSampler(range(12), seed=0)
    bs = RoutedBatchSampler(sampler, 4, False, router=_router(0.25))
    bs.set_epoch(7)
    assert {batch.epoch for batch in bs} == {7}


def test_distributed_sampler_shards_are_disjoint_and_routed() -> None:
    data = list(range(30))
    shards = []
    for rank in range(2):
        ds = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ds.set_epoch(2)
        bs = RoutedBatchSampler(ds, 4, False, router=_router(0.5))
        batches = list(bs)
        assert all(b.epoch == 2 for b in batches)
        assert all(b.n_device == round(0.5 * len(b)) for b in batches)
        shards.append({i for b in batches for i in b.indices})
    assert shards[0] | shards[1] == set(data)


def test_router_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"`ratio` must be a number in \[0, 1\], got 1.5"):
        FixedShare(1.5)
    with pytest.raises(ConfigError, match=r"`ratio` must be a number in \[0, 1\], got '0.5'"):
        FixedShare("0.5")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError,
        match=r"`route_strategy` must be one of \('costliest', 'random'\), got 'best'",
    ):
        Router(FixedShare(0.1), strategy="best")


def test_uniforms_depend_only_on_key() -> None:
    a = sample_uniforms(0, 1, 5, 9, 4)
    assert a == sample_uniforms(0, 1, 5, 9, 4)
    assert a != sample_uniforms(0, 2, 5, 9, 4)
    assert a != sample_uniforms(0, 1, 6, 9, 4)
    assert all(0.0 <= u < 1.0 for u in a)
    # Roughly uniform: the mean of many draws is close to 1/2.
    many = [sample_uniforms(0, 0, i, 1, 1)[0] for i in range(4000)]
    assert abs(sum(many) / len(many) - 0.5) < 0.02


def test_random_resized_crop_box_stays_inside_and_matches_scale() -> None:
    areas = []
    for i in range(500):
        u = sample_uniforms(1, 0, i, 3, 22)
        top, left, h, w = random_resized_crop_box(60, 80, u, (0.25, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        areas.append(h * w / (60 * 80))
    assert min(areas) >= 0.2 and max(areas) <= 1.0


def test_lightning_sees_a_shuffled_loader_and_injects_a_shuffling_distributed_sampler() -> None:
    """What Lightning does under DDP: it calls the ``*_dataloader`` hook inside
    ``_replace_dunder_methods`` (so the batch sampler's init arguments, the shared router
    included, are recorded), then rebuilds the loader around a ``DistributedSampler``."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    router = _router(0.5)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        bs = RoutedBatchSampler(EpochSampler(range(16)), 4, False, router=router)
        loader = DataLoader(list(range(16)), batch_sampler=bs)
    assert _is_dataloader_shuffled(loader)
    shuffle = _is_dataloader_shuffled(loader)
    ds = DistributedSampler(list(range(16)), num_replicas=2, rank=0, shuffle=shuffle, seed=0)
    new = _update_dataloader(loader, ds)
    assert new.batch_sampler.router is router and new.batch_sampler.sampler is ds
    orders = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        orders.append([i for b in new.batch_sampler for i in b.indices])
    assert orders[0] != orders[1] and len(set(orders[0])) == 8
