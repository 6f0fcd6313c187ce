"""The device half on fake CUDA tensors (``ff_lightning.testing.fake_cuda``), on CPU.

Every test runs real code on ``cuda:0`` tensors that have no data: a host read of a device
value or a host/device mix raises, and the harness counts device ops (an upper bound on kernel
launches), host-to-device copies and device-to-host copies. The budgets below are the goals of
issue 19 (B=256, 224 px, share 1.0, bf16, random erasing + mixup/cutmix); counts are taken on a
warm batch (the second of the same batch: the device caches of warp indices and constants are
filled by the first), and the cold batch is held to the copy budgets too.
"""

from __future__ import annotations

import pytest
import torch

from ff_lightning.augment import build_policy
from ff_lightning.pipeline.batch import BatchRoute, StepStats
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.device.stage import DeviceStage
from ff_lightning.testing.fake_cuda import FakeCuda, OpCounts, unavailable_reason
from ff_lightning.testing.probes import FakeProbe

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

POLICIES = ["randaugment", "trivialaugment", "autoaugment", "augmix", "none"]
# Device ops per batch (warm) and host-to-device copies per batch (cold and warm).
OP_BUDGET = {"randaugment": 250, "trivialaugment": 150, "autoaugment": 200, "augmix": 700}
OP_BUDGET["none"] = 40
COPY_BUDGET = {"randaugment": 8, "trivialaugment": 8, "autoaugment": 8, "augmix": 30, "none": 8}
CLASSES = 10


def _stage(policy: str, guard=None, **kw) -> DeviceStage:
    args = dict(random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=CLASSES)
    args.update(kw)
    return DeviceStage(
        build_policy(policy),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        seed=1,
        guard=guard,
        **args,
    )


def _route(stage: DeviceStage, b: int, share: float, epoch: int = 0) -> BatchRoute:
    k = round(share * b)
    order = torch.randperm(b, generator=torch.Generator().manual_seed(epoch))
    device_index = torch.arange(b) if k == b else order[:k].sort().values
    indices = torch.arange(b) + 1000 * epoch
    params = stage.policy.sample(indices[device_index], epoch, 0)
    return BatchRoute(indices, epoch, device_index, params, StepStats(batch_size=b, ratio=share))


def _finish(
    cuda: FakeCuda, stage: DeviceStage, route: BatchRoute, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, OpCounts]:
    b = len(route.indices)
    with cuda.uncounted():  # the batch as Lightning moves it (counted in the hooks' test)
        images = torch.empty(b, 3, size, size, dtype=torch.uint8, device="cuda")
        targets = torch.empty(b, dtype=torch.int64, device="cuda")
    cuda.reset()
    x, y = stage.finish({"images": images, "targets": targets, "route": route}, dtype=dtype)
    return x, y, cuda.counts


def _clean(cuda: FakeCuda, counts: OpCounts) -> None:
    assert cuda.violations == []
    assert counts.d2h == 0, "a device-to-host copy"
    assert counts.h2d_sync == 0, "a host-to-device copy from pageable memory, or blocking"
    assert counts.drains == 0, cuda.drains


@pytest.mark.parametrize("policy", POLICIES)
def test_budgets_at_256_images_of_224_px_in_bf16(policy: str) -> None:
    stage = _stage(policy)
    with FakeCuda() as cuda:
        route = _route(stage, 256, 1.0)
        x, y, cold = _finish(cuda, stage, route, 224, torch.bfloat16)
        _clean(cuda, cold)
        x, y, warm = _finish(cuda, stage, route, 224, torch.bfloat16)
        _clean(cuda, warm)
    assert x.device == torch.device("cuda", 0) and x.dtype == torch.bfloat16
    assert x.shape == (256, 3, 224, 224)
    assert y.device.type == "cuda" and y.dtype == torch.float32 and y.shape == (256, CLASSES)
    assert warm.device_ops <= OP_BUDGET[policy], warm.top(15)
    assert cold.h2d <= COPY_BUDGET[policy] and warm.h2d <= COPY_BUDGET[policy]


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunks-of-5"])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_share_and_chunking(policy: str, share: float, chunked: bool) -> None:
    b, size = 24, 32
    guard = None
    if chunked:
        # Budget for 5 samples at the guard's estimate (8 x one float32 copy of a sample).
        guard = MemoryGuard(FakeProbe(free=5 * 8 * 3 * size * size * 4), reserve_mb=0)
    stage = _stage(policy, guard)
    with FakeCuda() as cuda:
        route = _route(stage, b, share, epoch=2)
        x, y, counts = _finish(cuda, stage, route, size, torch.float32)
        _clean(cuda, counts)
    assert x.device.type == "cuda" and x.dtype == torch.float32 and x.shape == (b, 3, size, size)
    assert y.device.type == "cuda" and y.shape == (b, CLASSES)
    if chunked and share > 0 and policy != "none":
        assert stage.guard.last_chunk <= 5 and stage.guard.oom_events == 0


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str
)
@pytest.mark.parametrize("normalize", [True, False])
def test_normalisation_writes_every_output_dtype_on_the_device(
    dtype: torch.dtype, normalize: bool
) -> None:
    stage = _stage("none", normalize=normalize, random_erasing=0, mixup_alpha=0, cutmix_alpha=0)
    with FakeCuda() as cuda:
        with cuda.uncounted():
            images = torch.empty(8, 3, 16, 16, dtype=torch.uint8, device="cuda")
            stage._normalize(images, dtype)  # constants copied once per device and dtype
        cuda.reset()
        x = stage._normalize(images, dtype)
        _clean(cuda, cuda.counts)
    assert x.device.type == "cuda" and x.dtype == dtype
    assert cuda.counts.h2d == 0 and cuda.counts.device_ops == 1  # one fused addcmul


def test_batch_ops_on_device_images() -> None:
    from ff_lightning.augment import MixUpCutMix, RandomErasing

    with FakeCuda() as cuda:
        x = torch.empty(32, 3, 24, 24, dtype=torch.bfloat16, device="cuda")
        t = torch.empty(32, dtype=torch.int64, device="cuda")
        cuda.reset()
        erased = RandomErasing(p=0.5)(x, generator=1)
        mixed, soft = MixUpCutMix(0.8, 1.0, num_classes=5, mode="elem")(erased, t, generator=2)
        _clean(cuda, cuda.counts)
        assert cuda.counts.h2d <= 3  # the boxes; the fill once; the mixing record
    assert mixed.device.type == "cuda" and mixed.dtype == torch.bfloat16
    assert soft.device.type == "cuda" and soft.shape == (32, 5)


def test_keyed_random_erasing_on_device_images() -> None:
    """timm's per-pixel noise, keyed per sample, built on the device: no host read, one copy
    of the boxes and one of the index keys, no loop over samples."""
    from ff_lightning.augment import RandomErasing

    with FakeCuda() as cuda:
        x = torch.empty(64, 3, 24, 24, dtype=torch.bfloat16, device="cuda")
        cuda.reset()
        out = RandomErasing(p=0.25, value="random")(x, keys=(1, 0, torch.arange(64)))
        _clean(cuda, cuda.counts)
        assert cuda.counts.h2d <= 2 and cuda.counts.device_ops <= 80
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16


def test_the_timer_records_on_the_images_devices_stream() -> None:
    """Finding 5: images on cuda:1 with cuda:0 current: both events on cuda:1's stream."""
    stage = _stage("randaugment", random_erasing=0, mixup_alpha=0, cutmix_alpha=0)
    with FakeCuda(device_count=2) as cuda:
        assert torch.cuda.current_device() == 0
        images = torch.empty(8, 3, 16, 16, dtype=torch.uint8, device="cuda:1")
        route = _route(stage, 8, 1.0)
        stage.augment(images, route)
        _clean(cuda, cuda.counts)
        streams = {ev.stream for ev in cuda.events}
        assert streams == {torch.cuda.current_stream("cuda:1")}
        assert len(cuda.events) == 2


def test_controller_statistics_reduction_reads_back_once_per_decision() -> None:
    """The controller's cross-rank mean (``FusionSession.mean_reduce``): statistics go to the
    device for the collective and come back to the host for the decision. On fake CUDA the
    read-back is where the harness stops it: one host read, at decision time only (the
    controller decides once per epoch or every N steps, never per step), after one copy up."""
    from ff_lightning.frontends.session import FusionSession

    seen: list[torch.Tensor] = []

    def all_mean(t: torch.Tensor) -> torch.Tensor:  # a single rank's collective
        seen.append(t)
        return t.clone()

    reduce = FusionSession.mean_reduce(all_mean, torch.device("cuda", 0))
    assert FusionSession.mean_reduce(None, torch.device("cuda", 0)) is None
    with FakeCuda() as cuda:
        with pytest.raises(Exception) as info:
            reduce({"step_s": 0.5, "wait_s": 0.1, "aug_s": 0.2})
    assert type(info.value).__name__ == "DataDependentOutputException"
    assert [v.kind for v in cuda.violations] == ["host_read"]
    assert "session.py" in cuda.violations[0].where
    assert seen[0].device.type == "cuda" and seen[0].dtype == torch.float64
    assert seen[0].shape == (3,)
    assert cuda.counts.h2d == 1 and cuda.counts.d2h == 0


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("32-true", torch.float32), ("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)],
)
def test_lightning_batch_transfer_hooks_as_lightning_calls_them(
    precision: str, dtype: torch.dtype
) -> None:
    """``on_before_batch_transfer``, Lightning's move to the device, ``on_after_batch_transfer``
    (finding 9: ``*-mixed`` modules receive float32, as Lightning hands them)."""
    import types

    from lightning.fabric.utilities.apply_func import move_data_to_device
    from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision, Precision

    from ff_lightning import FusionDataModule
    from tests.test_datamodule import TensorImages

    plugin = {
        "32-true": Precision(),
        "bf16-mixed": MixedPrecision("bf16-mixed", "cpu"),
        "bf16-true": HalfPrecision("bf16-true"),
    }[precision]
    dm = FusionDataModule(
        TensorImages(),
        image_size=32,
        batch_size=8,
        num_workers=0,
        seed=3,
        ratio=0.5,
        random_erasing=0.25,
        mixup_alpha=0.8,
        num_classes=4,
    )
    dm.trainer = types.SimpleNamespace(  # type: ignore[assignment]
        precision_plugin=plugin, lightning_module=None, global_rank=0
    )
    batch = next(iter(dm.train_dataloader()))
    with FakeCuda() as cuda:
        # The DataLoader's pin-memory thread pins what it can (the route has no tensor `.to`).
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
        batch = dm.on_before_batch_transfer(batch, 0)
        moved = move_data_to_device(batch, torch.device("cuda", 0))
        assert moved["route"] is batch["route"]  # the route record stays on the host
        assert (cuda.counts.h2d, cuda.counts.h2d_sync) == (2, 0)  # images, targets
        cuda.reset()
        x, y = dm.on_after_batch_transfer(moved, 0)
        _clean(cuda, cuda.counts)
        assert cuda.counts.h2d <= 8
    assert x.device.type == "cuda" and x.dtype == dtype and x.shape == (8, 3, 32, 32)
    assert y.device.type == "cuda" and y.shape == (8, 4)
    assert dm.device_stage.steps == 1


def test_warp_and_shift_indices_are_computed_once_on_the_device() -> None:
    """Finding 3: the nearest-warp and shift indices are cached on the device, keyed as the
    CPU route keys them; a warm group is a stack and a gather, whatever its size."""
    from ff_lightning.augment._gather import DEVICE_INDEX_CACHE
    from ff_lightning.augment.functional import apply_op

    m = torch.tensor([15.0, -15.0] * 16)
    with FakeCuda() as cuda:
        x = torch.empty(32, 3, 64, 64, dtype=torch.uint8, device="cuda")
        for op in ("Rotate", "TranslateX"):
            cuda.reset()
            apply_op(x, op, m)
            cold, misses = cuda.counts.device_ops, DEVICE_INDEX_CACHE.misses
            cuda.reset()
            apply_op(x, op, m)
            warm = cuda.counts
            _clean(cuda, warm)
            assert DEVICE_INDEX_CACHE.misses == misses  # nothing computed again
            # index stack, fill/pixels copies into the padded batch, the gather
            assert warm.device_ops <= 5 < cold, (op, cold, warm.top(8))
            assert warm.by_op["gather"] == 1


def test_contrast_mean_is_a_sum_and_one_division_on_the_device() -> None:
    """Finding 4 on the device: no ``mean`` kernel (CUDA's multiplies by the reciprocal)."""
    from ff_lightning.augment.functional import apply_op

    with FakeCuda() as cuda:
        x = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="cuda")
        cuda.reset()
        apply_op(x, "Contrast", torch.full((8,), 0.5))
        _clean(cuda, cuda.counts)
    assert cuda.counts.by_op["mean"] == 0 and cuda.counts.by_op["sum"] == 1
    assert cuda.counts.by_op["div_"] == 1


def test_sharpness_in_place_copies_no_border() -> None:
    """Finding 8: in place, the borders are already there; out of place, four copies."""
    from ff_lightning.augment import _color

    with FakeCuda() as cuda:
        x = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="cuda")
        alpha = torch.empty(8, device="cuda")
        cuda.reset()
        _color.sharpness(x, alpha, x)
        in_place = cuda.counts.by_op["copy_"]
        cuda.reset()
        _color.sharpness(x, alpha, torch.empty_like(x))
        out_of_place = cuda.counts.by_op["copy_"]
        _clean(cuda, cuda.counts)
    assert in_place == 1 and out_of_place == 5  # the inner store (+ the four borders)
