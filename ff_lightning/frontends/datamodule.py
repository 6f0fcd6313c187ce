"""``FusionDataModule``: workers augment part of each batch, the device augments the rest.

Data flow of one training batch (see design.md):

1. main process: :class:`~ff_lightning.pipeline.routing.RoutedBatchSampler` emits one routed
   batch (indices, epoch, the controller's share) per batch;
2. worker (:mod:`ff_lightning.pipeline.worker.dataset`): decode, random-resized-crop + flip to a fixed
   size, draw the batch's policy parameters once, pick the device share (the costliest samples),
   augment the CPU share with one batched call, and return the batch with its route record;
3. main process, on the device (:class:`~ff_lightning.pipeline.device.stage.DeviceStage`, called from
   the batch-transfer hooks): apply the same parameters to the device share (chunked by the
   memory guard), normalise, run the batch-level ops, and hand ``(images, targets)`` to the
   user's ``training_step``.

Hook order when the user's LightningModule also overrides a batch-transfer hook (Lightning
would otherwise call only the DataModule's): ``on_before_batch_transfer`` — the module's hook
runs first and receives the raw batch dict (keys ``images`` uint8, ``targets`` and, for
training, ``route``: a host-side :class:`~ff_lightning.pipeline.batch.BatchRoute`), then ours;
``on_after_batch_transfer`` — ours runs first (augment + normalise), then the module's
receives ``(images, targets)``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ff_lightning.errors import ConfigError
from ff_lightning.frontends.namespaces import DATAMODULE_BASES, overrides
from ff_lightning.pipeline.device.stage import DeviceStage, output_dtype_for
from ff_lightning.pipeline.loader import ResumableDataLoader
from ff_lightning.pipeline.routing import EpochSampler, FixedShare, RoutedBatchSampler, Router
from ff_lightning.pipeline.worker.dataset import AugmentingDataset, collate_batch, worker_init
from ff_lightning.pipeline.worker.geometry import channels_of_first
from ff_lightning.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_pair,
    check_probability,
)

log = logging.getLogger("ff_lightning")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One-channel default: ImageNet's statistics of the luma (the mean of the channel means and stds).
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
OUTPUT_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")

# We call the LightningModule's batch-transfer hooks ourselves (see the module docstring), so
# Lightning's "overridden in both" warning would be misleading.
warnings.filterwarnings(
    "ignore", message=r".*overridden `on_(before|after)_batch_transfer` in both.*"
)


class FusionDataModule(*DATAMODULE_BASES):  # type: ignore[misc]
    """A ``LightningDataModule`` that splits the augmentation of each batch between workers and device.

    It works with a ``lightning.pytorch`` Trainer and with a ``pytorch_lightning`` one.

    Args:
        train_dataset: map-style dataset of ``(PIL image or uint8 [C,H,W] tensor, int target)``.
        val_dataset: optional validation dataset of the same form (resize + centre crop only).
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
        mean, std: normalisation applied on the device to every batch, one value per channel
            (default: ImageNet's; for one channel ``(0.449,)``, ``(0.226,)``).
        channels: 1 or 3, the channel count the model receives; images with another count are
            converted (RGB to grayscale with torchvision's luma weights, or gray repeated).
            ``None``: the first training image's (a ``L`` image or ``[1, H, W]`` tensor gives 1).
        normalize: ``True``: the model receives ``(x / 255 - mean) / std``; ``False``: floats in
            ``[0, 1]`` (for modules that augment further with ops expecting that range, such
            as kornia's ``ColorJitter``, and normalise themselves).
        random_erasing: probability of batched random erasing on the device (0 disables).
        mixup_alpha, cutmix_alpha: batch mixing on the device (0 disables); needs ``num_classes``.
        route_strategy: ``"costliest"`` (device takes the samples costliest on the CPU) or ``"random"``.
        ratio: share of each batch routed to the device when no ``FusionFlow`` callback
            drives it (the callback's controller owns the share once it attaches).
        reserve_mb: device memory the memory guard leaves free for training.
        output_dtype: floating dtype of the images the model receives: ``"auto"`` follows the
            Trainer's precision (``bf16-true``/``bf16-mixed``: bfloat16, ``16-true``/``16-mixed``:
            float16, ``64-true``: float64, otherwise float32), or one of ``"float32"``,
            ``"bfloat16"``, ``"float16"``, ``"float64"``.
        drop_last, pin_memory, persistent_workers, prefetch_factor: passed to the DataLoader.
        device_decode: decode the device share's JPEGs on the device (``True``), in the
            workers (``False``), or ``"auto"``: on when the training dataset reads encoded
            files (ImageFolder, the embedded dataset), off for in-memory images.
        multiprocessing_context: start method of the worker processes (``"fork"``,
            ``"spawn"``, ``"forkserver"``; ``None``: the platform default). Everything the
            workers receive is picklable, so ``"spawn"`` works.
    """

    def __init__(
        self,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        *,
        policy: Any = "randaugment",
        policy_kwargs: dict[str, Any] | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        val_crop_fraction: float = 0.875,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int | None = None,
        normalize: bool = True,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        num_classes: int | None = None,
        route_strategy: str = "costliest",
        ratio: float = 0.0,
        reserve_mb: float = 1024.0,
        output_dtype: str | torch.dtype = "auto",
        drop_last: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        device_decode: bool | str = "auto",
        multiprocessing_context: str | None = None,
        test_dataset: Dataset | None = None,
    ) -> None:
        super().__init__()
        from ff_lightning.augment import build_policy

        if train_dataset is None:
            raise ConfigError(
                "`train_dataset` is required: pass a map-style dataset of (image, int target)"
            )
        if isinstance(train_dataset, IterableDataset):
            raise ConfigError(
                f"`train_dataset` must be a map-style dataset (indexable by int), got the "
                f"IterableDataset {type(train_dataset).__name__}; the router picks samples by "
                "index, so wrap the data in a map-style Dataset with __getitem__ and __len__"
            )
        try:
            n_train = len(train_dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(
                f"`train_dataset` must be a map-style dataset with __len__ and __getitem__, got {type(train_dataset).__name__}"
            ) from None
        if n_train == 0:
            raise ConfigError(
                "`train_dataset` is empty: it has 0 samples; check the dataset path or filter"
            )
        if val_dataset is not None and len(val_dataset) == 0:  # type: ignore[arg-type]
            raise ConfigError(
                "`val_dataset` is empty: it has 0 samples; pass None to skip validation"
            )
        self.image_size = check_int("image_size", image_size, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = int(seed)
        self.crop_scale = check_pair("crop_scale", crop_scale, 0.0, 1.0)
        self.crop_ratio = check_pair("crop_ratio", crop_ratio, 1e-6)
        self.val_crop_fraction = check_float(
            "val_crop_fraction", val_crop_fraction, 0.0, 1.0, low_open=True
        )
        self.hflip = bool(hflip)
        if channels is None:
            channels = channels_of_first(train_dataset)
        self.channels = check_choice("channels", channels, (1, 3))
        c = self.channels
        if mean is None:
            mean = IMAGENET_MEAN if c == 3 else GRAY_MEAN
        if std is None:
            std = IMAGENET_STD if c == 3 else GRAY_STD
        if len(mean) != c or len(std) != c or any(float(s) <= 0 for s in std):
            raise ConfigError(
                f"`mean` and `std` must be {c} number(s) each (one per channel; channels={c}) "
                f"with std > 0, got mean={mean!r}, std={std!r}"
            )
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.random_erasing = check_probability("random_erasing", random_erasing)
        if float(mixup_alpha) < 0 or float(cutmix_alpha) < 0:
            raise ConfigError(
                f"`mixup_alpha` and `cutmix_alpha` must be >= 0 (0 disables), got {mixup_alpha!r}, {cutmix_alpha!r}"
            )
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and not num_classes:
            raise ConfigError(
                "`num_classes` is required when `mixup_alpha` or `cutmix_alpha` is > 0"
            )
        self.num_classes = num_classes
        self.drop_last = bool(drop_last)
        self.pin_memory = pin_memory
        self.persistent_workers = bool(persistent_workers)
        self.prefetch_factor = check_int("prefetch_factor", prefetch_factor, 1)
        if multiprocessing_context is not None:
            import multiprocessing

            check_choice(
                "multiprocessing_context",
                multiprocessing_context,
                multiprocessing.get_all_start_methods(),
            )
        self.multiprocessing_context = multiprocessing_context
        self.reserve_mb = check_float("reserve_mb", reserve_mb, 0.0)
        if isinstance(output_dtype, torch.dtype):
            output_dtype = str(output_dtype).removeprefix("torch.")
        if output_dtype not in OUTPUT_DTYPES:
            raise ConfigError(
                f"`output_dtype` must be one of {OUTPUT_DTYPES}, got {output_dtype!r}"
            )
        self.output_dtype = output_dtype
        from ff_lightning.sources.decoding import reads_encoded_files

        if device_decode not in ("auto", True, False):
            raise ConfigError(
                f"`device_decode` must be one of ('auto', True, False), got {device_decode!r}"
            )
        if device_decode is True and not reads_encoded_files(train_dataset):
            raise ConfigError(
                "`device_decode=True` needs a training dataset that reads encoded files (with "
                f"`encoded(index)` and `path(index)`, like ImageFolderSource), got "
                f"{type(train_dataset).__name__}; use device_decode='auto' or False"
            )
        self.device_decode = (
            reads_encoded_files(train_dataset) if device_decode == "auto" else bool(device_decode)
        )
        if self.device_decode and self.channels != 3:
            if device_decode is True:
                raise ConfigError(
                    "`device_decode=True` decodes RGB JPEGs and needs channels=3, got "
                    f"channels={self.channels}; use device_decode='auto' or False"
                )
            self.device_decode = False  # auto: one-channel data is decoded in the workers

        if isinstance(policy, str):
            try:
                policy = build_policy(policy, **(policy_kwargs or {}))
            except ConfigError as err:
                # build_policy calls the policy `name`; here the argument is `policy`.
                raise ConfigError(str(err).replace("`name`", "`policy`", 1)) from None
        elif policy_kwargs:
            raise ConfigError("`policy_kwargs` can only be used when `policy` is a name")
        self.policy = policy
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.test_dataset = test_dataset

        self.normalize = check_bool("normalize", normalize)
        self.router = Router(FixedShare(ratio), strategy=route_strategy)
        self.device_stage = DeviceStage(
            policy,
            mean=self.mean,
            std=self.std,
            normalize=self.normalize,
            random_erasing=self.random_erasing,
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            num_classes=num_classes,
            seed=self.seed,
            device_decode=self.device_decode,
            source=train_dataset,
        )

    # ------------------------------------------------------------------ ratio
    @property
    def ratio(self) -> float:
        """Share of each training batch routed to the device (read from its owner)."""
        return self.router.ratio

    def set_ratio(self, ratio: float) -> None:
        """Route with a constant share (for use without the FusionFlow callback)."""
        self.router.bind(FixedShare(ratio))

    @property
    def memory_guard(self) -> Any:
        return self.device_stage.guard

    # ------------------------------------------------------------------ workers
    @property
    def train_workers(self) -> int:
        """Worker processes of the next training DataLoader: ``num_workers`` unless
        :meth:`set_num_workers` changed it (FusionFlow's ``objective="cpu"`` does, at epoch
        ends). Validation and test loaders keep ``num_workers``."""
        n = getattr(self, "_train_workers", None)
        return self.num_workers if n is None else n

    def set_num_workers(self, n: int) -> None:
        """Build the next training DataLoader with ``n`` workers. The sampler, the router and
        the augmentation parameters do not depend on it: the same ``(epoch, index)`` gives the
        same image. The loader built before keeps running until it is replaced; then its
        worker processes are shut down."""
        self._train_workers = check_int("num_workers", n, 0)

    def _release_train_loader(self, n: int) -> None:
        old = getattr(self, "_last_train_loader", None)
        if old is None or old.num_workers == n:
            return
        # Persistent workers live until their loader is garbage collected; shut them down now
        # so that the CPUs are free when the loader with another worker count starts (torch has
        # no public call for this; best effort).
        shutdown = getattr(getattr(old, "_iterator", None), "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    # ------------------------------------------------------------ dataloaders
    def _loader_kwargs(self, num_workers: int | None = None) -> dict[str, Any]:
        pin = self.pin_memory
        if pin is None:
            pin = torch.cuda.is_available()
        n = self.num_workers if num_workers is None else num_workers
        kw: dict[str, Any] = {"num_workers": n, "pin_memory": pin}
        if n > 0:
            kw["worker_init_fn"] = worker_init
            kw["persistent_workers"] = self.persistent_workers
            kw["prefetch_factor"] = self.prefetch_factor
            kw["multiprocessing_context"] = self.multiprocessing_context
        return kw

    def train_dataloader(self) -> DataLoader:
        ds = AugmentingDataset(
            self.train_dataset,
            train=True,
            image_size=self.image_size,
            policy=self.policy,
            seed=self.seed,
            crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio,
            hflip=self.hflip,
            device_decode=self.device_decode,
            channels=self.channels,
        )
        sampler = EpochSampler(self.train_dataset, shuffle=True, seed=self.seed)  # type: ignore[arg-type]
        batch_sampler = RoutedBatchSampler(
            sampler, self.batch_size, self.drop_last, router=self.router
        )
        n = self.train_workers
        self._release_train_loader(n)
        # Resumable mid-epoch (Lightning's stateful-loader protocol): see routing/loader.py.
        loader = ResumableDataLoader(
            ds, batch_sampler=batch_sampler, collate_fn=collate_batch, **self._loader_kwargs(n)
        )
        self._last_train_loader = loader
        return loader

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader | list:
        if dataset is None:
            return []
        ds = AugmentingDataset(
            dataset,
            channels=self.channels,
            train=False,
            image_size=self.image_size,
            val_crop_fraction=self.val_crop_fraction,
        )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate_batch,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self.test_dataset)

    # ------------------------------------------------------- device-side hooks
    def _user_module(self) -> L.LightningModule | None:
        trainer = getattr(self, "trainer", None)
        return trainer.lightning_module if trainer is not None else None

    def resolved_output_dtype(self) -> torch.dtype:
        """The dtype of the images handed to the model (``output_dtype`` resolved)."""
        trainer = getattr(self, "trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return output_dtype_for(self.output_dtype, plugin)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        module = self._user_module()
        if module is not None and overrides(module, "on_before_batch_transfer"):
            batch = module.on_before_batch_transfer(batch, dataloader_idx)
        return self.device_stage.prepare(batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "images" in batch and "targets" in batch:
            trainer = getattr(self, "trainer", None)
            self.device_stage.rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer else 0
            batch = self.device_stage.finish(batch, dtype=self.resolved_output_dtype())
        module = self._user_module()
        if module is not None and overrides(module, "on_after_batch_transfer"):
            batch = module.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        # The share is the controller's (saved by the callback); only the step count is ours.
        return {"steps": self.device_stage.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.device_stage.steps = int(state_dict.get("steps", state_dict.get("step", 0)))
