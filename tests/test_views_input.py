"""What ``views=`` accepts (groups, named groups, a list of Compose, lightly's and DINOv2's
multi-view objects) and what it refuses, each refusal a ``ConfigError`` naming the view."""

from __future__ import annotations

import pickle

import pytest
import torch
from torchvision.transforms import v2

from ff_lightning import FusionDataModule
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline import Pipeline
from ff_lightning.pipeline.batch import RoutedBatch
from ff_lightning.pipeline.views import ViewSet, parse_views
from tests.views_cases import (
    GLOBAL,
    DataAugmentationDINO,
    DINOTransform,
    MultiViewTransform,
    global_view,
    local_view,
    source,
)

INDICES = (4, 1, 11, 7)


def _views(pipe: Pipeline, r: float = 0.5) -> list[torch.Tensor]:
    rb = RoutedBatch(INDICES, 1, r, round(r * len(INDICES)))
    raw = pickle.loads(pickle.dumps(pipe.train_loader().dataset.__getitems__(rb)))
    return pipe.transfer(raw, "cpu")[0]


def _pipeline(views, **kw) -> Pipeline:
    return Pipeline(source(), views=views, batch_size=4, num_workers=0, seed=3, **kw)


# ---------------------------------------------------------------- accepted forms
def test_forms_read_into_groups() -> None:
    g, loc = global_view(), local_view()
    assert [(s.name, s.count) for s in parse_views([(g, 2), (loc, 4)]).groups] == [
        (None, 2),
        (None, 4),
    ]
    named = parse_views([("global", g, 2), ["local", loc, 4]])
    assert [(s.name, s.transform, s.count) for s in named.groups] == [
        ("global", g, 2),
        ("local", loc, 4),
    ]
    # A list of Compose: one view each, the same object in a row one group.
    assert [s.count for s in parse_views([g, g, loc, loc, loc]).groups] == [2, 3]
    assert parse_views(named) is named


def test_lightly_style_object_equals_its_groups() -> None:
    lightly = DINOTransform(n_local=3)
    spec = parse_views(lightly)
    assert isinstance(spec, ViewSet) and spec.source is lightly
    assert [s.count for s in spec.groups] == [1, 1, 3]
    t = lightly.transforms
    explicit = [(t[0], 1), (t[1], 1), (t[2], 3)]
    ours = _views(_pipeline(lightly))
    assert all(torch.equal(a, b) for a, b in zip(ours, _views(_pipeline(explicit)), strict=True))


def test_dinov2_object_gives_global_and_local_crops() -> None:
    aug = DataAugmentationDINO(local_crops_number=2)
    spec = parse_views(aug)
    assert [(s.name, s.count) for s in spec.groups] == [
        ("global_crops", 1),
        ("global_crops", 1),
        ("local_crops", 2),
    ]
    pipe = _pipeline(aug, views_format="dict")
    crops = _views(pipe)
    assert tuple(crops["global_crops"].shape) == (8, 3, GLOBAL, GLOBAL)
    assert tuple(crops["local_crops"].shape) == (8, 3, 16, 16)
    # the same views as the groups written out
    explicit = [
        ("global_crops", [aug.geometric_augmentation_global, aug.global_transfo1], 1),
        ("global_crops", [aug.geometric_augmentation_global, aug.global_transfo2], 1),
        ("local_crops", [aug.geometric_augmentation_local, aug.local_transfo], 2),
    ]
    again = _views(_pipeline(explicit, views_format="dict"))
    assert all(torch.equal(crops[k], again[k]) for k in crops)


def test_datamodule_takes_views() -> None:
    dm = FusionDataModule(source(), views=[(global_view(), 2)], batch_size=4, num_workers=0)
    assert dm.views.total == 2 and dm.views_format == "list"
    assert len(dm.pipeline.views) == 1


# ---------------------------------------------------------------- refused
@pytest.mark.parametrize(
    ("views", "match"),
    [
        ([(global_view(), 0)], r"`views` group 0: `count` must be an integer >= 1.*got 0"),
        ([("local", local_view(), -2)], r"group 0 \('local'\): `count` must be .*got -2"),
        ([(global_view(), 2.0)], r"`count` must be an integer >= 1"),
        ([(global_view(), True)], r"`count` must be an integer >= 1"),
        ([("", global_view(), 1)], r"name .* must be a non-empty string"),
        ([(None, 1)], r"group 0: the transform must be"),
        ([], r"`views` is empty"),
        ([global_view(), v2.ColorJitter(0.4)], r"`views` item 1 \(ColorJitter\) is neither"),
        (object(), r"`views` got object, which is not a multi-view transform"),
        ((global_view(), 2), r"`views` got one group \(Compose, int\), not a list of groups"),
        (v2.Compose([v2.RandomResizedCrop(8)]), r"`views` got Compose"),
        (lambda im: [im, im], r"`views` got function"),
    ],
)
def test_bad_views_name_the_group(views, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _pipeline(views)


def test_views_with_different_channel_counts() -> None:
    gray = v2.Compose([v2.RandomResizedCrop(16), v2.Grayscale(1), v2.ToImage()])
    with pytest.warns(UserWarning, match="Grayscale"):
        with pytest.raises(ConfigError, match=r"`views` view group 1 \('local'\) gives 1-channel"):
            _pipeline([("global", global_view(), 1), ("local", gray, 2)])


def test_normalisation_must_fit_the_channels() -> None:
    one = v2.Compose([v2.RandomResizedCrop(16), v2.ToImage(), v2.Normalize((0.5,), (0.2,))])
    with pytest.raises(ConfigError, match=r"view group 0: its Normalize has 1 value"):
        _pipeline([(one, 2)])


class _Stacked(MultiViewTransform):
    """Gives one stacked tensor, not one image per view."""

    def __call__(self, image):
        return torch.stack([torch.as_tensor(t(image)) for t in self.transforms])


class _WithLabel(MultiViewTransform):
    def __call__(self, image):
        return [*super().__call__(image)[:-1], "label"]


class _Short(MultiViewTransform):
    def __call__(self, image):
        return super().__call__(image)[:1]


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (_Stacked, r"_Stacked gave Tensor, not a list \(or dict\) of images"),
        (_WithLabel, r"view 1 of _WithLabel's output is str, not an image"),
        (_Short, r"_Short gave 1 views, but its parts make 2"),
    ],
)
def test_multi_view_object_output_must_be_images(cls, match: str) -> None:
    g = global_view()
    with pytest.raises(ConfigError, match=match):
        _pipeline(cls([g, g]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transform": global_view()}, r"`views` and `transform` both describe"),
        ({"mixup_alpha": 0.2, "num_classes": 3}, r"`views` cannot go with `batch_transform`"),
        ({"device_decode": True}, r"`device_decode=True` cannot go with `views`"),
        ({"views_format": "tuple"}, r"`views_format` must be one of"),
        ({"policy": "randaugment"}, r"`policy` and `views` both describe"),
        ({"hflip": False}, r"`hflip` and `views` both describe"),
    ],
)
def test_options_that_cannot_go_with_views(kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FusionDataModule(source(), views=[(global_view(), 2)], num_workers=0, **kwargs)
