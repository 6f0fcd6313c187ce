"""Multi-view training: every view of every sample keyed by ``(seed, epoch, index, view)``.

- view ``v`` equals the single-view pipeline built with its group's transform and
  ``seed=view_seed(seed, v)`` (one decode, the same crops, draws and kernels);
- the views of a sample are independent, and a view does not depend on the batch around it;
- routes: the same pixels at r = 0, 0.5 and 1, bit for bit on CPU, per view, with records
  crossing the worker boundary by pickling;
- the batch the model receives: a list of ``[B, C, S_v, S_v]`` tensors in view order, or
  DINOv2's dict of crops; the raw batch a ``RawBatch`` with one tensor per group;
- the step statistics count the routed work by pixels; the memory guard chunks every group.
"""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch

from ff_lightning import FusionDataModule
from ff_lightning.pipeline import Pipeline
from ff_lightning.pipeline.batch import RawBatch, RoutedBatch, StepStats, ViewsRoute
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.views import view_seed
from ff_lightning.pipeline.worker.views import view_weights
from ff_lightning.testing.probes import FakeProbe
from tests.views_cases import GLOBAL, LOCAL, dino_groups, global_view, local_view, source

INDICES = (3, 17, 0, 9, 12, 5, 14, 8)


pytestmark = pytest.mark.usefixtures("single_thread")


def _pipeline(views, **kw) -> Pipeline:
    kw = {"batch_size": len(INDICES), "num_workers": 0, "seed": 7, **kw}
    return Pipeline(source(), views=views, **kw)


def _raw(pipe: Pipeline, r: float, *, epoch: int = 2, strategy: str = "costliest", indices=INDICES):
    """The worker's batch at device share ``r``, through a pickle (the worker boundary)."""
    rb = RoutedBatch(tuple(indices), epoch, r, round(r * len(indices)), strategy)
    return pickle.loads(pickle.dumps(pipe.train_loader().dataset.__getitems__(rb)))


def _views(pipe: Pipeline, r: float, **kw) -> list[torch.Tensor]:
    views, _ = pipe.transfer(_raw(pipe, r, **kw), "cpu")
    return views


def _single(transform, seed: int, *, epoch: int = 2, indices=INDICES) -> torch.Tensor:
    pipe = Pipeline(
        source(),
        transform=transform,
        seed=seed,
        batch_size=len(indices),
        num_workers=0,
        device_decode=False,
    )
    rb = RoutedBatch(tuple(indices), epoch, 0.0, 0)
    x, _ = pipe.transfer(pipe.train_loader().dataset.__getitems__(rb), "cpu")
    return x


# ---------------------------------------------------------------- the key of a view
def test_each_view_equals_the_single_view_pipeline() -> None:
    groups = dino_groups(n_local=3)
    views = _views(_pipeline(groups), 0.0)
    assert len(views) == 5
    transforms = [groups[0][1], groups[1][1], *[groups[2][1]] * 3]
    for v, transform in enumerate(transforms):
        assert torch.equal(views[v], _single(transform, view_seed(7, v))), f"view {v}"


def test_views_are_independent_and_keyed_by_their_sample() -> None:
    pipe = _pipeline([(local_view(), 4)])
    views = _views(pipe, 0.0)
    # Four views of one transform: four different images of every sample.
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(views[a], views[b])
    # The view seeds differ, so the records of the views differ.
    seeds = {view_seed(7, v) for v in range(4)}
    assert len(seeds) == 4 and view_seed(7, 0) != view_seed(8, 0)
    # A sample's views do not depend on the batch around it (another batch, another order).
    other = (12, 3, 1)
    again = _views(pipe, 0.0, indices=other)
    for v in range(4):
        assert torch.equal(again[v][0], views[v][INDICES.index(12)])
        assert torch.equal(again[v][1], views[v][INDICES.index(3)])
    # ... and change with the epoch.
    assert not torch.equal(_views(pipe, 0.0, epoch=3)[0], views[0])


def test_erased_views_are_keyed_like_the_single_view_pipeline() -> None:
    """RandomErasing in a view group (per-pixel noise) is drawn from (view seed, epoch,
    index): view v equals the single-view pipeline with seed view_seed(seed, v), on every
    route."""
    from torchvision.transforms import v2

    erasing = v2.Compose([local_view(), v2.RandomErasing(0.9, value="random")])
    pipe = _pipeline([(erasing, 3)])
    seen = {r: _views(pipe, r) for r in (0.0, 0.5, 1.0)}
    for v in range(3):
        alone = _single(erasing, view_seed(7, v))
        assert torch.equal(seen[0.0][v], alone), f"view {v}"
        assert torch.equal(seen[0.5][v], alone) and torch.equal(seen[1.0][v], alone)
    assert not torch.equal(seen[0.0][0], seen[0.0][1])


# ---------------------------------------------------------------- routes
@pytest.mark.parametrize("strategy", ["costliest", "random"])
def test_routes_give_the_same_views_bit_for_bit(strategy: str) -> None:
    pipe = _pipeline(dino_groups(n_local=3))
    seen = {r: _views(pipe, r, strategy=strategy) for r in (0.0, 0.5, 1.0)}
    for r in (0.5, 1.0):
        for v, (a, b) in enumerate(zip(seen[0.0], seen[r], strict=True)):
            assert torch.equal(a, b), f"view {v} at r={r}"


def test_device_share_is_split_per_sample_view_in_each_group() -> None:
    pipe = _pipeline(dino_groups(n_local=3))
    raw = _raw(pipe, 0.5)
    route = raw["route"]
    assert isinstance(raw, RawBatch) and isinstance(route, ViewsRoute)
    b = len(INDICES)
    # One tensor per group, view-major; each group routes round(r * n_g * B) of its images.
    assert [tuple(x.shape) for x in raw["images"]] == [
        (b, 3, GLOBAL, GLOBAL),
        (b, 3, GLOBAL, GLOBAL),
        (3 * b, 3, LOCAL, LOCAL),
    ]
    assert [g.n_device for g in route.groups] == [4, 4, 12]
    assert route.n_device == 20
    idx = torch.tensor(INDICES)
    for group, groute in zip(pipe.views, route.groups, strict=True):
        assert groute.indices.tolist() == list(INDICES) * group.count
        assert len(groute.params) == groute.n_device
        # Costliest first within the group: no CPU-routed image costs more than a device one.
        policy = group.routed.policy
        parts = [policy.sample(idx, 2, view_seed(7, v)) for v in group.views]
        cost = policy.estimate_cost(type(parts[0]).cat(parts))
        on_device = torch.zeros(len(cost), dtype=torch.bool)
        on_device[groute.device_index] = True
        assert float(cost[on_device].min()) >= float(cost[~on_device].max())
        assert groute.params.equal(type(parts[0]).cat(parts)[groute.device_index])


def test_step_stats_count_views_by_pixels() -> None:
    groups = [(global_view(), 1), (local_view(), 4)]
    pipe = _pipeline(groups, batch_size=6)
    # 32 px: 1024 px; 4 x 16 px: 1024 px: a global view weighs 1/2, a local one 1/8.
    assert view_weights(pipe.views) == [0.5, 0.125]
    stats = _raw(pipe, 0.25, indices=INDICES[:6])["route"].stats
    # round(0.25 * 6) = 2 global views and round(0.25 * 24) = 6 local views on the device.
    assert stats.batch_size == 6
    assert stats.n_device == pytest.approx(2 * 0.5 + 6 * 0.125)
    assert stats.n_cpu == pytest.approx(6 - 1.75)
    assert stats.ratio == 0.25 and stats.cpu_aug_s > 0 and stats.prep_s > 0
    full = _raw(pipe, 1.0, indices=INDICES[:6])["route"].stats
    assert full.n_device == pytest.approx(6) and full.n_cpu == pytest.approx(0)


def test_memory_guard_budgets_every_group() -> None:
    pipe = _pipeline(dino_groups(n_local=3))
    want = _views(pipe, 0.0)
    # Room for 3 global or 12 local images at the guard's first estimate (8 float32 copies).
    per_global = 8 * 3 * GLOBAL * GLOBAL * 4
    pipe.stage.guard = MemoryGuard(FakeProbe(free=3 * per_global, reserved=0), reserve_mb=0)
    got = _views(pipe, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    guards = [pipe.stage.group_guard(g) for g in range(3)]
    assert guards[0] is pipe.stage.guard and len({id(g) for g in guards}) == 3
    assert [g.last_chunk for g in guards] == [2, 2, 12]  # 8 = 3 + 3 + 2; 24 = 12 + 12
    assert all(g.cpu_fallback_samples == 0 for g in guards) and pipe.stage.ratio_cap is None


class _FakeOOM(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError on a machine without CUDA."""


def test_out_of_memory_in_any_group_is_counted_in_the_metrics() -> None:
    """``fusionflow/oom_events`` adds up every view group's guard, not only the first's."""
    from ff_lightning.frontends.session import step_metrics

    pipe = _pipeline(dino_groups(n_local=3))
    want = _views(pipe, 0.0)
    guard = MemoryGuard(
        FakeProbe(free=1 << 40, reserved=0),
        reserve_mb=0,
        oom_errors=(_FakeOOM,),
        empty_cache=lambda: None,
    )
    pipe.stage.guard = guard
    local = pipe.stage.groups[2].routed.policy
    real = local.apply_batch

    def tight(images, record):  # the local views run out of memory above 6 images at once
        if images.shape[0] > 6:
            raise _FakeOOM("out of memory")
        return real(images, record)

    local.apply_batch = tight
    got = _views(pipe, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    guards = pipe.stage.augment_guards()
    assert len(guards) == 3 and guards[0] is guard
    assert guard.oom_events == 0 and guards[2].oom_events > 0
    stats = StepStats(batch_size=len(INDICES), ratio=1.0)
    metrics = step_metrics(1.0, stats, guard, augment_guards=guards)
    assert metrics["fusionflow/oom_events"] == guards[2].oom_events
    assert step_metrics(1.0, stats, guard)["fusionflow/oom_events"] == 0  # the first alone


# ---------------------------------------------------------------- the batch
def test_batch_is_a_list_of_views_in_the_training_dtype() -> None:
    pipe = _pipeline(dino_groups(n_local=2))
    views, targets = pipe.transfer(_raw(pipe, 0.5), "cpu", dtype=torch.bfloat16)
    b = len(INDICES)
    assert [tuple(v.shape) for v in views] == [(b, 3, GLOBAL, GLOBAL)] * 2 + [
        (b, 3, LOCAL, LOCAL)
    ] * 2
    assert all(v.dtype == torch.bfloat16 for v in views)
    assert targets.tolist() == [i % 3 for i in INDICES]
    # normalised: ImageNet statistics of uint8 images span about [-2.1, 2.7]
    assert float(views[0].float().min()) < -1 and float(views[0].float().max()) > 1


def test_dict_form_concatenates_each_group_along_the_batch() -> None:
    groups = dino_groups(n_local=3)
    as_list = _views(_pipeline(groups), 0.5)
    crops, _ = (lambda p: p.transfer(_raw(p, 0.5), "cpu"))(_pipeline(groups, views_format="dict"))
    assert sorted(crops) == ["global_crops", "local_crops"]
    # DINOv2's collate: view j of sample i at j * B + i.
    assert torch.equal(crops["global_crops"], torch.cat(as_list[:2]))
    assert torch.equal(crops["local_crops"], torch.cat(as_list[2:]))


def test_unnamed_groups_are_named_by_size() -> None:
    pipe = _pipeline([(global_view(), 2), (local_view(), 2)], views_format="dict")
    assert [g.name for g in pipe.views] == ["global_crops", "local_crops"]
    assert [(g.first, g.count) for g in pipe.views] == [(0, 2), (2, 2)]
    text = pipe.describe()
    assert "global_crops x2 (views 0-1, 32x32)" in text and "local_crops x2" in text
    assert "evaluation" in text


def test_evaluation_follows_the_first_group() -> None:
    pipe = Pipeline(source(), source(6), views=dino_groups(), batch_size=4, num_workers=0, seed=7)
    batch = next(iter(pipe.eval_loader()))
    x, y = pipe.transfer(batch, "cpu")
    assert tuple(x.shape) == (4, 3, GLOBAL, GLOBAL) and x.dtype == torch.float32


class _ViewsModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[list[tuple[int, ...]]] = []

    def training_step(self, batch, batch_idx):
        views, targets = batch
        self.seen.append([tuple(v.shape) for v in views])
        assert all(v.dtype == torch.float32 for v in views)
        assert targets.shape == (views[0].shape[0],)
        return sum(self.layer(v.mean(dim=(2, 3))).mean() for v in views)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_step_receives_views_and_targets(tmp_path) -> None:
    from ff_lightning import FusionFlow

    dm = FusionDataModule(
        source(), views=dino_groups(n_local=2), batch_size=5, num_workers=0, seed=1
    )
    model = _ViewsModule()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[FusionFlow(mode="fixed", ratio=0.5, report=False)],
    )
    trainer.fit(model, datamodule=dm)
    assert model.seen[0] == [(5, 3, GLOBAL, GLOBAL)] * 2 + [(5, 3, LOCAL, LOCAL)] * 2
    assert len(model.seen) == 3


def test_views_cross_a_worker_process() -> None:
    pipe = _pipeline([(global_view(), 1), (local_view(), 2)], num_workers=1, ratio=0.5)
    loader = pipe.train_loader()
    raw = next(iter(loader))
    assert isinstance(raw["route"], ViewsRoute) and len(raw["images"]) == 2
    views, _ = pipe.transfer(raw, "cpu")
    ref_pipe = _pipeline([(global_view(), 1), (local_view(), 2)], ratio=0.0)
    indices = tuple(raw["route"].indices.tolist())
    ref = _views(ref_pipe, 0.0, epoch=0, indices=indices)
    assert all(torch.equal(a, b) for a, b in zip(views, ref, strict=True))
