"""lightly's transforms, as users hand them over: its view objects are opened, its own ops
(``GaussianBlur``, ``RandomSolarization``, ``RandomRotate``) become routed ops with lightly's
laws and Pillow's pixels, and a ``SimCLRTransform`` / ``DINOTransform`` compiles with nothing
left in the workers.

The Pillow-blur tests need only Pillow; the rest use lightly itself and skip without it.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from ff_lightning.augment import _native
from ff_lightning.augment.transforms import Record
from ff_lightning.augment.transforms.blur import PillowGaussianBlur
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline import Pipeline
from ff_lightning.pipeline.batch import RoutedBatch
from tests.views_cases import source

INDICES = (4, 1, 11, 7, 0, 19)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------- Pillow's blur
@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("size", [(37, 29), (5, 64)])
def test_pillow_blur_gives_pillows_pixels_for_each_drawn_sigma(native: bool, size) -> None:
    blur = PillowGaussianBlur((0.1, 3.0), p=0.7)
    x = _images(24, *size)
    rec = blur.sample(range(24), epoch=1, seed=5)
    if native:
        out = blur.apply_batch(x, rec)
    else:
        with _native.disabled():
            out = blur.apply_batch(x, rec)
    applied, sigma = rec["applied"].tolist(), rec["sigma"].tolist()
    assert 0 < sum(applied) < 24
    for i in range(24):
        want = x[i]
        if applied[i]:
            want = _tensor(_pil(x[i]).filter(ImageFilter.GaussianBlur(radius=sigma[i])))
        assert torch.equal(out[i], want), f"sample {i} (applied {applied[i]}, sigma {sigma[i]})"
    assert torch.equal(out, blur.apply_batch(x, rec))  # deterministic, input untouched


def test_pillow_blur_law_over_ten_thousand_draws() -> None:
    lo, hi, p = 0.1, 2.0, 0.5
    rec = PillowGaussianBlur((lo, hi), p=p).sample(range(10_000), epoch=0, seed=11)
    applied = rec["applied"].double()
    sigma = rec["sigma"].double()
    # Bernoulli(p) and uniform(lo, hi), as lightly's np.random draws: within 4 standard errors
    assert abs(applied.mean().item() - p) < 4 * (p * (1 - p) / 10_000) ** 0.5
    sd = (hi - lo) / 12**0.5
    assert abs(sigma.mean().item() - (lo + hi) / 2) < 4 * sd / 100
    assert abs(sigma.std().item() - sd) < 0.02 * sd
    assert lo <= sigma.min().item() and sigma.max().item() <= hi


def test_pillow_blur_record_is_the_samples_own() -> None:
    blur = PillowGaussianBlur((0.2, 2.0), p=0.5)
    whole = blur.sample(INDICES, epoch=3, seed=2)
    for j, i in enumerate(INDICES):
        one = blur.sample([i], epoch=3, seed=2)
        assert one["sigma"].item() == whole["sigma"][j].item()
        assert one["applied"].item() == whole["applied"][j].item()


def test_pillow_blur_zero_sigma_is_a_copy_and_bad_sigmas_are_named() -> None:
    x = _images(3, 16, 16)
    rec = Record({"applied": torch.ones(3, dtype=torch.bool), "sigma": torch.zeros(3)}, 3)
    assert torch.equal(PillowGaussianBlur((0.0, 0.0), p=1.0).apply_batch(x, rec), x)
    with pytest.raises(ConfigError, match="PillowGaussianBlur: `sigmas`"):
        PillowGaussianBlur((2.0, 1.0))
    with pytest.raises(ConfigError, match="`sigmas` must be a pair"):
        PillowGaussianBlur("wide")  # type: ignore[arg-type]


# ---------------------------------------------------------------- lightly itself
lightly_transforms = pytest.importorskip("lightly.transforms")


def _routed(t):
    from ff_lightning.augment.transforms.convert import from_lightly

    routed = from_lightly(t)
    assert routed is not None, type(t).__name__
    return routed


def test_lightly_ops_give_lightlys_pixels() -> None:
    """With the draw fixed (prob 1, one sigma), our op equals lightly's op on the PIL image."""
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.rotation import RandomRotate
    from lightly.transforms.solarize import RandomSolarization

    x = _images(4, 33, 33)
    cases = [
        GaussianBlur(prob=1.0, sigmas=(1.3, 1.3)),
        RandomSolarization(prob=1.0, threshold=100),
        RandomRotate(prob=1.0, angle=90),
        RandomRotate(prob=1.0, angle=180),
    ]
    for t in cases:
        ours = _routed(t)
        out = ours.apply_batch(x, ours.sample(range(4), epoch=0, seed=1))
        for i in range(4):
            want = _tensor(t(_pil(x[i])))
            assert torch.equal(out[i], want), f"{type(t).__name__} sample {i}"


def test_lightly_probabilities_carry_over() -> None:
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.rotation import RandomRotate
    from lightly.transforms.solarize import RandomSolarization

    blur = _routed(GaussianBlur(prob=0.3, sigmas=(0.5, 1.5)))
    assert (blur.p, blur.sigmas) == (0.3, (0.5, 1.5))
    sol = _routed(RandomSolarization(prob=0.2, threshold=128))
    assert (sol.p, sol.threshold) == (0.2, 128.0)
    turn = _routed(RandomRotate(prob=0.25, angle=270))
    assert turn.p == 0.25 and turn.transforms[0].degrees == (270.0, 270.0)
    applied = turn.sample(range(10_000), epoch=0, seed=3)["applied"].double().mean().item()
    assert abs(applied - 0.25) < 4 * (0.25 * 0.75 / 10_000) ** 0.5


def _lightly_pipeline(views, **kw) -> Pipeline:
    return Pipeline(source(), views=views, batch_size=len(INDICES), num_workers=0, seed=3, **kw)


def _views(pipe: Pipeline, r: float) -> list[torch.Tensor]:
    rb = RoutedBatch(INDICES, 1, r, round(r * len(INDICES)))
    raw = pickle.loads(pickle.dumps(pipe.train_loader().dataset.__getitems__(rb)))
    return pipe.transfer(raw, "cpu")[0]


@pytest.mark.parametrize("which", ["simclr", "dino"])
def test_lightlys_multi_view_objects_compile_whole(which: str) -> None:
    """Nothing of SimCLRTransform / DINOTransform stays in the workers as a user object: the
    crop and flip are worker geometry, the rest routed, the tensor conversion and Normalize on
    the device; the routes agree bit for bit."""
    from lightly.transforms import DINOTransform, SimCLRTransform

    if which == "simclr":
        t = SimCLRTransform(input_size=24, rr_prob=0.5)
        sizes = [24, 24]
    else:
        t = DINOTransform(global_crop_size=24, local_crop_size=12, n_local_views=2)
        sizes = [24, 24, 12, 12]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = _lightly_pipeline(t)
    # a transform left in the workers would be named in an ff_lightning warning
    assert not [w for w in caught if str(w.message).startswith("ff_lightning")]
    text = pipe.describe()
    assert "your own transforms" not in text
    assert "PillowGaussianBlur" in text and "ColorJitter" in text
    seen = {r: _views(pipe, r) for r in (0.0, 0.5, 1.0)}
    assert [v.shape[-1] for v in seen[0.0]] == sizes
    for r in (0.5, 1.0):
        for v, (a, b) in enumerate(zip(seen[0.0], seen[r], strict=True)):
            assert torch.equal(a, b), f"view {v} at r={r}"


def test_an_unknown_lightly_op_stays_in_the_workers_named() -> None:
    """A transform without a routed form inside a lightly view is named in the warning and
    runs in the workers as written."""
    from lightly.transforms.multi_view_transform import MultiViewTransform
    from torchvision.transforms import v2

    class Tint:  # a user's own op inside a lightly view: unknown here
        def __call__(self, im):
            return im

    view = v2.Compose(
        [v2.RandomResizedCrop(16), Tint(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    )
    with pytest.warns(UserWarning, match="`Tint` at position 1"):
        pipe = _lightly_pipeline(MultiViewTransform([view, view]))
    assert [v.shape[-1] for v in _views(pipe, 0.5)] == [16, 16]
