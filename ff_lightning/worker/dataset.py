"""The worker half of the pipeline: what runs in each DataLoader worker process.

For every sample: decode, random-resized-crop + flip to a fixed size, draw the policy
parameters from ``(seed, epoch, index)``, and apply them on the CPU when the sample is routed
``cpu``; then collate uint8 images, targets, the device mask and positions, the parameters and
the CPU seconds spent. Validation samples are only resized and centre-cropped.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset

from ff_lightning.routing.sampler import RoutedIndex
from ff_lightning.worker.geometry import eval_geometry, to_uint8_chw, train_geometry


class AugmentingDataset(Dataset):
    """Wraps a map-style dataset; runs the worker half of the pipeline.

    Items are ``(image, target)`` with the image a PIL image or a uint8 ``[C, H, W]`` tensor.
    In ``train`` mode indices are :class:`RoutedIndex` tuples from the routed batch sampler.
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

    def __getitem__(self, key: RoutedIndex | int) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[RoutedIndex | int]) -> list[dict[str, Any]]:
        if not self.train:
            out = []
            for key in keys:
                index = key.index if isinstance(key, RoutedIndex) else int(key)
                image, target = self._load(index)
                out.append(
                    {
                        "images": eval_geometry(
                            image, size=self.image_size, crop_fraction=self.val_crop_fraction
                        ),
                        "targets": target,
                    }
                )
            return out

        routed = [k if isinstance(k, RoutedIndex) else RoutedIndex(int(k), False, 0) for k in keys]
        # Parameters depend on (seed, epoch, index) only; draw the whole batch's at once.
        indices = torch.tensor([k.index for k in routed], dtype=torch.long)
        epoch = routed[0].epoch
        same_epoch = all(k.epoch == epoch for k in routed)
        out = []
        if same_epoch:
            params = self.policy.sample(indices, epoch, self.seed)
        for j, key in enumerate(routed):
            # thread_time: CPU seconds of this thread only, right in a worker process and with
            # num_workers=0 alike (the main process has other threads).
            t0 = time.thread_time()
            image, target = self._load(key.index)
            image = train_geometry(
                image,
                size=self.image_size,
                seed=self.seed,
                epoch=key.epoch,
                index=key.index,
                scale=self.crop_scale,
                ratio=self.crop_ratio,
                hflip=self.hflip,
            )
            p = (
                params[j]
                if same_epoch
                else self.policy.sample(indices[j : j + 1], key.epoch, self.seed)
            )
            t1 = time.thread_time()
            if not key.on_device:
                image = self.policy.apply_one(image, p)
            t2 = time.thread_time()
            out.append(
                {
                    "images": image,
                    "targets": target,
                    "on_device": key.on_device,
                    "params": p,
                    "index": key.index,
                    "prep_s": t1 - t0,
                    "cpu_aug_s": t2 - t1,
                    "ratio": key.ratio,
                }
            )
        return out


def worker_init(worker_id: int) -> None:
    # glibc raises its mmap threshold after a large block is freed; without this, every
    # per-image temporary in a fresh worker is a fresh mmap + page faults (measured up to
    # several times slower per image). One large allocation at start-up settles it.
    buf = torch.empty(16 << 20, dtype=torch.uint8)
    del buf


def fusion_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate worker samples into one batch dict (uint8 images, targets, mask, params, times)."""
    batch: dict[str, Any] = {
        "images": torch.stack([s["images"] for s in samples]),
        "targets": torch.tensor([s["targets"] for s in samples], dtype=torch.long),
    }
    if samples and "params" in samples[0]:
        params = [s["params"] for s in samples]
        flags = [s["on_device"] for s in samples]
        batch["params"] = type(params[0]).cat(params)
        batch["device_mask"] = torch.tensor(flags, dtype=torch.bool)
        # Positions of the device share, computed here so that the DataLoader pins them and
        # the hook never has to read a device tensor back (nonzero() on CUDA would sync).
        batch["device_index"] = torch.tensor(
            [i for i, f in enumerate(flags) if f], dtype=torch.long
        )
        batch["indices"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        # Plain floats: Lightning leaves them on the host, so reading them costs no sync.
        batch["cpu_aug_s"] = float(sum(s["cpu_aug_s"] for s in samples))
        batch["prep_s"] = float(sum(s["prep_s"] for s in samples))
        batch["ratio"] = float(samples[0]["ratio"])
    return batch
