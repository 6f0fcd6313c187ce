"""The worker half of the pipeline: what runs in each DataLoader worker process.

For a training batch (a :class:`~ff_lightning.routing.sampler.RoutedBatch` from the sampler):
decode every sample, crop/resize and flip them to a fixed size, draw the whole batch's policy
parameters in one call from ``(seed, epoch, index)``, choose the device share (the costliest
samples, from those parameters), augment the CPU share with ONE batched ``apply_batch`` call,
and return the collated batch with its :class:`~ff_lightning.worker.record.BatchRoute`.
Per-sample Python work is what made a CPU route slower than torchvision's PIL path; here the
only per-sample steps are the decode and one PIL resize.

Validation samples are only resized and centre-cropped.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset

from ff_lightning.control.controller import StepStats
from ff_lightning.routing.sampler import RoutedBatch
from ff_lightning.worker.geometry import eval_geometry, to_uint8_chw, train_geometry_batch
from ff_lightning.worker.record import BatchRoute

__all__ = ["AugmentingDataset", "collate_batch", "worker_init"]


class AugmentingDataset(Dataset):
    """Wraps a map-style dataset; runs the worker half of the pipeline one batch at a time.

    Items of ``source`` are ``(image, target)`` with the image a PIL image or a uint8
    ``[C, H, W]`` tensor. The DataLoader hands :meth:`__getitems__` a whole batch of keys (a
    :class:`RoutedBatch` in ``train`` mode, a list of indices otherwise), and it returns the
    collated batch, so the DataLoader's ``collate_fn`` is :func:`collate_batch` (a pass-through).
    """

    def __init__(
        self,
        source: Dataset,
        *,
        train: bool,
        image_size: int,
        policy: Any = None,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        val_crop_fraction: float = 0.875,
    ) -> None:
        self.source = source
        self.train = train
        self.image_size = image_size
        self.policy = policy
        self.seed = seed
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.hflip = hflip
        self.val_crop_fraction = val_crop_fraction

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def _load(self, index: int) -> tuple[Any, int]:
        item = self.source[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(
                f"dataset item {index} must be a pair (image, int target), got {type(item).__name__}"
            )
        image, target = item[0], item[1]
        if isinstance(target, torch.Tensor):
            target = int(target.item())
        return to_uint8_chw(image), int(target)

    def __getitem__(self, key: RoutedBatch | int) -> dict[str, Any]:
        if isinstance(key, RoutedBatch):
            return self._train_batch(key)
        return self.__getitems__([key])

    def __getitems__(self, keys: RoutedBatch | list[int]) -> dict[str, Any]:
        if isinstance(keys, RoutedBatch):
            return self._train_batch(keys)
        if self.train:
            # A plain batch of indices (e.g. a user's own sampler): all on the CPU route, epoch 0.
            keys = RoutedBatch(tuple(int(k) for k in keys), 0, 0.0, 0)
            return self._train_batch(keys)
        return self._eval_batch([int(k) for k in keys])

    def _eval_batch(self, indices: list[int]) -> dict[str, Any]:
        images, targets = [], []
        for index in indices:
            image, target = self._load(index)
            images.append(
                eval_geometry(image, size=self.image_size, crop_fraction=self.val_crop_fraction)
            )
            targets.append(target)
        return {"images": torch.stack(images), "targets": torch.tensor(targets, dtype=torch.long)}

    def _train_batch(self, rb: RoutedBatch) -> dict[str, Any]:
        # thread_time: CPU seconds of this thread only, right in a worker process and with
        # num_workers=0 alike (the main process has other threads).
        t0 = time.thread_time()
        loaded = [self._load(i) for i in rb.indices]
        indices = torch.tensor(rb.indices, dtype=torch.long)
        images = train_geometry_batch(
            [im for im, _ in loaded],
            size=self.image_size,
            seed=self.seed,
            epoch=rb.epoch,
            indices=indices,
            scale=self.crop_scale,
            ratio=self.crop_ratio,
            hflip=self.hflip,
        )
        targets = torch.tensor([t for _, t in loaded], dtype=torch.long)
        t1 = time.thread_time()
        # Parameters depend on (seed, epoch, index) only: one draw for the whole batch, before
        # the route is known, so the route cannot change them.
        params = self.policy.sample(indices, rb.epoch, self.seed)
        cost = self.policy.estimate_cost(params) if rb.strategy == "costliest" else None
        device_index = rb.device_positions(cost)
        b, k = len(rb), int(device_index.numel())
        if k < b:
            if k == 0:
                images = self.policy.apply_batch(images, params)
            else:
                keep = torch.ones(b, dtype=torch.bool)
                keep[device_index] = False
                cpu_index = keep.nonzero().squeeze(1)
                images[cpu_index] = self.policy.apply_batch(images[cpu_index], params[cpu_index])
        t2 = time.thread_time()
        stats = StepStats(
            batch_size=b,
            n_device=k,
            data_wait_s=0.0,
            step_s=0.0,
            cpu_aug_s=t2 - t1,
            n_cpu=b - k,
            prep_s=t1 - t0,
            ratio=rb.ratio,
        )
        dev_params = params[device_index] if k else None
        route = BatchRoute(indices, rb.epoch, device_index, dev_params, stats)
        return {"images": images, "targets": targets, "route": route}


def collate_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn``: the dataset already returns whole batches."""
    return batch


def worker_init(worker_id: int) -> None:
    # glibc raises its mmap threshold after a large block is freed; without this, every
    # per-image temporary in a fresh worker is a fresh mmap + page faults (measured up to
    # several times slower per image). One large allocation at start-up settles it.
    buf = torch.empty(16 << 20, dtype=torch.uint8)
    del buf
