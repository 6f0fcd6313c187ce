"""The worker half of the pipeline: what runs in each DataLoader worker process.

For a training batch (a :class:`~ff_lightning.pipeline.batch.RoutedBatch` from the sampler):
decode every sample, crop/resize and flip them to a fixed size, draw the whole batch's policy
parameters in one call from ``(seed, epoch, index)``, choose the device share (the costliest
samples, from those parameters), augment the CPU share with ONE batched ``apply_batch`` call,
and return the collated batch with its :class:`~ff_lightning.pipeline.batch.BatchRoute`.
Per-sample Python work is what made a CPU route slower than torchvision's PIL path; here the
only per-sample steps are the decode and one PIL resize.

With ``device_decode`` on (a source that reads encoded files), every sample's file is read as
bytes and its header parsed; the device-routed baseline JPEGs leave the worker undecoded (an
:class:`~ff_lightning.pipeline.batch.EncodedBatch` in the route record), the CPU-routed ones
are decoded with torchvision's decoder and cropped with the same tensor kernel the device
uses, and every other file (PNG, CMYK, progressive JPEG, ...) is decoded by the source with
PIL whatever its route. The device share is then the largest files (the costliest to
decode), and the decode of the CPU share is stamped as CPU-route work.

Validation samples are only resized and centre-cropped.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.v2 import functional as TF

from ff_lightning.errors import CorruptImageError
from ff_lightning.pipeline.batch import (
    BatchRoute,
    EncodedBatch,
    RawBatch,
    RoutedBatch,
    StepStats,
    by_value,
    from_value,
)
from ff_lightning.pipeline.jpeg import JpegHeader, decode_jpegs, jpeg_header
from ff_lightning.pipeline.worker.geometry import (
    crop_boxes,
    crop_into,
    eval_geometry,
    flip_flags,
    oriented_size,
    place_decoded,
    size_of,
)
from ff_lightning.pipeline.worker.items import class_index, load_sample
from ff_lightning.pipeline.worker.steps import (
    WorkerGeometry,
    WorkerTransforms,
    apply_cpu_share,
    geometry_batch,
    run_user_transforms,
    user_image,
)

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
        device_decode: bool = False,
        channels: int = 3,
        image_key: str | None = None,
        label_key: str | None = None,
        geometry: WorkerGeometry | None = None,
        prefix: WorkerTransforms | None = None,
    ) -> None:
        from ff_lightning.sources.decoding import reads_encoded_files

        if geometry is None:  # the keyword form
            geometry = WorkerGeometry(
                size=image_size,
                crop_scale=tuple(crop_scale),  # type: ignore[arg-type]
                crop_ratio=tuple(crop_ratio),  # type: ignore[arg-type]
                hflip=hflip,
                val_crop_fraction=val_crop_fraction,
                channels=channels,
                device_decode=device_decode,
            )
        self.geometry, self.prefix = geometry, prefix
        self.source = source
        self.channels = geometry.channels
        self.image_key, self.label_key = image_key, label_key
        # Only a source that hands out its files' bytes can leave samples encoded, and only the
        # batched random resized crop has the device's decode-and-crop twin.
        self.device_decode = (
            bool(geometry.device_decode)
            and train
            and geometry.fast
            and prefix is None
            and reads_encoded_files(source)
        )
        self.train = train
        self.image_size = geometry.size
        self.policy = policy
        self.seed = seed
        self.crop_scale = geometry.crop_scale
        self.crop_ratio = geometry.crop_ratio
        self.hflip = geometry.flip_p > 0
        self.val_crop_fraction = geometry.val_crop_fraction

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def _load(self, index: int) -> tuple[Any, int]:
        return load_sample(
            self.source, index, self.channels, image_key=self.image_key, label_key=self.label_key
        )

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
        geo = self.geometry
        for index in indices:
            image, target = self._load(index)
            if self.prefix is not None:  # the user's own evaluation transforms, as written
                out = run_user_transforms(
                    self.prefix.transforms, image, seed=self.seed, epoch=0, index=index
                )
                images.append(self._user_image(out, index))
            else:
                images.append(
                    eval_geometry(
                        image,
                        size=self.image_size,
                        crop_fraction=self.val_crop_fraction,
                        resize_to=geo.val_resize_to,
                        interpolation=geo.val_interpolation,
                    )
                )
            targets.append(target)
        return RawBatch(images=torch.stack(images), targets=torch.tensor(targets, dtype=torch.long))

    def _geometry_batch(self, loaded: list[Any], indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """Every loaded image through the worker's geometry (or the user's own transforms)."""
        return geometry_batch(
            loaded, indices, epoch, geometry=self.geometry, prefix=self.prefix, seed=self.seed
        )

    def _user_image(self, image: Any, index: int) -> torch.Tensor:
        return user_image(image, index, self.geometry)

    def _train_batch(self, rb: RoutedBatch) -> dict[str, Any]:
        if self.device_decode:
            return self._train_batch_encoded(rb)
        # thread_time: CPU seconds of this thread only, right in a worker process and with
        # num_workers=0 alike (the main process has other threads).
        t0 = time.thread_time()
        loaded = [self._load(i) for i in rb.indices]
        indices = torch.tensor(rb.indices, dtype=torch.long)
        images = self._geometry_batch([im for im, _ in loaded], indices, rb.epoch)
        targets = torch.tensor([t for _, t in loaded], dtype=torch.long)
        t1 = time.thread_time()
        # Parameters depend on (seed, epoch, index) only: one draw for the whole batch, before
        # the route is known, so the route cannot change them.
        params = self.policy.sample(indices, rb.epoch, self.seed)
        cost = self.policy.estimate_cost(params) if rb.strategy == "costliest" else None
        device_index = rb.device_positions(cost)
        images = self._augment_cpu_share(images, params, device_index)
        t2 = time.thread_time()
        return self._finish(rb, indices, images, targets, params, device_index, t1 - t0, t2 - t1)

    def _augment_cpu_share(
        self, images: torch.Tensor, params: Any, device_index: torch.Tensor
    ) -> torch.Tensor:
        """ONE batched ``apply_batch`` over the samples not at ``device_index``."""
        return apply_cpu_share(self.policy, images, params, device_index)

    def _finish(
        self,
        rb: RoutedBatch,
        indices: torch.Tensor,
        images: torch.Tensor,
        targets: torch.Tensor,
        params: Any,
        device_index: torch.Tensor,
        prep_s: float,
        cpu_aug_s: float,
        encoded: EncodedBatch | None = None,
    ) -> dict[str, Any]:
        b, k = len(rb), int(device_index.numel())
        stats = StepStats(
            batch_size=b,
            n_device=k,
            cpu_aug_s=cpu_aug_s,
            n_cpu=b - k,
            prep_s=prep_s,
            ratio=rb.ratio,
        )
        dev_params = params[device_index] if k else None
        route = BatchRoute(indices, rb.epoch, device_index, dev_params, stats, encoded)
        return RawBatch(images=images, targets=targets, route=route)

    # ------------------------------------------------------------ device decode
    def _read(self, index: int) -> tuple[bytes | None, JpegHeader | None, Any, int]:
        """``(bytes, header, None, target)`` for a device-decodable JPEG, else ``(bytes or
        None, None, decoded image, target)`` (decoded by the source, with its ``on_error``)."""
        try:
            data, target = self.source.encoded(index)
        except CorruptImageError:
            image, target = self._load(index)  # the source's on_error decides
            return None, None, image, target
        head = jpeg_header(data)
        if head is not None and head.device_decodable:
            return data, head, None, self._target(index, target)
        image, target = self._load(index)
        return data, None, image, target

    def _target(self, index: int, target: Any) -> int:
        return class_index(index, target)

    def _train_batch_encoded(self, rb: RoutedBatch) -> dict[str, Any]:
        t0 = time.thread_time()
        size = self.image_size
        idx = list(rb.indices)
        b = len(idx)
        indices = torch.tensor(idx, dtype=torch.long)
        read = [self._read(i) for i in idx]
        targets = torch.tensor([r[3] for r in read], dtype=torch.long)
        sizes = [
            oriented_size(h.height, h.width, h.orientation) if h is not None else size_of(im)
            for _, h, im, _ in read
        ]
        crop = (self.seed, rb.epoch, tuple(self.crop_scale), tuple(self.crop_ratio))
        boxes = crop_boxes(
            sizes, seed=self.seed, epoch=rb.epoch, indices=indices, scale=crop[2], ratio=crop[3]
        )
        flips = (
            flip_flags(self.seed, rb.epoch, indices, self.geometry.flip_p)
            if self.hflip
            else torch.zeros(b, dtype=torch.bool)
        )
        params = self.policy.sample(indices, rb.epoch, self.seed)
        # Costliest first by encoded size: the largest files cost the most to decode.
        cost = (
            torch.tensor([len(r[0]) if r[0] is not None else 0 for r in read], dtype=torch.float64)
            if rb.strategy == "costliest"
            else None
        )
        device_index = rb.device_positions(cost)
        on_device = torch.zeros(b, dtype=torch.bool)
        on_device[device_index] = True
        images = torch.zeros(b, 3, size, size, dtype=torch.uint8)
        # Files the source decoded (not device-decodable): cropped here, whatever their route.
        pil = [p for p in range(b) if read[p][1] is None]
        crop_into(images, pil, [read[p][2] for p in pil], [boxes[p] for p in pil])
        self._flip(images, [p for p in pil if flips[p]])
        t1 = time.thread_time()
        # CPU-routed JPEGs: torchvision's decoder and the device route's kernel.
        cpu_jpeg = [p for p in range(b) if read[p][1] is not None and not on_device[p]]
        decoded = decode_jpegs(
            [torch.frombuffer(bytearray(read[p][0]), dtype=torch.uint8) for p in cpu_jpeg], "cpu"
        )
        for p, img in zip(cpu_jpeg, decoded, strict=True):
            head = read[p][1]
            orientation, box = head.orientation, boxes[p]
            if img is None or tuple(img.shape) != (3, head.height, head.width):
                # torchvision cannot decode it: the source decodes it (PIL, with its
                # on_error), and the same tensor kernel crops it, as on the device route.
                image, target = self._load(idx[p])
                targets[p] = target
                img = image if isinstance(image, torch.Tensor) else TF.pil_to_tensor(image)
                orientation = 1  # the source's image is upright already
                if size_of(img) != sizes[p]:  # a replacement sample (on_error="skip")
                    box = crop_boxes(
                        [size_of(img)],
                        seed=self.seed,
                        epoch=rb.epoch,
                        indices=[idx[p]],
                        scale=crop[2],
                        ratio=crop[3],
                    )[0]
            images[p] = place_decoded(img, orientation, box, size, bool(flips[p]))
        dev_jpeg = [p for p in device_index.tolist() if read[p][1] is not None]
        # Device-routed files that are not baseline JPEGs were decoded above: the device stage
        # counts them (decode_fallbacks) and logs the first in the main process.
        fallbacks = int(on_device.sum()) - len(dev_jpeg)
        encoded = EncodedBatch.build(
            positions=dev_jpeg,
            indices=[idx[p] for p in dev_jpeg],
            files=[read[p][0] for p in dev_jpeg],
            headers=[read[p][1] for p in dev_jpeg],
            boxes=[boxes[p] for p in dev_jpeg],
            flips=[bool(flips[p]) for p in dev_jpeg],
            size=size,
            crop=crop,
            fallbacks=fallbacks,
        )
        images = self._augment_cpu_share(images, params, device_index)
        t2 = time.thread_time()
        return self._finish(
            rb, indices, images, targets, params, device_index, t1 - t0, t2 - t1, encoded
        )

    @staticmethod
    def _flip(images: torch.Tensor, positions: list[int]) -> None:
        if positions:
            pos = torch.tensor(positions)
            images[pos] = images[pos].flip(-1)


def collate_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn``: the dataset already returns whole batches. In a worker
    process the batch leaves as a :class:`_WorkerBatch` (small tensors by value)."""
    if isinstance(batch, dict) and get_worker_info() is not None:
        return _WorkerBatch(batch)
    return batch


class _WorkerBatch(dict):
    """A batch on its way out of a DataLoader worker: it arrives as a plain ``dict``, its small
    tensors (the targets) sent by value (:func:`~ff_lightning.pipeline.batch.by_value`)."""

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return (_plain_batch, ({k: by_value(v) for k, v in self.items()},))


def _plain_batch(items: dict[str, Any]) -> dict[str, Any]:
    return RawBatch((k, from_value(v)) for k, v in items.items())


def worker_init(worker_id: int) -> None:
    # glibc raises its mmap threshold after a large block is freed; without this, every
    # per-image temporary in a fresh worker is a fresh mmap + page faults (measured up to
    # several times slower per image). One large allocation at start-up settles it.
    buf = torch.empty(16 << 20, dtype=torch.uint8)
    del buf
