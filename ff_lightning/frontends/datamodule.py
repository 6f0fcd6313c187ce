"""``FusionDataModule``: workers augment part of each batch, the device augments the rest.

Data flow of one training batch (see design.md):

1. main process: :class:`RoutedBatchSampler` tags each index ``cpu`` or ``device``;
2. worker: decode, random-resized-crop + flip to a fixed size, draw the policy parameters from
   ``(seed, epoch, index)``, apply them on the CPU for cpu-routed samples, collate uint8 images,
   targets, the device mask, the parameters and the CPU seconds spent;
3. main process, on the device (``on_after_batch_transfer``): apply the same parameters to the
   device-routed share (chunked by the memory guard), normalise, run the batch-level ops, and
   hand ``(images, targets)`` to the user's ``training_step``.

Hook order when the user's LightningModule also overrides a batch-transfer hook (Lightning
would otherwise call only the DataModule's): ``on_before_batch_transfer`` — the module's hook
runs first and receives the raw batch dict (keys ``images``, ``targets`` and, for training,
``device_mask``, ``device_index``, ``params``, ``indices``, ``cpu_aug_s``, ``prep_s``,
``ratio``), then ours; ``on_after_batch_transfer`` — ours runs first (augment + normalise),
then the module's receives ``(images, targets)``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset

from ff_lightning.device.timer import PipelineStats
from ff_lightning.errors import ConfigError
from ff_lightning.routing.sampler import EpochSampler, RoutedBatchSampler, Router
from ff_lightning.worker.dataset import AugmentingDataset, fusion_collate, worker_init

log = logging.getLogger("ff_lightning")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# We call the LightningModule's batch-transfer hooks ourselves (see the module docstring), so
# Lightning's "overridden in both" warning would be misleading.
warnings.filterwarnings(
    "ignore", message=r".*overridden `on_(before|after)_batch_transfer` in both.*"
)


def _check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    ok = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"`{name}` must be an integer {bound}, got {value!r}")
    return int(value)


def _check_range(
    name: str, value: Sequence[float], lo: float, hi: float | None = None
) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"`{name}` must be a pair (low, high), got {value!r}") from None
    if not (lo <= a <= b) or (hi is not None and b > hi):
        upper = f" and high <= {hi}" if hi is not None else ""
        raise ConfigError(f"`{name}` must satisfy {lo} <= low <= high{upper}, got {value!r}")
    return a, b


class FusionDataModule(L.LightningDataModule):
    """A ``LightningDataModule`` that splits the augmentation of each batch between workers and device.

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
        mean, std: normalisation applied on the device to every batch.
        random_erasing: probability of batched random erasing on the device (0 disables).
        mixup_alpha, cutmix_alpha: batch mixing on the device (0 disables); needs ``num_classes``.
        route_strategy: ``"costliest"`` (device takes the samples costliest on the CPU) or ``"random"``.
        ratio: initial share of each batch routed to the device (the callback changes it).
        reserve_mb: device memory the memory guard leaves free for training.
        drop_last, pin_memory, persistent_workers, prefetch_factor: passed to the DataLoader.
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
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        num_classes: int | None = None,
        route_strategy: str = "costliest",
        ratio: float = 0.0,
        reserve_mb: float = 1024.0,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        test_dataset: Dataset | None = None,
    ) -> None:
        super().__init__()
        from ff_lightning.augment import build_policy

        if train_dataset is None:
            raise ConfigError(
                "`train_dataset` is required: pass a map-style dataset of (image, int target)"
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
        self.image_size = _check_positive_int("image_size", image_size)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        self.num_workers = _check_positive_int("num_workers", num_workers, allow_zero=True)
        self.seed = int(seed)
        self.crop_scale = _check_range("crop_scale", crop_scale, 0.0, 1.0)
        self.crop_ratio = _check_range("crop_ratio", crop_ratio, 1e-6)
        if not 0.0 < float(val_crop_fraction) <= 1.0:
            raise ConfigError(f"`val_crop_fraction` must be in (0, 1], got {val_crop_fraction!r}")
        self.val_crop_fraction = float(val_crop_fraction)
        self.hflip = bool(hflip)
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ConfigError(
                f"`mean` and `std` must be 3 numbers each with std > 0, got mean={mean!r}, std={std!r}"
            )
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if not 0.0 <= float(random_erasing) <= 1.0:
            raise ConfigError(
                f"`random_erasing` must be a probability in [0, 1], got {random_erasing!r}"
            )
        self.random_erasing = float(random_erasing)
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
        self.prefetch_factor = _check_positive_int("prefetch_factor", prefetch_factor)
        self.reserve_mb = float(reserve_mb)

        if isinstance(policy, str):
            policy = build_policy(policy, **(policy_kwargs or {}))
        elif policy_kwargs:
            raise ConfigError("`policy_kwargs` can only be used when `policy` is a name")
        self.policy = policy
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.test_dataset = test_dataset

        cost_fn = None
        if hasattr(policy, "estimate_cost"):
            seed_ = self.seed

            def cost_fn(indices: list[int], epoch: int) -> torch.Tensor:
                return policy.estimate_cost(policy.sample(torch.tensor(indices), epoch, seed_))

        self.router = Router(ratio, strategy=route_strategy, cost_fn=cost_fn)
        self.stats = PipelineStats()
        self._guard: Any = None
        self._batch_ops: Any = None
        self._host: Any = None
        self._norm_cache: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ ratio
    @property
    def ratio(self) -> float:
        """Share of each training batch routed to the device for augmentation."""
        return self.router.ratio

    def set_ratio(self, ratio: float) -> None:
        self.router.ratio = ratio

    # ------------------------------------------------------------ dataloaders
    def _loader_kwargs(self) -> dict[str, Any]:
        pin = self.pin_memory
        if pin is None:
            pin = torch.cuda.is_available()
        kw: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": pin}
        if self.num_workers > 0:
            kw["worker_init_fn"] = worker_init
            kw["persistent_workers"] = self.persistent_workers
            kw["prefetch_factor"] = self.prefetch_factor
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
        )
        sampler = EpochSampler(self.train_dataset, shuffle=True, seed=self.seed)  # type: ignore[arg-type]
        batch_sampler = RoutedBatchSampler(
            sampler, self.batch_size, self.drop_last, router=self.router
        )
        return DataLoader(
            ds, batch_sampler=batch_sampler, collate_fn=fusion_collate, **self._loader_kwargs()
        )

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader | list:
        if dataset is None:
            return []
        ds = AugmentingDataset(
            dataset,
            train=False,
            image_size=self.image_size,
            val_crop_fraction=self.val_crop_fraction,
        )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=fusion_collate,
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

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        module = self._user_module()
        if module is not None and is_overridden("on_before_batch_transfer", module):
            batch = module.on_before_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, dict) and "params" in batch:
            # The loop has the batch in hand: the time since the last step ended was data wait.
            self.stats.t_before_transfer = time.perf_counter()
            # Keep the parameters and the device positions on the host: the kernels group
            # samples by op there, and moving them to the device and back would sync.
            batch = dict(batch)
            self._host = (batch.pop("params"), batch["device_index"])
            if self.num_classes and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
                self._check_targets(batch["targets"])
        return batch

    def _check_targets(self, targets: torch.Tensor) -> None:
        # On the host, before the transfer: reading device values later would sync.
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise ConfigError(
                f"targets must be class indices in [0, num_classes={self.num_classes}) for "
                f"mixup/cutmix, got values in [{int(targets.min())}, {int(targets.max())}]; "
                "set `num_classes` to the number of classes of the dataset"
            )

    @property
    def memory_guard(self) -> Any:
        if self._guard is None:
            from ff_lightning.device.memory import MemoryGuard
            from ff_lightning.device.probes import NullProbe

            self._guard = MemoryGuard(NullProbe(), reserve_mb=self.reserve_mb)
        return self._guard

    @memory_guard.setter
    def memory_guard(self, guard: Any) -> None:
        self._guard = guard

    def _cpu_fallback(self, images: torch.Tensor, params: Any) -> torch.Tensor:
        return self.policy.apply_batch(images, params)

    def augment_on_device(self, batch: dict[str, Any]) -> torch.Tensor:
        """Apply the policy to the device-routed share of a transferred training batch."""
        images: torch.Tensor = batch["images"]
        rec = self.stats.last
        rec.batch_size = int(images.shape[0])
        rec.cpu_aug_s = float(batch["cpu_aug_s"])
        rec.prep_s = float(batch["prep_s"])
        rec.ratio = float(batch["ratio"])
        idx_dev: torch.Tensor = batch["device_index"]
        if "params" in batch:  # called directly, without on_before_batch_transfer
            params, idx_host = batch["params"], idx_dev.cpu()
        else:
            params, idx_host = self._host
        rec.n_device = int(idx_host.numel())
        if rec.n_device == 0:
            return images
        sub_params = params[idx_host]
        timer = self.stats.device_timer
        timer.start(images.device)
        guard = self.memory_guard
        out = guard.run(
            self.policy.apply_batch,
            images.index_select(0, idx_dev),
            sub_params,
            self._cpu_fallback,
            total=rec.batch_size,
        )
        timer.stop()
        return images.index_copy(0, idx_dev, out)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        # Constants cached per device: building them each batch would copy from pageable
        # host memory, which synchronises the CUDA stream.
        key = images.device
        if self._norm_cache is None or self._norm_cache[0] != key:
            from ff_lightning.augment import batch_ops

            probe = batch_ops.normalize(
                torch.zeros(1, 3, 1, 1, dtype=torch.uint8), self.mean, self.std
            )
            shift = probe.view(3, 1, 1)
            scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(3, 1, 1)
            self._norm_cache = (key, scale.to(key), shift.to(key))
        _, scale, shift = self._norm_cache
        return torch.addcmul(shift, images.to(torch.float32), scale)

    def _batch_level_ops(
        self, images: torch.Tensor, targets: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ff_lightning.augment import batch_ops

        x = self._normalize(images)
        if not train:
            return x, targets
        if self._batch_ops is None:
            ops = []
            if self.random_erasing > 0:
                ops.append(("erase", batch_ops.RandomErasing(p=self.random_erasing)))
            if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
                ops.append(
                    (
                        "mix",
                        batch_ops.MixUpCutMix(
                            mixup_alpha=self.mixup_alpha,
                            cutmix_alpha=self.cutmix_alpha,
                            num_classes=self.num_classes,
                        ),
                    )
                )
            self._batch_ops = ops
        if self._batch_ops:
            # The batch ops draw their random numbers on the CPU (same result on every device).
            g = torch.Generator()
            trainer = getattr(self, "trainer", None)
            rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
            # Each rank draws its own boxes and mixing weights (same per step across routes).
            g.manual_seed((self.seed * 7_919 + self.stats.train_batches) * 1_000_003 + rank)
            for kind, op in self._batch_ops:
                if kind == "erase":
                    x = op(x, generator=g)
                else:
                    x, targets = op(x, targets, generator=g)
        return x, targets

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "images" in batch:
            train = "device_index" in batch
            if train:
                now = time.perf_counter()
                if self.stats.t_before_transfer is not None:
                    # Wall time of Lightning's transfer hook: the whole copy when it is
                    # synchronous, the enqueue time for pinned non-blocking copies on CUDA.
                    self.stats.last.h2d_s = now - self.stats.t_before_transfer
                images = self.augment_on_device(batch)
                self.stats.train_batches += 1
            else:
                images = batch["images"]
            batch = self._batch_level_ops(images, batch["targets"], train)
        module = self._user_module()
        if module is not None and is_overridden("on_after_batch_transfer", module):
            batch = module.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"ratio": self.router.ratio, "step": self.stats.train_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.router.ratio = float(state_dict.get("ratio", self.router.ratio))
        self.stats.train_batches = int(state_dict.get("step", 0))
