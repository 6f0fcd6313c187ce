"""The stages a pipeline is assembled from, in the order a sample meets them.

1. :class:`WorkerGeometry` (every sample, in the DataLoader workers): decode, the random
   resized crop and flip of training, the resize and centre crop of evaluation, to a fixed size
   and channel count.
2. :class:`RoutedStage` (per sample, on either route): the policy whose parameters are drawn
   from ``(seed, epoch, index)`` before the route is known; the workers apply it to their share
   of each batch, the device to the rest, with the same batched kernels.
3. :class:`DeviceTail` (every sample, on the device, after the copy): normalisation to the
   training dtype and the batch-level ops (random erasing, mixup/cutmix).

:func:`keyword_stages` builds the list from :class:`~ff_lightning.pipeline.options.
PipelineOptions` (the keyword form of ``FusionDataModule``). Each stage says what it does with
:meth:`describe`, which :meth:`Pipeline.describe <ff_lightning.pipeline.Pipeline.describe>` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ff_lightning.pipeline.options import PipelineOptions

__all__ = ["DeviceTail", "RoutedStage", "Stage", "WorkerGeometry", "keyword_stages"]


@dataclass(frozen=True)
class WorkerGeometry:
    """Decode and crop/resize every sample to ``size`` x ``size`` in the workers.

    Training: a random resized crop (``crop_scale``, ``crop_ratio``) and, with ``hflip``, a
    horizontal flip with p=0.5, both drawn from ``(seed, epoch, index)``. Evaluation: resize the
    short side to ``size / val_crop_fraction``, then a centre crop. ``device_decode``: the
    device-routed baseline JPEGs leave the workers undecoded (their crop is drawn here all
    the same).
    """

    size: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    hflip: bool
    val_crop_fraction: float
    channels: int
    device_decode: bool

    where = "workers"

    def describe(self) -> str:
        flip = ", horizontal flip p=0.5" if self.hflip else ""
        decode = " (the device share's baseline JPEGs decoded on the device)" * self.device_decode
        return (
            f"decode{decode}, random resized crop to {self.size}x{self.size} "
            f"(scale {self.crop_scale}, ratio ({self.crop_ratio[0]:.3g}, "
            f"{self.crop_ratio[1]:.3g})){flip}, {self.channels} channel(s)"
        )


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
    """What the device does to every sample after the copy: normalise and the batch ops."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool
    random_erasing: float
    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int | None

    where = "device"

    def describe(self) -> str:
        parts = [
            f"normalise (mean {self.mean}, std {self.std})"
            if self.normalize
            else "scale to [0, 1]",
            "to the training dtype",
        ]
        if self.random_erasing > 0:
            parts.append(f"random erasing p={self.random_erasing:g}")
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            parts.append(f"mixup alpha={self.mixup_alpha:g} / cutmix alpha={self.cutmix_alpha:g}")
        return ", ".join(parts)


Stage = WorkerGeometry | RoutedStage | DeviceTail


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
