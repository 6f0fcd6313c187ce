"""Routed transforms from torchvision's own transform objects.

:func:`from_torchvision` takes an instance of a recognised torchvision v2 class (or of the v1
``torchvision.transforms`` class of the same name) and returns the routed transform with the
same arguments, or ``None`` for a class, or a setting, that is not routed;
:func:`unsupported_reason` then says why, in one line a warning can carry. Arguments out of
range (which torchvision accepts at construction and rejects at call time, e.g. a Solarize
threshold of 300) raise :class:`~ff_lightning.errors.ConfigError` naming the transform and the
argument.

Settings that are valid but not routed (``None``): ``RandomRotation(expand=True)`` (the size
changes per sample), interpolations other than nearest and bilinear (torchvision's tensor
warps have no other), a wrapper with a member that is not routed.

Value units: the routed kernels work on uint8 images. ``value_scale`` is the factor that turns
the user's pixel values into uint8 levels where a transform takes a value (Solarize's
threshold, the fill of affine warps): 1 when the transform sees uint8 images (the usual
place, before ``ToDtype``), 255 when it sees float images in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import transforms as v1
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ff_lightning.augment.transforms import blur, composite, geometric, jitter, pointwise
from ff_lightning.augment.transforms.base import RoutedTransform
from ff_lightning.errors import ConfigError

__all__ = [
    "LIGHTLY_RECOGNISED",
    "RECOGNISED",
    "from_lightly",
    "from_torchvision",
    "unsupported_reason",
]

_PIL_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming", 1: "lanczos"}


def _interp(value: object) -> str:
    if isinstance(value, InterpolationMode):
        return value.value
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return _PIL_MODES.get(value, repr(value))
    return str(getattr(value, "value", value))


def _fill(t: Any, scale: float) -> Any:
    """The fill a tensor image gets: v2 keeps a per-type table (``_fill``); images first."""
    fill = t.fill
    table = getattr(t, "_fill", None)
    if isinstance(table, dict):
        for key in (tv_tensors.Image, torch.Tensor, "others"):
            if key in table:
                fill = table[key]
                break
    if fill is None or scale == 1.0:
        return fill
    if isinstance(fill, (int, float)):
        return fill * scale
    return [v * scale for v in fill]


def _members(t: Any, scale: float) -> list[RoutedTransform] | None:
    members = [from_torchvision(m, value_scale=scale) for m in t.transforms]
    return None if any(m is None for m in members) else members


def _compose(t: Any, scale: float) -> RoutedTransform | None:
    members = _members(t, scale)
    return None if members is None else composite.Chain(members)


def _random_apply(t: Any, scale: float) -> RoutedTransform | None:
    members = _members(t, scale)
    return None if members is None else composite.RandomApply(members, p=t.p)


def _random_choice(t: Any, scale: float) -> RoutedTransform | None:
    members = _members(t, scale)
    return None if members is None else composite.RandomChoice(members, p=t.p)


def _random_order(t: Any, scale: float) -> RoutedTransform | None:
    members = _members(t, scale)
    return None if members is None else composite.RandomOrder(members)


def _affine(t: Any, scale: float) -> RoutedTransform | None:
    if _interp(t.interpolation) not in ("nearest", "bilinear"):
        return None
    return geometric.RandomAffine(
        t.degrees,
        translate=t.translate,
        scale=t.scale,
        shear=t.shear,
        interpolation=_interp(t.interpolation),
        fill=_fill(t, scale),
        center=t.center,
    )


def _rotation(t: Any, scale: float) -> RoutedTransform | None:
    if t.expand or _interp(t.interpolation) not in ("nearest", "bilinear"):
        return None
    return geometric.RandomRotation(
        t.degrees,
        interpolation=_interp(t.interpolation),
        center=t.center,
        fill=_fill(t, scale),
    )


Builder = Callable[[Any, float], "RoutedTransform | None"]

_BUILDERS: dict[str, Builder] = {
    "ColorJitter": lambda t, s: jitter.ColorJitter(t.brightness, t.contrast, t.saturation, t.hue),
    "RandomGrayscale": lambda t, s: pointwise.RandomGrayscale(t.p),
    "GaussianBlur": lambda t, s: blur.GaussianBlur(t.kernel_size, t.sigma),
    "RandomSolarize": lambda t, s: pointwise.RandomSolarize(t.threshold * s, t.p),
    "RandomPosterize": lambda t, s: pointwise.RandomPosterize(t.bits, t.p),
    "RandomEqualize": lambda t, s: pointwise.RandomEqualize(t.p),
    "RandomAutocontrast": lambda t, s: pointwise.RandomAutocontrast(t.p),
    "RandomInvert": lambda t, s: pointwise.RandomInvert(t.p),
    "RandomAdjustSharpness": lambda t, s: pointwise.RandomAdjustSharpness(t.sharpness_factor, t.p),
    "RandomAffine": _affine,
    "RandomRotation": _rotation,
    "RandomHorizontalFlip": lambda t, s: geometric.RandomHorizontalFlip(t.p),
    "RandomVerticalFlip": lambda t, s: geometric.RandomVerticalFlip(t.p),
    "RandomApply": _random_apply,
    "RandomChoice": _random_choice,
    "RandomOrder": _random_order,
    "Compose": _compose,
}

#: The torchvision classes :func:`from_torchvision` recognises (v2 and v1 alike).
RECOGNISED: tuple[str, ...] = tuple(_BUILDERS)


def _class_name(t: object) -> str | None:
    """The recognised class name of ``t``: its own class from torchvision v2 or v1 (not a
    subclass, whose behaviour may differ)."""
    cls = type(t)
    name = cls.__name__
    if name in _BUILDERS and cls in (getattr(v2, name, None), getattr(v1, name, None)):
        return name
    return None


def from_torchvision(transform: object, *, value_scale: float = 1.0) -> RoutedTransform | None:
    """The routed transform for torchvision transform ``transform``, or ``None`` (see
    :func:`unsupported_reason`).

    Raises:
        ConfigError: an argument out of the range the routed kernels (and torchvision's uint8
            kernels) accept, naming the transform and the argument.
    """
    name = _class_name(transform)
    if name is None:
        return None
    try:
        return _BUILDERS[name](transform, float(value_scale))
    except ConfigError as exc:
        msg = str(exc)
        prefix = f"{name}: "
        raise ConfigError(msg if msg.startswith(prefix) else prefix + msg) from None


def unsupported_reason(transform: object, *, value_scale: float = 1.0) -> str | None:
    """Why :func:`from_torchvision` gives ``None`` for ``transform`` (``None`` when it
    converts)."""
    name = _class_name(transform)
    label = type(transform).__name__
    if name is None:
        return f"`{label}` is not a recognised torchvision transform"
    if name == "RandomRotation" and transform.expand:  # type: ignore[attr-defined]
        return "`RandomRotation` with expand=True changes the image size per sample"
    if name in ("RandomAffine", "RandomRotation"):
        mode = _interp(transform.interpolation)  # type: ignore[attr-defined]
        if mode not in ("nearest", "bilinear"):
            return f"`{name}` with interpolation {mode!r}: only nearest and bilinear are routed"
    if name in ("Compose", "RandomApply", "RandomChoice", "RandomOrder"):
        for i, member in enumerate(transform.transforms):  # type: ignore[attr-defined]
            why = unsupported_reason(member, value_scale=value_scale)
            if why is not None:
                return f"`{name}` member {i}: {why}"
    return None


# ==================================================================== lightly's own ops
def _lightly_rotate(t: Any) -> RoutedTransform:
    # lightly's RandomRotate: F.rotate(image, angle) (nearest, expand=False, fill 0) with
    # probability prob; a quarter turn of a square image is exact on both routes.
    angle = float(t.angle)
    turn = geometric.RandomRotation((angle, angle), interpolation="nearest")
    return composite.RandomApply([turn], p=t.prob)


_LIGHTLY_BUILDERS: dict[str, Callable[[Any], RoutedTransform]] = {
    "GaussianBlur": lambda t: blur.PillowGaussianBlur(t.sigmas, p=t.prob),
    "RandomSolarization": lambda t: pointwise.RandomSolarize(t.threshold, p=t.prob),
    "RandomRotate": _lightly_rotate,
}

#: lightly's own per-sample ops :func:`from_lightly` recognises (its view transforms,
#: ``ToTensor`` and ``RandomRotateDegrees`` are opened by the compiler: their parts are
#: torchvision's).
LIGHTLY_RECOGNISED: tuple[str, ...] = tuple(_LIGHTLY_BUILDERS)


def from_lightly(transform: object) -> RoutedTransform | None:
    """The routed transform for one of lightly's own ops (``lightly.transforms``'
    ``GaussianBlur``: Pillow's blur, a sigma per sample; ``RandomSolarization``: Pillow's
    solarize; ``RandomRotate``: a fixed-angle turn), drawn with lightly's laws; ``None`` for
    anything else. lightly is never imported: the class is recognised by name and module.

    Raises:
        ConfigError: an argument the kernels cannot take, naming the transform.
    """
    cls = type(transform)
    name = cls.__name__
    if name not in _LIGHTLY_BUILDERS or not cls.__module__.startswith("lightly.transforms"):
        return None
    try:
        return _LIGHTLY_BUILDERS[name](transform)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(
            msg if msg.startswith(f"{name}") else f"lightly's {name}: {msg}"
        ) from None
