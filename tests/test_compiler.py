"""The user's own pipeline, compiled: torchvision v2 and timm transforms split between workers
and device, in order, nothing dropped; unknown transforms kept in the workers with a warning;
the same pixels on every route; clear errors."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torchvision.transforms import v2

from ff_lightning import FusionDataModule
from ff_lightning.augment.batch_ops import MixUpCutMix, RandomErasing
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.compiler import compile_batch_transform, compile_transform
from ff_lightning.pipeline.stages import RoutedStage, WorkerGeometry, WorkerTransforms
from tests.test_datamodule import TensorImages

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TAIL = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def _dm(transform: Any, **kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(batch_size=8, num_workers=0, seed=3)
    args.update(kw)
    return FusionDataModule(
        TensorImages(24, pil=True), TensorImages(8, seed=1, pil=True), transform=transform, **args
    )


def _train(dm: FusionDataModule, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    dm.set_ratio(ratio)
    dm.device_stage.steps = 0  # the batch ops draw per step: the same step on every call
    batch = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)


def test_the_keyword_form_and_the_same_pipeline_written_out_agree() -> None:
    kw = FusionDataModule(
        TensorImages(24), image_size=32, batch_size=8, num_workers=0, seed=3, policy="randaugment"
    )
    written = FusionDataModule(
        TensorImages(24),
        batch_size=8,
        num_workers=0,
        seed=3,
        transform=v2.Compose(
            [v2.RandomResizedCrop(32), v2.RandomHorizontalFlip(), v2.RandAugment(), *TAIL]
        ),
    )
    for r in (0.0, 0.5, 1.0):
        assert torch.equal(_train(kw, r)[0], _train(written, r)[0])


def test_a_v2_pipeline_is_split_into_worker_routed_and_device_stages() -> None:
    t = v2.Compose(
        [
            v2.RandomResizedCrop(32, scale=(0.3, 1.0)),
            v2.RandomHorizontalFlip(0.3),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
            v2.RandomGrayscale(0.2),
            v2.GaussianBlur(3),
            *TAIL,
            v2.RandomErasing(0.25),
        ]
    )
    dm = _dm(t)
    geo, routed, tail = dm.pipeline.stages
    assert isinstance(geo, WorkerGeometry) and geo.crop == "random_resized" and geo.size == 32
    assert geo.crop_scale == (0.3, 1.0) and geo.flip_p == pytest.approx(0.3)
    assert isinstance(routed, RoutedStage)
    names = [type(m).__name__ for m in routed.policy.transforms]
    assert names == ["ColorJitter", "RandomGrayscale", "GaussianBlur"]
    assert tail.mean == MEAN and isinstance(tail.erasing, RandomErasing)
    # value 0 after Normalize is 0 in the normalised space: unchanged.
    assert tail.erasing.value in (0, [0.0]) and tail.erasing.p == 0.25
    text = dm.describe()
    for word in (
        "random resized crop",
        "ColorJitter",
        "GaussianBlur",
        "RandomErasing",
        "normalise",
    ):
        assert word in text


def test_every_route_gives_the_same_pixels() -> None:
    t = v2.Compose(
        [
            v2.RandomResizedCrop(32),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
            v2.RandomApply([v2.GaussianBlur(3)], p=0.5),
            v2.RandomSolarize(128, p=0.3),
            *TAIL,
        ]
    )
    dm = _dm(t)
    ref = _train(dm, 0.0)[0]
    for r in (0.5, 1.0):
        assert torch.equal(_train(dm, r)[0], ref)


def test_deterministic_transforms_give_torchvisions_pixels() -> None:
    # With every random choice fixed (p=1), the compiled pipeline is the user's pipeline.
    t = v2.Compose(
        [
            v2.Resize(36),
            v2.CenterCrop(32),
            v2.RandomGrayscale(p=1.0),
            v2.RandomInvert(p=1.0),
            v2.RandomPosterize(4, p=1.0),
            *TAIL,
        ]
    )
    # Tensors: torchvision's tensor kernels, which the routed kernels reproduce.
    dm = FusionDataModule(TensorImages(24), batch_size=8, num_workers=0, seed=3, transform=t)
    x, _ = _train(dm, 0.5)
    ds = TensorImages(24)
    order = next(iter(dm.train_dataloader()))["route"].indices.tolist()
    ref = torch.stack([t(ds[i][0]) for i in order])
    assert torch.allclose(x, ref, atol=1e-5)


def test_timm_create_transform_is_compiled() -> None:
    timm_data = pytest.importorskip("timm.data")
    train = timm_data.create_transform(
        32,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25,
        re_mode="pixel",
        interpolation="bicubic",
    )
    val = timm_data.create_transform(32, is_training=False)
    dm = _dm(train, val_transform=val)
    geo, routed, tail = dm.pipeline.stages
    assert geo.crop == "random_resized" and geo.interpolation == "bicubic" and geo.flip_p == 0.5
    assert type(routed.policy).__name__ == "TimmRandAugment"
    assert tail.erasing.value == "random" and tail.erasing.p == 0.25
    assert dm.pipeline.eval_prefix is None and geo.val_resize_to == 36  # the fast eval path
    x, _ = _train(dm, 0.5)
    assert torch.equal(x, _train(dm, 0.0)[0])
    # separate=True's three stages compile to the same plan.
    sep = timm_data.create_transform(
        32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", separate=True
    )
    geo2, routed2, tail2 = _dm(sep).pipeline.stages
    assert geo2.crop == "random_resized" and type(routed2.policy).__name__ == "TimmRandAugment"
    assert tail2.normalize and tail2.erasing is None


class Noise:
    """A transform the compiler does not know: adds torch-random noise to a uint8 tensor."""

    def __call__(self, x: Any) -> Any:
        x = v2.functional.pil_to_tensor(x) if not isinstance(x, torch.Tensor) else x
        return (x.int() + torch.randint(-20, 21, x.shape)).clamp(0, 255).to(torch.uint8)


def test_an_unknown_transform_stays_in_the_workers_with_what_it_needs() -> None:
    t = v2.Compose([v2.RandomResizedCrop(32), Noise(), v2.ColorJitter(0.3), *TAIL])
    with pytest.warns(
        UserWarning, match=r"`Noise` at position 1 of `transform` runs in the workers"
    ):
        dm = _dm(t)
    stages = dm.pipeline.stages
    prefix = next(s for s in stages if isinstance(s, WorkerTransforms))
    assert [type(x).__name__ for x in prefix.transforms] == ["RandomResizedCrop", "Noise"]
    routed = next(s for s in stages if isinstance(s, RoutedStage)).policy
    assert [type(m).__name__ for m in routed.transforms] == ["ColorJitter"]
    assert "note: `Noise` at position 1" in dm.describe()
    # The user's transforms draw from (seed, epoch, index): the same pixels on every route and
    # every load.
    ref = _train(dm, 0.0)[0]
    assert torch.equal(_train(dm, 1.0)[0], ref)


def test_the_users_transforms_are_seeded_per_sample_and_leave_the_rng_as_it_was() -> None:
    from ff_lightning.pipeline.worker.steps import run_user_transforms

    x = torch.zeros(3, 8, 8, dtype=torch.uint8) + 100
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = run_user_transforms([Noise()], x, seed=1, epoch=2, index=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(run_user_transforms([Noise()], x, seed=1, epoch=2, index=5), a)
    assert not torch.equal(run_user_transforms([Noise()], x, seed=1, epoch=2, index=6), a)
    assert not torch.equal(run_user_transforms([Noise()], x, seed=1, epoch=3, index=5), a)


def test_an_unknown_transform_after_the_normalisation_keeps_it_all_in_the_workers() -> None:
    class Scale:
        def __call__(self, x: Any) -> Any:
            return x * 0.5

    t = v2.Compose([v2.RandomResizedCrop(32), v2.ColorJitter(0.3), *TAIL, Scale()])
    with pytest.warns(UserWarning, match=r"`Scale` at position 5"):
        dm = _dm(t)
    prefix = next(s for s in dm.pipeline.stages if isinstance(s, WorkerTransforms))
    assert prefix.floats and len(prefix.transforms) == 6
    x, _ = _train(dm, 0.5)
    # Floats from the workers: the device only casts; the values are the user's pipeline's.
    assert x.dtype == torch.float32 and x.abs().max() < 1.5


def test_bad_input_names_the_position_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"`transform` item 1 \(str: 'flip'\) is not a transform"):
        compile_transform([v2.RandomResizedCrop(32), "flip"])
    with pytest.raises(ConfigError, match=r"transform 1 \(RandomSolarize\).*threshold"):
        compile_transform([v2.RandomResizedCrop(32), v2.RandomSolarize(300)])
    with pytest.raises(ConfigError, match=r"`policy` and `transform` both describe"):
        _dm(v2.RandomResizedCrop(32), policy="randaugment")
    with pytest.raises(ConfigError, match=r"`batch_transform` must be torchvision's MixUp"):
        compile_batch_transform(v2.RandomErasing(), 10)


def test_batch_transforms_become_the_device_mix() -> None:
    both = v2.RandomChoice(
        [v2.MixUp(alpha=0.8, num_classes=5), v2.CutMix(alpha=1.0, num_classes=5)], p=[0.25, 0.75]
    )
    mix = compile_batch_transform(both, None)
    assert isinstance(mix, MixUpCutMix) and mix.mixup_alpha == 0.8 and mix.cutmix_alpha == 1.0
    assert mix.switch_prob == pytest.approx(0.75) and mix.num_classes == 5
    timm_mix = pytest.importorskip("timm.data").Mixup(
        mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=7
    )
    mix = compile_batch_transform(timm_mix, None)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.label_smoothing, mix.num_classes) == (
        0.8,
        1.0,
        0.1,
        7,
    )
    dm = _dm(v2.Compose([v2.RandomResizedCrop(32), *TAIL]), batch_transform=both)
    _, y = _train(dm, 0.0)
    assert y.shape == (8, 5) and torch.allclose(y.sum(1), torch.ones(8))


def test_a_pipeline_without_a_crop_keeps_the_images_size() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept in the workers
        dm = FusionDataModule(
            _Square(24), batch_size=8, num_workers=0, transform=[v2.ColorJitter(0.2), *TAIL]
        )
    geo = dm.pipeline.geometry
    assert geo.crop == "none" and geo.size == 40
    x, _ = _train(dm, 0.5)
    assert x.shape == (8, 3, 40, 40)


class _Square(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        return self.x[i], i % 4
