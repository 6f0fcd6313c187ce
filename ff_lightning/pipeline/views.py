"""Multi-view training: the user's description of the views, read into view groups.

A **view group** is one transform applied ``count`` times to every sample, each time with its
own random draws (DINO's two global views and eight local ones are two or three groups).
:func:`parse_views` reads what a user passes as ``views=``:

- ``[(transform, count), ...]``, optionally named: ``[(name, transform, count), ...]``; a
  ``transform`` is anything ``transform=`` accepts (a torchvision v2 ``Compose`` or list, timm's
  ``create_transform(...)`` output);
- a list of ``Compose`` objects, one view each (the same object repeated in a row makes one
  group);
- a multi-view object whose parts are recognised: one with a ``.transforms`` list of view
  transforms (lightly's ``MultiViewTransform``, ``DINOTransform``, ...), or DINOv2's
  ``DataAugmentationDINO`` (its ``geometric_augmentation_global`` + ``global_transfo1`` /
  ``global_transfo2``, then ``local_crops_number`` times ``geometric_augmentation_local`` +
  ``local_transfo``).

**The key of a view.** Views are numbered across the groups in order (``0 .. V-1``); view ``v``
of every sample draws all its randomness (crop, flip, routed parameters, the user's own
worker-side transforms) from ``(view_seed(seed, v), epoch, index)``, so the views of a sample
are independent, and view ``v`` is exactly what the single-view pipeline built with the group's
transform and ``seed=view_seed(seed, v)`` gives for that sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ff_lightning.augment import rng
from ff_lightning.errors import ConfigError

__all__ = [
    "DINOV2_PARTS",
    "VIEWS_FORMATS",
    "ViewSet",
    "ViewSpec",
    "check_object_output",
    "parse_views",
    "view_seed",
]

VIEWS_FORMATS = ("list", "dict")
#: The attributes by which DINOv2's ``DataAugmentationDINO`` is recognised.
DINOV2_PARTS = (
    "geometric_augmentation_global",
    "global_transfo1",
    "global_transfo2",
    "geometric_augmentation_local",
    "local_transfo",
    "local_crops_number",
)
_FORMS = (
    "[(transform, count), ...] or [(name, transform, count), ...], a list of Compose (one view "
    "each), an object with a `.transforms` list of view transforms (lightly's "
    "MultiViewTransform, DINOTransform) or DINOv2's DataAugmentationDINO"
)


def view_seed(seed: int, view: int) -> int:
    """The seed view ``view`` (numbered across the groups) draws from."""
    return rng.derive_seed(seed, rng.STREAM_VIEW, view)


@dataclass(frozen=True)
class ViewSpec:
    """One view group as given: ``name`` (``None``: named by size when compiled), the
    ``transform`` and how many views of it each sample gets."""

    name: str | None
    transform: Any
    count: int


@dataclass(frozen=True)
class ViewSet:
    """The parsed ``views``: the groups in order and, for a multi-view object, the object
    itself (its output on the first item is checked against the groups)."""

    groups: tuple[ViewSpec, ...]
    source: Any = None

    @property
    def total(self) -> int:
        """Views per sample, all groups together."""
        return sum(g.count for g in self.groups)

    def label(self, g: int) -> str:
        """How messages name group ``g``."""
        name = self.groups[g].name
        return f"view group {g}" + (f" ({name!r})" if name else "")


def _is_compose(t: object) -> bool:
    return type(t).__name__ == "Compose" and type(t).__module__.startswith(
        ("torchvision.transforms", "timm.data")
    )


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"`views` {where}: `count` must be an integer >= 1 (views of it per sample), got "
            f"{value!r}"
        )
    return value


def _transform(value: Any, where: str) -> Any:
    if value is None or not (callable(value) or isinstance(value, (list, tuple))):
        raise ConfigError(
            f"`views` {where}: the transform must be a torchvision v2 Compose, a list of "
            f"transforms or timm's create_transform(...), got {type(value).__name__}: {value!r}"
        )
    return value


def _runs(transforms: Sequence[Any], name: str | None = None) -> list[ViewSpec]:
    """One group per run of the same object repeated in a row."""
    groups: list[ViewSpec] = []
    for t in transforms:
        if groups and groups[-1].transform is t:
            last = groups[-1]
            groups[-1] = ViewSpec(last.name, t, last.count + 1)
        else:
            groups.append(ViewSpec(name, t, 1))
    return groups


def _from_pairs(items: Sequence[Any]) -> list[ViewSpec]:
    groups = []
    for g, item in enumerate(items):
        where = f"group {g}"
        if len(item) == 3:
            name, transform, count = item
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    f"`views` {where}: the name of a (name, transform, count) group must be a "
                    f"non-empty string, got {name!r}"
                )
            where += f" ({name!r})"
        elif len(item) == 2:
            name, (transform, count) = None, item
        else:
            raise ConfigError(
                f"`views` {where}: a group is (transform, count) or (name, transform, count), "
                f"got {len(item)} items: {item!r}"
            )
        groups.append(ViewSpec(name, _transform(transform, where), _count(count, where)))
    return groups


def _is_pair(item: Any) -> bool:
    """A ``(transform, count)`` or ``(name, transform, count)`` group: its last item is a
    count (anything but a transform), not a member of a list of transforms."""
    return (
        isinstance(item, (tuple, list))
        and len(item) in (2, 3)
        and not callable(item[-1])
        and not isinstance(item[-1], (list, tuple))
    )


def _from_dinov2(obj: Any) -> list[ViewSpec]:
    n = _count(obj.local_crops_number, "DataAugmentationDINO.local_crops_number")
    glob = obj.geometric_augmentation_global
    return [
        ViewSpec("global_crops", [glob, obj.global_transfo1], 1),
        ViewSpec("global_crops", [glob, obj.global_transfo2], 1),
        ViewSpec("local_crops", [obj.geometric_augmentation_local, obj.local_transfo], n),
    ]


def parse_views(views: Any) -> ViewSet:
    """``views`` (any form in the module docstring) as a :class:`ViewSet`; a form or a group
    this package cannot read is a :class:`ConfigError` naming it."""
    if isinstance(views, ViewSet):
        return views
    if isinstance(views, (list, tuple)) and not _is_pair(views):
        items = list(views)
        if not items:
            raise ConfigError(f"`views` is empty; give at least one view group: {_FORMS}")
        if all(_is_pair(i) for i in items):
            return ViewSet(tuple(_from_pairs([tuple(i) for i in items])))
        for g, item in enumerate(items):
            if not _is_compose(item):
                raise ConfigError(
                    f"`views` item {g} ({type(item).__name__}) is neither a (transform, count) "
                    f"group nor a Compose (one view); give {_FORMS}"
                )
        return ViewSet(tuple(_runs(items)))
    if _is_pair(views):
        raise ConfigError(
            f"`views` got one group ({', '.join(type(v).__name__ for v in views)}), not a list "
            "of groups; wrap it in a list: views=[(transform, count)]"
        )
    if all(hasattr(views, a) for a in DINOV2_PARTS):
        return ViewSet(tuple(_from_dinov2(views)), source=views)
    parts = getattr(views, "transforms", None)
    if callable(views) and not _is_compose(views) and isinstance(parts, (list, tuple)) and parts:
        for v, t in enumerate(parts):
            _transform(t, f"{type(views).__name__}.transforms[{v}]")
        return ViewSet(tuple(_runs(list(parts))), source=views)
    raise ConfigError(
        f"`views` got {type(views).__name__}, which is not a multi-view transform this package "
        f"can open; give {_FORMS}"
    )


def _is_image(x: Any) -> bool:
    return isinstance(x, Image.Image) or (isinstance(x, torch.Tensor) and x.ndim == 3)


def check_object_output(views: ViewSet, image: Any, run: Any) -> None:
    """Call the user's multi-view object once on ``image`` (through ``run``, which seeds it)
    and check that it gives a list (or a dict of lists) of ``views.total`` images; a
    :class:`ConfigError` names the view that is not an image."""
    obj = views.source
    if obj is None:
        return
    name = type(obj).__name__
    out = run(obj, image)
    if isinstance(out, Mapping):
        keys = [k for k in ("global_crops", "local_crops") if k in out]
        if not keys:
            raise ConfigError(
                f"`views`: {name} gave a dict without `global_crops` or `local_crops` (keys "
                f"{sorted(map(str, out))}); a multi-view object must give a list of images or "
                "DINOv2's dict of crops"
            )
        out = [x for k in keys for x in (out[k] if isinstance(out[k], (list, tuple)) else [None])]
    if not isinstance(out, (list, tuple)):
        raise ConfigError(
            f"`views`: {name} gave {type(out).__name__}, not a list (or dict) of images; a "
            "multi-view object must give one image per view"
        )
    for v, x in enumerate(out):
        if not _is_image(x):
            raise ConfigError(
                f"`views`: view {v} of {name}'s output is {type(x).__name__}, not an image (a PIL "
                "image or a [C, H, W] tensor)"
            )
    if len(out) != views.total:
        parts = ", ".join(f"{g.count} x {g.name or 'view'}" for g in views.groups)
        raise ConfigError(
            f"`views`: {name} gave {len(out)} views, but its parts make {views.total} ({parts})"
        )
