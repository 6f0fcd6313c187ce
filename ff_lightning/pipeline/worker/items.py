"""The items users' datasets return, read into ``(image, int target)``.

Accepted items:

- a pair (tuple or list) ``(image, target)``;
- a dict with an image key and a label key (Hugging Face ``datasets`` rows): by default the
  first of :data:`IMAGE_KEYS` and of :data:`LABEL_KEYS` the dict has; ``image_key`` /
  ``label_key`` name others.

Accepted images: PIL images of any mode (16-bit and float images scaled to 8 bits as the
ImageFolder source does: 16-bit from 0..65535, float from 0..1; transparency composited over
black), uint8 tensors ``[C, H, W]`` or ``[H, W]``, uint8 tensors ``[H, W, C]`` where that is
unambiguous (the last axis is 1, 3 or 4 and the first is not), and NumPy uint8 arrays ``[H, W]``
or ``[H, W, C]`` (what OpenCV and albumentations hand out). Targets: an int, a bool-free integer
type, an integer-valued float, or a tensor/NumPy array of any shape that holds one integer.

Every problem is a :class:`~ff_lightning.errors.ConfigError` naming the item and what was
expected; the pipeline checks item 0 when it is built, in the main process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ff_lightning.errors import ConfigError
from ff_lightning.sources.decoding import to_gray, to_rgb

__all__ = [
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "channels_of",
    "channels_of_sample",
    "class_index",
    "load_sample",
    "read_item",
    "to_uint8_chw",
]

#: Image keys tried in order for dict items (Hugging Face's common names first).
IMAGE_KEYS = ("image", "img", "pixel_values", "jpg", "png", "webp", "picture")
#: Label keys tried in order for dict items.
LABEL_KEYS = ("label", "labels", "target", "targets", "class", "fine_label", "cls", "y")


def _pick(item: Mapping[str, Any], given: str | None, keys: Sequence[str], what: str, index: int):
    if given is not None:
        if given not in item:
            raise ConfigError(
                f"dataset item {index} has no `{what}_key` {given!r}; its keys are "
                f"{sorted(map(str, item))}"
            )
        return item[given]
    for key in keys:
        if key in item:
            return item[key]
    raise ConfigError(
        f"dataset item {index} is a dict without {'an' if what == 'image' else 'a'} {what} key: it has {sorted(map(str, item))}, "
        f"the defaults are {list(keys)}; pass `{what}_key=` to name it"
    )


def read_item(
    item: Any, index: int, *, image_key: str | None = None, label_key: str | None = None
) -> tuple[Any, Any]:
    """``(image, target)`` of a dataset item (a pair or a dict); not yet converted."""
    if isinstance(item, Mapping):
        return (
            _pick(item, image_key, IMAGE_KEYS, "image", index),
            _pick(item, label_key, LABEL_KEYS, "label", index),
        )
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise ConfigError(
        f"dataset item {index} must be a pair (image, int target) or a dict with an image and a "
        f"label key, got {type(item).__name__}"
    )


def _hwc_to_chw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(2, 0, 1)


def _as_tensor(image: Any, index: int) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ConfigError(
                f"dataset item {index}: image arrays must be uint8 (values 0-255), got "
                f"{image.dtype}; convert with `np.clip(x * 255, 0, 255).astype(np.uint8)`"
            )
        if image.ndim == 3:  # NumPy images are height x width x channels
            return _hwc_to_chw(torch.from_numpy(np.ascontiguousarray(image)))
        return torch.from_numpy(np.ascontiguousarray(image))
    t = image
    if t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
        return _hwc_to_chw(t)  # [H, W, C]: unambiguous
    return t


def to_uint8_chw(image: object, channels: int = 3, index: int = 0) -> torch.Tensor | Image.Image:
    """An item's image as a PIL image (``L`` or ``RGB``) or a uint8 ``[C, H, W]`` tensor with
    ``channels`` channels (1: grayscale, 3: RGB), converted when it has another count."""
    if isinstance(image, Image.Image):
        if channels == 3:
            return to_rgb(image)
        return to_gray(image)
    if isinstance(image, (torch.Tensor, np.ndarray)):
        t = _as_tensor(image, index)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise ConfigError(
                f"dataset item {index}: images must be PIL images, uint8 tensors [C, H, W] or "
                f"uint8 arrays [H, W, C], got shape {tuple(t.shape)}"
            )
        if t.dtype != torch.uint8:
            raise ConfigError(
                f"dataset item {index}: image tensors must have dtype torch.uint8 (values "
                f"0-255), got {t.dtype}; convert with "
                "`(x * 255).round().clamp(0, 255).to(torch.uint8)`"
            )
        if t.shape[0] == 4:
            t = t[:3]
        elif t.shape[0] not in (1, 3):
            raise ConfigError(
                f"dataset item {index}: image tensors must have 1, 3 or 4 channels first "
                f"([C, H, W]), got shape {tuple(t.shape)}"
            )
        if t.shape[0] == channels:
            return t
        if channels == 3:
            return t.expand(3, -1, -1)
        return TF.rgb_to_grayscale(t)  # torchvision's luma weights, as PIL's "L" conversion
    raise ConfigError(
        f"dataset item {index}: the image must be a PIL image, a uint8 tensor [C, H, W] or a "
        f"uint8 NumPy array [H, W, C], got {type(image).__name__}"
    )


def class_index(index: int, target: Any) -> int:
    """``target`` as an int class index, or a ConfigError naming the item and the target."""
    value = target
    if isinstance(value, (torch.Tensor, np.ndarray)):
        size = value.numel() if isinstance(value, torch.Tensor) else value.size
        if size != 1:
            kind = "tensor" if isinstance(value, torch.Tensor) else "array"
            raise ConfigError(
                f"dataset item {index} has a target {kind} of shape {tuple(value.shape)}; "
                "targets must be one integer class index (0, 1, ...) per item"
            )
        value = value.item() if isinstance(value, torch.Tensor) else value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"dataset item {index} has target {target!r} ({type(target).__name__}); targets "
            "must be integer class indices (0, 1, ...): map labels to indices first, e.g. "
            "`{name: i for i, name in enumerate(sorted(names))}`"
        )
    return value


def channels_of(image: object) -> int:
    """1 for a one-channel image (``L``/``I``/``1``/``LA``/``F`` PIL modes, ``[1, H, W]`` or
    ``[H, W]`` tensors and arrays), else 3."""
    if isinstance(image, Image.Image):
        return 1 if image.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F") else 3
    if isinstance(image, np.ndarray):
        return 1 if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1) else 3
    if isinstance(image, torch.Tensor):
        if image.ndim == 2:
            return 1
        if image.ndim == 3:
            t = _as_tensor(image, 0)
            return 1 if t.shape[0] == 1 else 3
    return 3


def channels_of_sample(
    dataset: Any,
    *,
    samples: int = 8,
    image_key: str | None = None,
    label_key: str | None = None,
) -> tuple[int, str]:
    """The channel count the model should receive, and why in words: 1 when every one of up to
    ``samples`` images spread over the dataset is single-channel, else 3 (a grayscale image in a
    colour dataset, as ImageNet has, is converted; one item decides nothing)."""
    n = len(dataset)
    picks = sorted({(k * n) // samples for k in range(min(samples, n))})
    seen = []
    for i in picks:
        try:
            image, _ = read_item(dataset[i], i, image_key=image_key, label_key=label_key)
        except Exception:  # a broken item is reported with its index when it is loaded
            continue
        seen.append(channels_of(image))
    if seen and all(c == 1 for c in seen):
        return 1, f"channels=1: the {len(seen)} sampled images are all single-channel"
    gray = sum(c == 1 for c in seen)
    note = f" ({gray} of {len(seen)} sampled are single-channel and are converted)" if gray else ""
    return 3, f"channels=3{note}"


def load_sample(
    source: Any,
    index: int,
    channels: int,
    *,
    image_key: str | None = None,
    label_key: str | None = None,
) -> tuple[Any, int]:
    """Item ``index`` of ``source`` as the workers take it: its image with ``channels``
    channels (a PIL image stays PIL, the rest uint8 ``[C, H, W]``) and its class index."""
    image, target = read_item(source[index], index, image_key=image_key, label_key=label_key)
    return to_uint8_chw(image, channels, index), class_index(index, target)
