"""The stock pipeline: torchvision transforms on PIL images in the DataLoader workers.

This is what users run before they try ff_lightning, and the yardstick of the ``torchvision``
mode of ``recipes/benchmark.py``: every sample goes through
``v2.Compose([RandomResizedCrop, RandomHorizontalFlip, <policy>, PILToTensor])`` one at a time
in the workers, the default collate stacks uint8 batches, and the device normalises them in
``on_after_batch_transfer``. The model receives ``(float normalised images [B,3,H,W], targets)``,
exactly as from :class:`~ff_lightning.FusionDataModule`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ff_lightning.augment.batch_ops import IMAGENET_MEAN, IMAGENET_STD, normalize
from ff_lightning.errors import ConfigError

__all__ = ["STOCK_POLICIES", "StockDataModule", "stock_dataset", "stock_transform"]

log = logging.getLogger(__name__)


#: Our policy names and the torchvision v2 class each one mirrors (``none``: no policy).
STOCK_POLICIES: dict[str, str | None] = {
    "randaugment": "RandAugment",
    "trivialaugment": "TrivialAugmentWide",
    "autoaugment": "AutoAugment",
    "augmix": "AugMix",
    "none": None,
}
_INTERPOLATION = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
}


def _policy_transform(name: str, kwargs: dict[str, Any]) -> v2.Transform | None:
    key = name.lower().replace("-", "").replace("_", "")
    key = "trivialaugment" if key == "trivialaugmentwide" else key
    if key not in STOCK_POLICIES:
        raise ConfigError(f"`policy` must be one of {tuple(STOCK_POLICIES)}, got {name!r}")
    cls_name = STOCK_POLICIES[key]
    if cls_name is None:
        return None
    kw = dict(kwargs)
    if "interpolation" in kw:
        interp = kw["interpolation"]
        if interp not in _INTERPOLATION:
            raise ConfigError(
                f"`interpolation` must be one of {tuple(_INTERPOLATION)}, got {interp!r}"
            )
        kw["interpolation"] = _INTERPOLATION[interp]
    if key == "autoaugment" and isinstance(kw.get("policy"), str):
        kw["policy"] = v2.AutoAugmentPolicy(kw["policy"].lower())
    if isinstance(kw.get("fill"), (list, tuple)):
        kw["fill"] = [float(f) for f in kw["fill"]]
    try:
        return getattr(v2, cls_name)(**kw)
    except TypeError as err:
        raise ConfigError(f"bad keyword arguments for torchvision's {cls_name}: {err}") from None


def stock_transform(
    image_size: int,
    *,
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    policy: str = "randaugment",
    policy_kwargs: dict[str, Any] | None = None,
) -> v2.Compose:
    """The per-image training transform of the stock pipeline (PIL in, uint8 ``[3,S,S]`` out).

    ``policy`` and ``policy_kwargs`` are named as for :func:`ff_lightning.augment.build_policy`
    (torchvision's keyword names, ``interpolation`` as ``"nearest"``/``"bilinear"``), so one
    config drives both pipelines.
    """
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(
            int(image_size), scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    aug = _policy_transform(policy, policy_kwargs or {})
    if aug is not None:
        steps.append(aug)
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


class _Transformed(Dataset):
    """A source's items with ``transform`` applied to the image (uint8 tensors become PIL first)."""

    def __init__(self, source: Any, transform: Any) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from torchvision.transforms.v2.functional import to_pil_image

        image, target = self.source[index]
        if isinstance(image, torch.Tensor):
            image = to_pil_image(image)  # the stock CIFAR/ImageFolder datasets yield PIL
        return self.transform(image), int(target)


def stock_dataset(source: Any, transform: Any) -> Dataset:
    """The dataset a stock pipeline would read for ``source``.

    An :class:`~ff_lightning.sources.datasets.ImageFolderSource` (the embedded synthetic
    dataset is one) becomes ``torchvision.datasets.ImageFolder`` on the same folder, with
    torchvision's own loader; any other source is wrapped and its images handed to
    ``transform``.
    """
    from ff_lightning.sources.datasets import ImageFolderSource

    if isinstance(source, ImageFolderSource):
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(source.root / source.split), transform=transform)
        if folder.classes == list(source.classes) and len(folder) == len(source):
            return folder
        log.warning(
            "torchvision's ImageFolder on %s sees %d images in %d classes, the source %d in %d; "
            "wrapping the source instead",
            source.root / source.split,
            len(folder),
            len(folder.classes),
            len(source),
            len(source.classes),
        )
    return _Transformed(source, transform)


def timm_pillow_compat(transform: Any) -> Any:
    """Let a timm transform run under Pillow 13: its ``posterize`` rejects fewer than 1 bit, which
    timm's PosterizeIncreasing reaches at magnitude 10 (about 2% of its applications with
    ``m9-mstd0.5``) and the job crashes; those get the black image older Pillow gave (what
    ff_lightning's kernels give too). Other transforms are returned as they are."""
    from ff_lightning.pipeline.compiler import flatten

    try:
        import timm.data.auto_augment as taa
    except ImportError:
        return transform

    def posterize(img: Any, bits: int, **kwargs: Any) -> Any:
        from PIL import Image

        return Image.new(img.mode, img.size) if bits < 1 else taa.posterize(img, bits, **kwargs)

    for t in flatten(transform):
        for op in getattr(t, "ops", []) or []:
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = posterize
    return transform


class StockDataModule(L.LightningDataModule):
    """A plain ``LightningDataModule`` running :func:`stock_transform` per image in the workers.

    Batch size, workers, pinning (``None``: pin when CUDA is available), persistent workers and
    prefetching default as in :class:`~ff_lightning.FusionDataModule`. Normalisation by
    ``mean``/``std`` runs on the device after the transfer of the uint8 batch.
    """

    def __init__(
        self,
        train_dataset: Any,
        *,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 2,
        seed: int = 0,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        policy: str = "randaugment",
        policy_kwargs: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        drop_last: bool = False,
        transform: Any = None,
        batch_transform: Any = None,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ConfigError(
                f"`mean` and `std` must be 3 numbers each with std > 0, got mean={mean!r}, std={std!r}"
            )
        # The user's own transform, unchanged (timm's create_transform, a v2 Compose: floats
        # out, normalised by it), or the stock pipeline the keywords describe (uint8 out).
        self.transform = (
            timm_pillow_compat(transform)
            if transform is not None
            else stock_transform(
                image_size,
                crop_scale=crop_scale,
                crop_ratio=crop_ratio,
                hflip=hflip,
                policy=policy,
                policy_kwargs=policy_kwargs,
            )
        )
        self.batch_transform = batch_transform
        self.train_dataset = stock_dataset(train_dataset, self.transform)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.pin_memory = pin_memory
        self.persistent_workers = bool(persistent_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.drop_last = bool(drop_last)

    def train_dataloader(self) -> DataLoader:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        kw: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": pin}
        if self.num_workers > 0:
            kw["persistent_workers"] = self.persistent_workers
            kw["prefetch_factor"] = self.prefetch_factor
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=self.drop_last,
            generator=torch.Generator().manual_seed(self.seed),
            **kw,
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images / 255 - mean) / std`` in float32 (the package's one normaliser)."""
        return normalize(images, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        # uint8 from the stock transform; floats from a user's transform that normalised them.
        x = images if images.is_floating_point() else self.normalize(images)
        if self.batch_transform is not None:  # MixUp / CutMix on the device, as users run it
            x, targets = self.batch_transform(x, targets)
        return x, targets
