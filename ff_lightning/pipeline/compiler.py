"""The compiler: a user's own torchvision v2 / timm pipeline split into the pipeline's stages.

:func:`compile_transform` walks the transform once (a ``Compose``, a list, timm's
``create_transform(...)`` output, ``separate=True``'s three stages) and places every transform,
in order, in one of the stages of :mod:`ff_lightning.pipeline.stages`:

1. **worker geometry**: the crop at the head (``RandomResizedCrop``, timm's
   ``RandomResizedCropAndInterpolation``, ``Resize`` + ``CenterCrop``, (``Resize`` +)
   ``RandomCrop`` with padding, ``CenterCrop``, a square ``Resize``) and a horizontal flip after
   it, with their random choices drawn from ``(seed, epoch, index)``;
2. **the routed stage**: the per-sample transforms with batched kernels on both routes
   (:func:`~ff_lightning.augment.transforms.from_torchvision`: ColorJitter, GaussianBlur,
   RandomAffine, ... and the wrappers; torchvision's RandAugment, TrivialAugmentWide,
   AutoAugment, AugMix; timm's RandAugment, AutoAugment, AugMix), chained in their order;
3. **the device tail**: the tensor conversion (``ToImage``, ``ToDtype(scale=True)``,
   ``ToTensor``, ...), ``Normalize``, ``RandomErasing`` (torchvision's and timm's), and the
   batch transform (v2 ``MixUp``/``CutMix``/``RandomChoice`` of them, timm's ``Mixup``).

A transform that fits nowhere (unknown, or known but out of the place these stages allow, such
as a crop after a colour op) runs in the workers for every sample, as the user's own object,
together with every transform before it (they produce its input); the transforms after it are
compiled as above. Nothing is dropped or reordered; one warning names each such transform.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ff_lightning.errors import ConfigError

__all__ = ["Compiled", "compile_batch_transform", "compile_transform", "flatten"]

_TV = ("torchvision.transforms",)
_TIMM = ("timm.data",)
_LIGHTLY = ("lightly.transforms",)
_CONVERSIONS = (
    "ToImage",
    "PILToTensor",
    "ToTensor",
    "MaybeToTensor",
    "MaybePILToTensor",
    "ToPureTensor",
    "ToDtype",
    "ConvertImageDtype",
)
_INTERP = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _is(t: object, names: Sequence[str] | str, modules: Sequence[str] = _TV + _TIMM) -> bool:
    names = (names,) if isinstance(names, str) else tuple(names)
    return type(t).__name__ in names and type(t).__module__.startswith(tuple(modules))


def _lightly_wrapper(t: object) -> bool:
    """lightly's objects that only call the Compose (or transform) they hold as ``.transform``:
    its view transforms (``SimCLRViewTransform``, ``DINOViewTransform``, ``BYOLView1Transform``,
    ...), ``ToTensor`` (ToImage + ToDtype) and ``RandomRotateDegrees`` (a RandomApply of
    RandomRotation)."""
    cls = type(t)
    if not cls.__module__.startswith(_LIGHTLY) or not callable(getattr(t, "transform", None)):
        return False
    name = cls.__name__
    return (
        name in ("ToTensor", "RandomRotateDegrees")
        or re.search(r"View\d?Transform$", name) is not None
    )


def flatten(transform: Any) -> list[Any]:
    """The transforms in application order: ``Compose`` (v1, v2, timm's) and lists/tuples are
    opened (timm's ``separate=True`` gives a tuple of three ``Compose``), and so are lightly's
    wrappers of a Compose (its per-view transforms, its ``ToTensor``)."""
    if isinstance(transform, (list, tuple)):
        return [t for part in transform for t in flatten(part)]
    if _is(transform, "Compose"):
        return flatten(list(transform.transforms))
    if _lightly_wrapper(transform):
        return flatten(transform.transform)
    return [transform]


def _size(value: Any, what: str) -> int:
    if isinstance(value, int):
        return value
    seq = list(value) if isinstance(value, (list, tuple)) else None
    if seq and len(seq) in (1, 2) and all(isinstance(v, int) for v in seq):
        if len(seq) == 1 or seq[0] == seq[1]:
            return seq[0]
    raise ValueError(f"{what} is not square")


def _interp_name(value: Any) -> str | None:
    value = getattr(value, "value", value)
    if isinstance(value, int):
        value = _INTERP.get(value)
    return value if value in ("bilinear", "bicubic", "nearest") else None


# ==================================================================== geometry
def _geometry_head(items: list[Any]) -> tuple[dict[str, Any] | None, int]:
    """The recognised crop (+ flip) at the head: WorkerGeometry's fields and how many transforms
    it takes; ``(None, 0)`` when the head is not one of the recognised shapes."""
    g: dict[str, Any] = {}
    i = 0
    try:
        t = items[0] if items else None
        if _is(t, "RandomResizedCrop", _TV):
            interp = _interp_name(t.interpolation)
            if interp is None or getattr(t, "antialias", True) is False:
                return None, 0
            g = dict(crop="random_resized", size=_size(t.size, "size"), interpolation=interp)
            g.update(crop_scale=tuple(t.scale), crop_ratio=tuple(t.ratio))
            i = 1
        elif _is(t, "RandomResizedCropAndInterpolation", _TIMM):
            modes = t.interpolation if isinstance(t.interpolation, (list, tuple)) else None
            interp = "random" if modes else _interp_name(t.interpolation)
            if interp is None or (
                modes and {_interp_name(m) for m in modes} != {"bilinear", "bicubic"}
            ):
                return None, 0
            g = dict(crop="random_resized", size=_size(t.size, "size"), interpolation=interp)
            g.update(crop_scale=tuple(t.scale), crop_ratio=tuple(t.ratio))
            i = 1
        elif _is(t, "Resize", _TV):
            interp = _interp_name(t.interpolation)
            if interp is None or getattr(t, "max_size", None) is not None:
                return None, 0
            nxt = items[1] if len(items) > 1 else None
            if isinstance(t.size, int) or len(t.size) == 1:
                short = t.size if isinstance(t.size, int) else t.size[0]
                if _is(nxt, "CenterCrop", _TV):
                    g = dict(crop="resize_center", resize_to=short, size=_size(nxt.size, "crop"))
                elif _is(nxt, "RandomCrop", _TV) and not nxt.padding and not nxt.pad_if_needed:
                    g = dict(crop="random", resize_to=short, size=_size(nxt.size, "crop"))
                else:
                    return None, 0
                g["interpolation"], i = interp, 2
            else:
                g, i = dict(crop="resize", size=_size(t.size, "size"), interpolation=interp), 1
        elif _is(t, "CenterCrop", _TV):
            g, i = dict(crop="resize_center", resize_to=None, size=_size(t.size, "crop")), 1
        elif _is(t, "RandomCrop", _TV):
            if t.pad_if_needed or not isinstance(t.fill, (int, float)):
                return None, 0
            pad = t.padding
            if pad is not None:
                pad = [pad] * 4 if isinstance(pad, int) else list(pad)
                pad = pad * 2 if len(pad) == 2 else pad
                pad = tuple(int(v) for v in pad)
            g = dict(crop="random", size=_size(t.size, "crop"), padding=pad)
            g.update(pad_fill=float(t.fill), padding_mode=t.padding_mode)
            i = 1
        else:
            return None, 0
    except (ValueError, TypeError, AttributeError):
        return None, 0
    if i < len(items) and _is(items[i], "RandomHorizontalFlip", _TV):
        g["hflip"], i = float(items[i].p), i + 1
    else:
        g["hflip"] = 0.0
    return g, i


# ==================================================================== the routed stage
def _routed(t: Any, index: int) -> Any:
    """The routed form of ``t`` (a transform or policy with the policy protocol), or ``None``."""
    from ff_lightning.augment import build_policy
    from ff_lightning.augment.timm_convert import policy_from_timm
    from ff_lightning.augment.transforms import from_torchvision
    from ff_lightning.augment.transforms.convert import from_lightly

    try:
        if _is(t, ("RandAugment", "TrivialAugmentWide", "AutoAugment", "AugMix"), _TV):
            return _tv_policy(t, build_policy)
        found = policy_from_timm(t)
        if found is not None:
            return found
        return from_torchvision(t) or from_lightly(t)
    except ConfigError as err:
        raise ConfigError(f"transform {index} ({type(t).__name__}): {err}") from None


def _tv_policy(t: Any, build_policy: Any) -> Any:
    from ff_lightning.augment.transforms.convert import _fill

    interp = _interp_name(t.interpolation)
    if interp not in ("nearest", "bilinear"):
        return None
    kw: dict[str, Any] = dict(interpolation=interp, fill=_fill(t, 1.0))
    name = type(t).__name__
    if name == "RandAugment":
        kw.update(num_ops=t.num_ops, magnitude=t.magnitude, num_magnitude_bins=t.num_magnitude_bins)
        return build_policy("randaugment", **kw)
    if name == "TrivialAugmentWide":
        return build_policy("trivialaugment", num_magnitude_bins=t.num_magnitude_bins, **kw)
    if name == "AutoAugment":
        return build_policy("autoaugment", policy=t.policy, **kw)
    kw.update(severity=t.severity, mixture_width=t.mixture_width, chain_depth=t.chain_depth)
    return build_policy("augmix", alpha=t.alpha, all_ops=t.all_ops, **kw)


# ==================================================================== the device tail
def _conversion(t: Any) -> bool | None:
    """True for a recognised conversion to float ``[0, 1]`` (or to a uint8 tensor); ``None``
    for one these stages cannot follow (``ToDtype`` without scaling, say)."""
    if not _is(t, _CONVERSIONS):
        return False
    if type(t).__name__ == "ToDtype":
        dtype = t.dtype if not isinstance(t.dtype, dict) else next(iter(t.dtype.values()), None)
        return (
            True
            if (getattr(dtype, "is_floating_point", False) and t.scale) or dtype is None
            else None
        )
    return True


def _erasing(t: Any, converted: bool) -> Any:
    """The device's RandomErasing for ``t`` (torchvision's or timm's), ``False`` when ``t`` is
    none, ``None`` when its settings have no device kernel. It runs after the normalisation
    (the tail's order; the parser keeps one placed before a Normalize in the workers), so its
    value is taken as given there; before the tensor conversion a value is in uint8 levels."""
    from ff_lightning.augment.batch_ops import RandomErasing

    if _is(t, "RandomErasing", _TIMM):
        if t.max_count > 1 or getattr(t, "num_splits", 0) or getattr(t, "rand_color", False):
            return None
        lo, hi = (math.exp(v) for v in t.log_aspect_ratio)
        value: Any = "random" if t.per_pixel else 0.0
        return RandomErasing(
            p=t.probability, scale=(t.min_area, t.max_area), ratio=(lo, hi), value=value
        )
    if not _is(t, "RandomErasing", _TV):
        return False
    # v2 keeps value="random" as None; torchvision's v1 keeps the string.
    value = "random" if t.value is None else t.value
    if not converted and not isinstance(value, str):
        # On uint8 images: the value is in levels; the device erases the [0, 1] floats.
        value = value / 255.0 if isinstance(value, (int, float)) else [v / 255.0 for v in value]
    return RandomErasing(p=t.p, scale=tuple(t.scale), ratio=tuple(t.ratio), value=value)


@dataclass
class _Tail:
    converted: bool = False
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    erasing: Any = None
    erase_before_norm: Any = None


def _parse_rest(items: list[Any], start: int, floats: bool) -> tuple[list[Any], _Tail] | None:
    """``items[start:]`` as routed transforms then the tail; ``None`` when they do not fit.
    ``floats``: the worker hands over floats already (nothing can be routed)."""
    routed, i, n = [], start, len(items)
    if not floats:
        while i < n:
            r = _routed(items[i], i)
            if r is None:
                break
            routed.append(r)
            i += 1
    tail = _Tail(converted=floats)
    while i < n:
        t = items[i]
        conv = _conversion(t)
        if conv is None:
            return None
        if conv:
            tail.converted = True
        elif _is(t, "Normalize", _TV) and tail.norm is None and not t.inplace:
            mean = tuple(float(v) for v in t.mean)
            std = tuple(float(v) for v in t.std)
            tail.norm = (mean, std)
            if tail.erasing is not None:  # erasing came first: its value is in the raw space
                return None
        elif tail.erasing is None:
            er = _erasing(t, tail.converted)
            if not er:
                return None
            tail.erasing = er
        else:
            return None
        i += 1
    return routed, tail


@dataclass
class Compiled:
    """A compiled pipeline: its stages (in order), the settings they imply, and the warnings.

    ``geometry``: WorkerGeometry's fields (``None``: the images keep their size); ``prefix``:
    the user's transforms the workers run as written (an unknown one and all before it);
    ``routed``: the routed transforms in order; ``mean``/``std``: the normalisation (``None``:
    floats in ``[0, 1]``); ``erasing``; ``floats``: the workers hand over floats.
    """

    geometry: dict[str, Any] | None
    prefix: list[Any] = field(default_factory=list)
    routed: list[Any] = field(default_factory=list)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    erasing: Any = None
    floats: bool = False
    notes: list[str] = field(default_factory=list)

    def routed_stage(self) -> Any:
        """One policy-protocol object for the routed transforms (a lone policy as it is)."""
        from ff_lightning.augment import build_policy
        from ff_lightning.augment.transforms import Chain

        if not self.routed:
            return build_policy("none")
        from ff_lightning.augment.transforms.composite import _is_policy

        if len(self.routed) == 1 and _is_policy(self.routed[0]):
            return self.routed[0]  # a lone policy draws exactly as in the keyword form
        return Chain(self.routed)


def compile_transform(transform: Any, *, name: str = "transform") -> Compiled:
    """Split ``transform`` into stages (see the module docstring); warns once per transform that
    stays in the workers. Bad input is a :class:`ConfigError` naming the position."""
    items = flatten(transform)
    for i, t in enumerate(items):
        if not callable(t):
            raise ConfigError(
                f"`{name}` item {i} ({type(t).__name__}: {t!r}) is not a transform; pass a "
                "torchvision v2 Compose, a list of transforms, or timm's create_transform(...)"
            )
    geometry, start = _geometry_head(items)
    parsed = _parse_rest(items, start, floats=False)
    split = None
    if parsed is None:
        # The smallest prefix the workers must run as written for the rest to compile.
        for p in range(start + 1, len(items) + 1):
            floats = any(_conversion(t) or _is(t, "Normalize", _TV) for t in items[:p])
            if floats and p < len(items):
                continue  # past the conversion the workers run it all (the device casts)
            parsed = _parse_rest(items, p, floats)
            if parsed is not None:
                split = p
                break
    assert parsed is not None  # the whole list in the workers always parses
    routed, tail = parsed
    out = Compiled(geometry=geometry)
    if split is not None:
        out.geometry = None
        out.prefix = items[:split]
        out.floats = any(_conversion(t) or _is(t, "Normalize", _TV) for t in out.prefix)
        kept = [j for j in range(split) if not _known_anywhere(items[j], j)]
        last = kept[-1] if kept else split - 1
        names = f"`{type(items[last]).__name__}` at position {last}"
        moved = len(items) - split
        msg = (
            f"{names} of `{name}` runs in the workers, as written, for every sample, with the "
            f"{last} transform(s) before it (they produce its input); the {moved} after it are "
            "compiled (routed per sample or run on the device)"
        )
        out.notes.append(msg)
        warnings.warn(f"ff_lightning: {msg}", UserWarning, stacklevel=3)
    out.routed = routed
    if tail.norm is not None:
        out.mean, out.std = tail.norm
    out.erasing = tail.erasing
    return out


def _known_anywhere(t: Any, index: int) -> bool:
    try:
        return bool(
            _routed(t, index)
            or _conversion(t)
            or _is(t, ("Normalize", "RandomErasing", "RandomHorizontalFlip"))
            or _geometry_head([t])[0] is not None
        )
    except ConfigError:
        return False


# ==================================================================== batch transforms
def compile_batch_transform(transform: Any, num_classes: int | None) -> Any:
    """torchvision v2's ``MixUp``/``CutMix`` (or a ``RandomChoice`` of the two) or timm's
    ``Mixup`` as a :class:`~ff_lightning.augment.batch_ops.MixUpCutMix` (``None`` passes).

    Both mix each sample with another of the batch (torchvision rolls the batch by one, timm and
    this package flip it): the same distribution of pairs and weights.
    """
    from ff_lightning.augment.batch_ops import MixUpCutMix

    if transform is None:
        return None
    if _is(transform, "Mixup", _TIMM):
        t = transform
        if t.cutmix_minmax is not None or not t.correct_lam or t.mode not in MixUpCutMix.MODES:
            raise ConfigError(
                "`batch_transform`: timm's Mixup with cutmix_minmax, correct_lam=False or "
                f"mode={t.mode!r} has no device kernel here; use cutmix_minmax=None, "
                "correct_lam=True and mode 'batch' or 'elem'"
            )
        return MixUpCutMix(
            mixup_alpha=t.mixup_alpha,
            cutmix_alpha=t.cutmix_alpha,
            num_classes=t.num_classes,
            switch_prob=t.switch_prob,
            prob=t.mix_prob,
            label_smoothing=t.label_smoothing,
            mode=t.mode,
        )
    alphas = {"MixUp": 0.0, "CutMix": 0.0}
    switch = 0.5
    members = [transform]
    if _is(transform, "RandomChoice", _TV):
        members = list(transform.transforms)
        p = list(transform.p) if transform.p is not None else [1.0] * len(members)
        if len(members) == 2 and {type(m).__name__ for m in members} == {"MixUp", "CutMix"}:
            cut = p[[type(m).__name__ for m in members].index("CutMix")]
            switch = cut / sum(p)
    classes = set()
    for m in members:
        if not _is(m, ("MixUp", "CutMix"), _TV):
            raise ConfigError(
                f"`batch_transform` must be torchvision's MixUp, CutMix, a RandomChoice of them, "
                f"or timm's Mixup, got {type(m).__name__}"
            )
        alphas[type(m).__name__] = float(m.alpha)
        classes.add(m.num_classes)
    n = classes.pop() if len(classes) == 1 else num_classes
    if not n:
        raise ConfigError("`batch_transform` needs `num_classes`")
    return MixUpCutMix(
        mixup_alpha=alphas["MixUp"],
        cutmix_alpha=alphas["CutMix"],
        num_classes=int(n),
        switch_prob=switch,
    )
