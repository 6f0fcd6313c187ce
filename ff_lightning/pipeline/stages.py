"""The stages a pipeline is assembled from, in the order a sample meets them.

1. :class:`WorkerGeometry` (every sample, in the DataLoader workers): decode, the random
   resized crop and flip of training, the resize and centre crop of evaluation, to a fixed size
   and channel count; and, when a user's pipeline has a transform the compiler does not know,
   :class:`WorkerTransforms` (the user's own objects, run per sample).
2. :class:`RoutedStage` (per sample, on either route): the policy whose parameters are drawn
   from ``(seed, epoch, index)`` before the route is known; the workers apply it to their share
   of each batch, the device to the rest, with the same batched kernels.
3. :class:`DeviceTail` (every sample, on the device, after the copy): normalisation to the
   training dtype and the batch-level ops (random erasing, mixup/cutmix).

:func:`view_stages` builds one such list per view group of multi-view training
(:class:`ViewGroup`). :func:`keyword_stages` builds the list from :class:`~ff_lightning.pipeline.options.
PipelineOptions` (the keyword form of ``FusionDataModule``). Each stage says what it does with
:meth:`describe`, which :meth:`Pipeline.describe <ff_lightning.pipeline.Pipeline.describe>` prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ff_lightning.pipeline.options import PipelineOptions
from ff_lightning.pipeline.worker.steps import WorkerGeometry, WorkerTransforms

__all__ = [
    "DeviceTail",
    "RoutedStage",
    "Stage",
    "ViewGroup",
    "WorkerGeometry",
    "WorkerTransforms",
    "keyword_stages",
    "transform_stages",
    "view_stages",
]


@dataclass(frozen=True)
class RoutedStage:
    """The per-sample augmentation: ``policy`` has ``sample``, ``apply_batch``, ``apply_one``
    and ``estimate_cost`` (see :mod:`ff_lightning.augment`)."""

    policy: Any

    where = "workers or device"

    def describe(self) -> str:
        return repr(self.policy)


@dataclass(frozen=True)
class DeviceTail:
    """What the device does to every sample after the copy: normalise, then the batch ops.

    Attributes:
        mean, std: the normalisation (``normalize=False``: scale to ``[0, 1]`` only).
        normalize: apply ``mean``/``std``.
        random_erasing, mixup_alpha, cutmix_alpha, num_classes: the keyword form's batch ops.
        erasing: a :class:`~ff_lightning.augment.batch_ops.RandomErasing` (the compiled form;
            overrides ``random_erasing``).
        mix: a :class:`~ff_lightning.augment.batch_ops.MixUpCutMix` (overrides the alphas).
        floats: the workers already hand over normalised floats (the user's own transforms
            ran the conversion); the device only casts them to the training dtype.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool = True
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int | None = None
    erasing: Any = None
    mix: Any = None
    floats: bool = False

    where = "device"

    def batch_ops(self) -> list[tuple[str, Any]]:
        """The batch ops in the order they run: ``[("erase", op), ("mix", op)]`` as present."""
        from ff_lightning.augment import batch_ops

        ops: list[tuple[str, Any]] = []
        erase = self.erasing
        if erase is None and self.random_erasing > 0:
            erase = batch_ops.RandomErasing(p=self.random_erasing)
        if erase is not None:
            ops.append(("erase", erase))
        mix = self.mix
        if mix is None and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            mix = batch_ops.MixUpCutMix(
                mixup_alpha=self.mixup_alpha,
                cutmix_alpha=self.cutmix_alpha,
                num_classes=self.num_classes,
            )
        if mix is not None:
            ops.append(("mix", mix))
        return ops

    def describe(self) -> str:
        if self.floats:
            parts = ["cast the workers' floats to the training dtype"]
        elif self.normalize:
            mean = "(" + ", ".join(f"{v:.4g}" for v in self.mean) + ")"
            std = "(" + ", ".join(f"{v:.4g}" for v in self.std) + ")"
            parts = [f"normalise (mean {mean}, std {std}) to the training dtype"]
        else:
            parts = ["scale to [0, 1] in the training dtype"]
        parts += [repr(op) for _, op in self.batch_ops()]
        return ", ".join(parts)


Stage = WorkerGeometry | WorkerTransforms | RoutedStage | DeviceTail


def keyword_stages(options: PipelineOptions) -> tuple[WorkerGeometry, RoutedStage, DeviceTail]:
    """The stage list of the keyword form, from resolved options."""
    if not options.resolved:
        raise ValueError("keyword_stages needs resolved options (PipelineOptions.resolve)")
    return (
        WorkerGeometry(
            size=options.image_size,
            crop_scale=tuple(options.crop_scale),  # type: ignore[arg-type]
            crop_ratio=tuple(options.crop_ratio),  # type: ignore[arg-type]
            hflip=options.hflip,
            val_crop_fraction=options.val_crop_fraction,
            channels=int(options.channels),  # type: ignore[arg-type]
            device_decode=bool(options.device_decode),
        ),
        RoutedStage(options.policy),
        DeviceTail(
            mean=tuple(options.mean),  # type: ignore[arg-type]
            std=tuple(options.std),  # type: ignore[arg-type]
            normalize=options.normalize,
            random_erasing=options.random_erasing,
            mixup_alpha=options.mixup_alpha,
            cutmix_alpha=options.cutmix_alpha,
            num_classes=options.num_classes,
        ),
    )


def transform_stages(
    options: PipelineOptions, train_dataset: Any
) -> tuple[tuple[Stage, ...], WorkerTransforms | None, list[str]]:
    """The stage list of a user's ``transform`` (resolved options), the evaluation transforms
    the workers run as written (``None``: the resize and centre crop of the geometry), and the
    compiler's notes (transforms kept in the workers)."""
    from ff_lightning.errors import ConfigError
    from ff_lightning.pipeline.compiler import compile_batch_transform, compile_transform
    from ff_lightning.pipeline.worker.items import read_item, to_uint8_chw
    from ff_lightning.pipeline.worker.steps import run_user_transforms

    compiled = compile_transform(options.transform, name="transform")
    channels = int(options.channels)  # type: ignore[arg-type]
    prefix = None
    if compiled.prefix:
        prefix = WorkerTransforms(tuple(compiled.prefix), floats=compiled.floats)
    geo_fields = dict(compiled.geometry or {})
    if "size" not in geo_fields:
        # The images keep the size the user's worker-side transforms (or the data) give them:
        # item 0 says which.
        image, _ = read_item(
            train_dataset[0], 0, image_key=options.image_key, label_key=options.label_key
        )
        image = to_uint8_chw(image, channels, 0)
        if prefix is not None:
            image = run_user_transforms(
                prefix.transforms, image, seed=options.seed, epoch=0, index=0
            )
        shape = tuple(image.shape[-2:]) if hasattr(image, "shape") else (image.height, image.width)
        if shape[0] != shape[1]:
            raise ConfigError(
                f"`transform` gives images of {shape[1]}x{shape[0]}; the pipeline batches square "
                "images: end the worker-side part with a square crop or resize"
            )
        geo_fields.update(crop="none", size=int(shape[0]), hflip=0.0)
    size = int(geo_fields["size"])
    val_resize = {
        "resize_center": geo_fields.get("resize_to") or size,
        "random": geo_fields.get("resize_to") or size,
        "resize": size,
        "none": size,
    }.get(geo_fields["crop"])
    geometry = WorkerGeometry(
        channels=channels,
        device_decode=bool(options.device_decode)
        and geo_fields["crop"] == "random_resized"
        and geo_fields.get("interpolation", "bilinear") == "bilinear",
        val_crop_fraction=options.val_crop_fraction,
        val_resize_to=val_resize,
        val_interpolation=geo_fields.get("interpolation", "bilinear")
        if geo_fields.get("interpolation") != "random"
        else "bicubic",
        **geo_fields,
    )
    mix = compile_batch_transform(options.batch_transform, options.num_classes)
    tail = DeviceTail(
        mean=compiled.mean or (0.0,) * channels,
        std=compiled.std or (1.0,) * channels,
        normalize=compiled.mean is not None,
        num_classes=getattr(mix, "num_classes", options.num_classes),
        erasing=compiled.erasing,
        mix=mix,
        floats=compiled.floats,
    )
    stages: list[Stage] = [geometry]
    if prefix is not None:
        stages.append(prefix)
    stages += [RoutedStage(compiled.routed_stage()), tail]
    eval_prefix = None
    if options.val_transform is not None:
        eval_prefix, val_geo = _eval_transforms(options.val_transform, compiled, size)
        if val_geo is not None:  # the geometry's own resize + centre crop (the fast path)
            stages[0] = geometry = dataclasses.replace(geometry, **val_geo)
    return tuple(stages), eval_prefix, compiled.notes


def _eval_transforms(
    val_transform: Any, train: Any, size: int
) -> tuple[WorkerTransforms | None, dict[str, Any] | None]:
    """The evaluation transform: ``(None, geometry fields)`` when it is a resize and centre crop
    to the training size with the training normalisation (the fast path), else the user's own
    objects for the workers, up to the normalisation the device does (or all of them, handing
    over floats)."""
    from ff_lightning.pipeline.compiler import _conversion, _geometry_head, _is, flatten

    items = flatten(val_transform)
    # Trailing conversion + the training Normalize: the device's job.
    k = len(items)
    while k and (_conversion(items[k - 1]) is True or _is(items[k - 1], "Normalize")):
        t = items[k - 1]
        if _is(t, "Normalize") and (
            tuple(float(v) for v in t.mean) != tuple(train.mean or ())
            or tuple(float(v) for v in t.std) != tuple(train.std or ())
        ):
            return WorkerTransforms(tuple(items), floats=True), None
        k -= 1
    head, used = _geometry_head(items[:k])
    if head is not None and used == k and head["crop"] == "resize_center" and head["size"] == size:
        interp = head.get("interpolation", "bilinear")
        return None, dict(val_resize_to=head["resize_to"] or size, val_interpolation=interp)
    return (WorkerTransforms(tuple(items[:k]), floats=False) if k else None), None


@dataclass(frozen=True)
class ViewGroup:
    """One view group of multi-view training, compiled: the stages of its transform, which
    every sample goes through ``count`` times, as views ``first .. first + count - 1`` (each
    with its own seed, :func:`~ff_lightning.pipeline.views.view_seed`).

    ``name`` keys the group in the dict form of the batch (the given name, else
    ``global_crops`` for the groups of the largest size and ``local_crops`` for the others).
    """

    name: str
    count: int
    first: int
    geometry: WorkerGeometry
    prefix: WorkerTransforms | None
    routed: RoutedStage
    tail: DeviceTail

    @property
    def views(self) -> range:
        """The numbers of its views (across all groups)."""
        return range(self.first, self.first + self.count)

    @property
    def size(self) -> int:
        return self.geometry.size

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(s for s in (self.geometry, self.prefix, self.routed, self.tail) if s)

    def describe(self) -> list[str]:
        """A heading line, then one line per stage."""
        last = self.first + self.count - 1
        which = f"view {self.first}" if self.count == 1 else f"views {self.first}-{last}"
        head = f"  {self.name} x{self.count} ({which}, {self.size}x{self.size}):"
        return [head, *(f"    {s.where:<18} {s.describe()}" for s in self.stages)]


def _channels(image: Any) -> int:
    if hasattr(image, "getbands"):
        return len(image.getbands())
    return int(image.shape[0]) if getattr(image, "ndim", 0) == 3 else -1


def view_stages(
    options: PipelineOptions, train_dataset: Any
) -> tuple[tuple[ViewGroup, ...], tuple[Stage, ...], WorkerTransforms | None, list[str]]:
    """The view groups of ``options.views`` (resolved options), the stage list of evaluation
    (the first group's: its resize and centre crop, or ``val_transform``), the evaluation
    transforms the workers run as written, and the compiler's notes.

    Every group's transform is compiled as ``transform=`` would be; a group the compiler
    refuses, views with different channel counts, a normalisation that does not fit the
    channels, and a multi-view object whose output is not one image per view are
    :class:`ConfigError` naming the group.
    """
    from ff_lightning.errors import ConfigError
    from ff_lightning.pipeline.views import check_object_output, view_seed
    from ff_lightning.pipeline.worker.items import read_item, to_uint8_chw
    from ff_lightning.pipeline.worker.steps import run_user_transforms

    spec = options.views
    image, _ = read_item(
        train_dataset[0], 0, image_key=options.image_key, label_key=options.label_key
    )
    image = to_uint8_chw(image, int(options.channels), 0)  # type: ignore[arg-type]
    compiled: list[tuple[tuple[Stage, ...], int]] = []
    eval_stages: tuple[Stage, ...] = ()
    eval_prefix: WorkerTransforms | None = None
    notes: list[str] = []
    first = 0
    for g, vs in enumerate(spec.groups):
        label = spec.label(g)
        opts = dataclasses.replace(
            options,
            views=None,
            transform=vs.transform,
            val_transform=options.val_transform if g == 0 else None,
        )
        try:
            stages, ev, nt = transform_stages(opts, train_dataset)
        except ConfigError as err:
            raise ConfigError(f"`views` {label}: {err}") from None
        if g == 0:
            eval_stages, eval_prefix = stages, ev
        notes += [f"{label}: {n}" for n in nt]
        prefix = next((s for s in stages if isinstance(s, WorkerTransforms)), None)
        channels = int(options.channels)  # type: ignore[arg-type]
        if prefix is not None:
            out = run_user_transforms(
                prefix.transforms, image, seed=view_seed(options.seed, first), epoch=0, index=0
            )
            channels = _channels(out)
        tail = next(s for s in stages if isinstance(s, DeviceTail))
        if tail.normalize and len(tail.mean) != channels:
            raise ConfigError(
                f"`views` {label}: its Normalize has {len(tail.mean)} value(s) per statistic but "
                f"its views have {channels} channel(s); give one value per channel"
            )
        if compiled and channels != compiled[0][1]:
            raise ConfigError(
                f"`views` {label} gives {channels}-channel views but {spec.label(0)} gives "
                f"{compiled[0][1]}-channel ones; every view must have the same channel count "
                "(a RandomGrayscale keeps 3 channels; Grayscale(num_output_channels=1) does not)"
            )
        compiled.append((stages, channels))
        first += vs.count
    check_object_output(
        spec,
        image,
        lambda obj, im: run_user_transforms(
            [obj], im, seed=view_seed(options.seed, 0), epoch=0, index=0
        ),
    )
    sizes = [next(s for s in st if isinstance(s, WorkerGeometry)).size for st, _ in compiled]
    groups, first = [], 0
    for vs, (stages, _), size in zip(spec.groups, compiled, sizes, strict=True):
        name = vs.name or ("global_crops" if size == max(sizes) else "local_crops")
        groups.append(
            ViewGroup(
                name=name,
                count=vs.count,
                first=first,
                geometry=next(s for s in stages if isinstance(s, WorkerGeometry)),
                prefix=next((s for s in stages if isinstance(s, WorkerTransforms)), None),
                routed=next(s for s in stages if isinstance(s, RoutedStage)),
                tail=next(s for s in stages if isinstance(s, DeviceTail)),
            )
        )
        first += vs.count
    return tuple(groups), eval_stages, eval_prefix, notes
