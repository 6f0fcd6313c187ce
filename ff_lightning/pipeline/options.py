"""The pipeline's options: one dataclass, checked once, resolved against the training data.

:class:`PipelineOptions` holds every keyword a :class:`~ff_lightning.pipeline.Pipeline` (and so
``FusionDataModule`` and ``FusionAccelerate``) accepts. Its checks raise the
:class:`~ff_lightning.errors.ConfigError` users see: the argument in backticks, what is allowed
and what was given. :meth:`PipelineOptions.resolve` fills in what depends on the training data
(the channel count, the normalisation constants, whether the device decodes, the worker count)
and builds the policy object, so the pipeline reads finished values only.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ff_lightning.augment.batch_ops import IMAGENET_MEAN, IMAGENET_STD
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.views import VIEWS_FORMATS
from ff_lightning.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_pair,
    check_probability,
)

__all__ = ["GRAY_MEAN", "GRAY_STD", "OUTPUT_DTYPES", "PipelineOptions", "options_from_kwargs"]

log = logging.getLogger("ff_lightning")

# One-channel default: ImageNet's statistics of the luma (the mean of the channel means and stds).
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
OUTPUT_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
DEVICE_DECODE = ("auto", True, False)


@dataclass(frozen=True)
class PipelineOptions:
    """Everything the pipeline is built from (the keywords of ``FusionDataModule``).

    Attributes:
        policy: ``"randaugment"``, ``"trivialaugment"``, ``"autoaugment"``, ``"augmix"``,
            ``"none"`` or a policy object from :func:`ff_lightning.augment.build_policy`.
        policy_kwargs: keyword arguments for ``build_policy`` (torchvision's names).
        image_size: side of the square crop every sample is resized to in the workers.
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes; ``None`` picks ``min(4, cpu count)``.
        seed: seed of all per-sample randomness (crop, flip, policy parameters).
        crop_scale, crop_ratio: RandomResizedCrop's area and aspect ranges.
        hflip: random horizontal flip (p=0.5) in the workers.
        val_crop_fraction: validation resizes the short side to ``image_size / fraction``.
        mean, std: normalisation on the device, one value per channel (default: ImageNet's;
            for one channel ``(0.449,)``, ``(0.226,)``).
        channels: 1 or 3, the channel count the model receives; images with another count are
            converted. ``None``: the first training image's.
        normalize: ``True``: the model receives ``(x / 255 - mean) / std``; ``False``: floats in
            ``[0, 1]``.
        random_erasing: probability of batched random erasing on the device (0 disables).
        mixup_alpha, cutmix_alpha: batch mixing on the device (0 disables); needs ``num_classes``.
        num_classes: classes of the dataset (mixup/cutmix's soft targets).
        route_strategy: ``"costliest"`` (the device takes the samples costliest on the CPU) or
            ``"random"``.
        ratio: the device share when no controller drives it.
        reserve_mb: device memory (MiB) the memory guard leaves free for training.
        output_dtype: ``"auto"`` (the trainer's precision) or a dtype name.
        drop_last, pin_memory, persistent_workers, prefetch_factor: the DataLoader's.
        device_decode: decode the device share's JPEGs on the device (``True``), in the
            workers (``False``), or ``"auto"``: on for sources that read encoded files.
        multiprocessing_context: start method of the worker processes (``None``: the default).
        image_key, label_key: the keys of dict items (Hugging Face ``datasets`` rows); ``None``
            tries the usual names (``image``/``img``/..., ``label``/``labels``/...).
        transform: the user's own training pipeline instead of the keywords: a torchvision v2
            ``Compose`` (or list of transforms) or timm's ``create_transform(...)`` output,
            compiled into the stages (:mod:`ff_lightning.pipeline.compiler`).
        val_transform: the evaluation pipeline to go with ``transform`` (default: resize and
            centre crop from the training geometry, the same normalisation).
        batch_transform: v2 ``MixUp``/``CutMix``/``RandomChoice`` of them, or timm's ``Mixup``.
        views: multi-view training instead of ``transform``: view groups ``[(transform, count),
            ...]`` (optionally ``(name, transform, count)``), a list of ``Compose`` (one view
            each), or a multi-view object whose parts are recognised (see
            :mod:`ff_lightning.pipeline.views`); stored parsed, as a ``ViewSet``. The model
            then receives ``(views, targets)``.
        views_format: ``"list"``: ``views`` is a list of ``[B, C, S_v, S_v]`` tensors, one per
            view in order; ``"dict"``: DINOv2's form, one ``[n * B, C, S, S]`` tensor per group
            name (``global_crops``, ``local_crops``), its views concatenated along the batch.
    """

    policy: Any = "randaugment"
    policy_kwargs: Mapping[str, Any] | None = None
    image_size: int = 224
    batch_size: int = 64
    num_workers: int | None = None
    seed: int = 0
    crop_scale: Sequence[float] = (0.08, 1.0)
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3)
    hflip: bool = True
    val_crop_fraction: float = 0.875
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    channels: int | None = None
    normalize: bool = True
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int | None = None
    route_strategy: str = "costliest"
    ratio: float = 0.0
    reserve_mb: float = 1024.0
    output_dtype: str | torch.dtype = "auto"
    drop_last: bool = False
    pin_memory: bool | None = None
    persistent_workers: bool = True
    prefetch_factor: int = 2
    device_decode: bool | str = "auto"
    multiprocessing_context: str | None = None
    image_key: str | None = None
    label_key: str | None = None
    transform: Any = None
    val_transform: Any = None
    batch_transform: Any = None
    views: Any = None
    views_format: str = "list"
    #: Set by :meth:`resolve` (``False`` until then).
    resolved: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "image_size", check_int("image_size", self.image_size, 1))
        set_(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        if self.num_workers is not None:
            set_(self, "num_workers", check_int("num_workers", self.num_workers, 0))
        set_(self, "seed", check_int("seed", self.seed, 0, 2**63 - 1))
        set_(self, "crop_scale", check_pair("crop_scale", self.crop_scale, 0.0, 1.0))
        set_(self, "crop_ratio", check_pair("crop_ratio", self.crop_ratio, 1e-6))
        set_(
            self,
            "val_crop_fraction",
            check_float("val_crop_fraction", self.val_crop_fraction, 0.0, 1.0, low_open=True),
        )
        set_(self, "hflip", check_bool("hflip", self.hflip))
        if self.channels is not None:
            check_choice("channels", self.channels, (1, 3))
        set_(self, "random_erasing", check_probability("random_erasing", self.random_erasing))
        if float(self.mixup_alpha) < 0 or float(self.cutmix_alpha) < 0:
            raise ConfigError(
                "`mixup_alpha` and `cutmix_alpha` must be >= 0 (0 disables), got "
                f"{self.mixup_alpha!r}, {self.cutmix_alpha!r}"
            )
        set_(self, "mixup_alpha", float(self.mixup_alpha))
        set_(self, "cutmix_alpha", float(self.cutmix_alpha))
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and not self.num_classes:
            raise ConfigError(
                "`num_classes` is required when `mixup_alpha` or `cutmix_alpha` is > 0"
            )
        check_choice("route_strategy", self.route_strategy, ("costliest", "random"))
        check_float("ratio", self.ratio, 0.0, 1.0)
        set_(self, "drop_last", check_bool("drop_last", self.drop_last))
        set_(self, "persistent_workers", check_bool("persistent_workers", self.persistent_workers))
        if self.pin_memory is not None:
            check_bool("pin_memory", self.pin_memory)
        for key in ("image_key", "label_key"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"`{key}` must be a dict key (a string) or None, got {value!r}")
        set_(self, "prefetch_factor", check_int("prefetch_factor", self.prefetch_factor, 1))
        if self.multiprocessing_context is not None:
            import multiprocessing

            check_choice(
                "multiprocessing_context",
                self.multiprocessing_context,
                multiprocessing.get_all_start_methods(),
            )
        set_(self, "reserve_mb", check_float("reserve_mb", self.reserve_mb, 0.0))
        dtype = self.output_dtype
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if dtype not in OUTPUT_DTYPES:
            raise ConfigError(
                f"`output_dtype` must be one of {OUTPUT_DTYPES}, got {self.output_dtype!r}"
            )
        set_(self, "output_dtype", dtype)
        if self.device_decode not in DEVICE_DECODE:
            raise ConfigError(
                f"`device_decode` must be one of {DEVICE_DECODE}, got {self.device_decode!r}"
            )
        set_(self, "normalize", check_bool("normalize", self.normalize))
        policy = self.policy
        if not isinstance(policy, str) and not (
            callable(getattr(policy, "sample", None))
            and callable(getattr(policy, "apply_batch", None))
        ):
            raise ConfigError(
                "`policy` must be a policy name ('randaugment', 'trivialaugment', 'autoaugment', "
                f"'augmix', 'none') or a policy object with `sample` and `apply_batch`, got "
                f"{policy!r}; use policy='none' for no augmentation"
            )
        if self.policy_kwargs is not None and not isinstance(self.policy_kwargs, Mapping):
            raise ConfigError(
                f"`policy_kwargs` must be a dict of keyword arguments, got {self.policy_kwargs!r}"
            )
        if self.policy_kwargs and not isinstance(self.policy, str):
            raise ConfigError("`policy_kwargs` can only be used when `policy` is a name")
        check_choice("views_format", self.views_format, VIEWS_FORMATS)
        if self.views is not None:
            self._check_views()

    def _check_views(self) -> None:
        """``views`` parsed (a ``ConfigError`` names a group it cannot read), and the options
        that cannot go with it."""
        from ff_lightning.pipeline.views import parse_views

        object.__setattr__(self, "views", parse_views(self.views))
        if self.transform is not None:
            raise ConfigError(
                "`views` and `transform` both describe the training augmentation; give each "
                "view group its transform in `views` and drop `transform`"
            )
        if self.batch_transform is not None or self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            raise ConfigError(
                "`views` cannot go with `batch_transform`, `mixup_alpha` or `cutmix_alpha`: "
                "multi-view batches are not mixed; drop them"
            )
        if self.device_decode is True:
            raise ConfigError(
                "`device_decode=True` cannot go with `views`: every view is cropped from one "
                "decode in the workers; use device_decode='auto' or False"
            )

    # ------------------------------------------------------------------ resolution
    def resolve(self, train_dataset: Any) -> PipelineOptions:
        """A copy with every data-dependent value filled in and the policy built.

        ``num_workers``: ``min(4, cpu count)`` when ``None``; ``channels``: 1 when a sample of the
        training images is all single-channel, else 3 (logged); ``mean``/``std``: ImageNet's (or the luma's for one channel);
        ``device_decode``: a bool (``"auto"``: on when the training dataset reads encoded files
        and has three channels); ``policy``: a policy object.
        """
        if self.resolved:
            return self
        from ff_lightning.augment import build_policy
        from ff_lightning.pipeline.worker.items import channels_of_sample
        from ff_lightning.sources.decoding import reads_encoded_files

        num_workers = self.num_workers
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        channels = self.channels
        if channels is None:
            channels, why = channels_of_sample(
                train_dataset, image_key=self.image_key, label_key=self.label_key
            )
            log.info("ff_lightning: %s (pass `channels=` to choose)", why)
        c = check_choice("channels", channels, (1, 3))
        mean = self.mean if self.mean is not None else (IMAGENET_MEAN if c == 3 else GRAY_MEAN)
        std = self.std if self.std is not None else (IMAGENET_STD if c == 3 else GRAY_STD)
        if len(mean) != c or len(std) != c or any(float(s) <= 0 for s in std):
            raise ConfigError(
                f"`mean` and `std` must be {c} number(s) each (one per channel; channels={c}) "
                f"with std > 0, got mean={mean!r}, std={std!r}"
            )
        encoded = reads_encoded_files(train_dataset)
        if self.device_decode is True and not encoded:
            raise ConfigError(
                "`device_decode=True` needs a training dataset that reads encoded files (with "
                f"`encoded(index)` and `path(index)`, like ImageFolderSource), got "
                f"{type(train_dataset).__name__}; use device_decode='auto' or False"
            )
        decode = encoded if self.device_decode == "auto" else bool(self.device_decode)
        if decode and c != 3:
            if self.device_decode is True:
                raise ConfigError(
                    "`device_decode=True` decodes RGB JPEGs and needs channels=3, got "
                    f"channels={c}; use device_decode='auto' or False"
                )
            decode = False  # auto: one-channel data is decoded in the workers
        if self.views is not None:
            decode = False  # the views are cropped in the workers from one decode
        policy = self.policy
        if self.transform is not None or self.views is not None:
            policy = "none"  # the compiled transform brings its own routed stage
        if isinstance(policy, str):
            try:
                policy = build_policy(policy, **dict(self.policy_kwargs or {}))
            except ConfigError as err:
                # build_policy calls the policy `name`; here the argument is `policy`.
                raise ConfigError(str(err).replace("`name`", "`policy`", 1)) from None
        return replace(
            self,
            policy=policy,
            policy_kwargs=None
            if self.transform is None and self.views is None
            else self.policy_kwargs,
            num_workers=num_workers,
            channels=c,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            device_decode=decode,
            resolved=True,
        )


_NAMES = tuple(f.name for f in fields(PipelineOptions) if f.name != "resolved")


#: Keywords a given ``transform`` (or ``batch_transform``) already decides.
_SET_BY_TRANSFORM = (
    "policy",
    "policy_kwargs",
    "crop_scale",
    "crop_ratio",
    "hflip",
    "mean",
    "std",
    "random_erasing",
)
_SET_BY_BATCH_TRANSFORM = ("mixup_alpha", "cutmix_alpha")


def options_from_kwargs(owner: str, kwargs: Mapping[str, Any]) -> PipelineOptions:
    """:class:`PipelineOptions` from keyword arguments given to ``owner`` (a class name for the
    message); an unknown keyword is a :class:`ConfigError` naming it and the closest match, and
    a keyword that a given ``transform`` decides is one naming both."""
    unknown = [k for k in kwargs if k not in _NAMES]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, _NAMES, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise ConfigError(
            f"`{owner}` got an unknown argument `{key}`{hint}; the options are {', '.join(_NAMES)}"
        )
    for given, keys in (
        ("transform", _SET_BY_TRANSFORM),
        ("views", _SET_BY_TRANSFORM),
        ("batch_transform", _SET_BY_BATCH_TRANSFORM),
    ):
        if kwargs.get(given) is not None:
            clash = [k for k in keys if k in kwargs]
            if clash:
                raise ConfigError(
                    f"`{clash[0]}` and `{given}` both describe the augmentation; `{given}` "
                    f"decides it: drop `{clash[0]}`"
                )
    return PipelineOptions(**kwargs)
