"""The recipes' multi-view data: ``data.views`` in a config, read into ``FusionDataModule``'s
``views=``.

``data.views`` is a list with one entry per view group, in order::

    data:
      views_format: list       # list | dict (DINOv2's global_crops / local_crops)
      views:
        - name: global_crops   # optional; keys the group in the dict form
          count: 2             # views of it per sample
          transform:           # a torchvision v2 Compose (or list), built with _target_
            _target_: torchvision.transforms.v2.Compose
            transforms: [...]

The keyword options the views decide (``augment.name``, ``augment.hflip``, ``data.crop_scale``,
``augment.mean``/``std``, erasing and mixing) are not passed: each view's transform holds them.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ff_lightning.errors import ConfigError

__all__ = ["VIEW_KEYS", "views_from_config"]

#: The keys of one ``data.views`` entry.
VIEW_KEYS = ("name", "count", "transform")


def views_from_config(node: Any) -> list[tuple[Any, ...]]:
    """``data.views`` as ``[(name, transform, count), ...]`` (``(transform, count)`` when an
    entry has no name); a malformed entry is a :class:`ConfigError` naming its key."""
    if not isinstance(node, (ListConfig, list)) or not node:
        raise ConfigError(
            "`data.views` must be a non-empty list of view groups, each with `transform` and "
            f"`count` (and optionally `name`), got {node!r}"
        )
    out: list[tuple[Any, ...]] = []
    for i, entry in enumerate(node):
        key = f"data.views[{i}]"
        if not isinstance(entry, (DictConfig, dict)):
            raise ConfigError(
                f"`{key}` must be a mapping with `transform` and `count`, got {entry!r}"
            )
        unknown = sorted(set(entry) - set(VIEW_KEYS))
        if unknown or "transform" not in entry or "count" not in entry:
            raise ConfigError(
                f"`{key}` must have the keys `transform` and `count` (and optionally `name`), "
                f"got {sorted(map(str, entry))}"
            )
        try:
            transform = instantiate(entry["transform"], _convert_="all")
        except Exception as err:  # noqa: BLE001 - Hydra wraps any constructor error
            cause = err.__cause__ or err
            raise ConfigError(f"`{key}.transform` could not be built: {cause}") from err
        count = entry["count"]
        name = entry.get("name")
        if isinstance(count, (DictConfig, ListConfig)):
            count = OmegaConf.to_container(count)
        out.append((name, transform, count) if name is not None else (transform, count))
    return out
