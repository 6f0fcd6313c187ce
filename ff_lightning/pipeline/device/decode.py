"""Decoding on the device: the JPEG share of a batch, decoded in one batched call per chunk.

:class:`DeviceDecoder` turns an :class:`~ff_lightning.pipeline.batch.EncodedBatch` into the
cropped, resized and flipped uint8 slots of the batch, on the batch's device (CUDA: nvJPEG
through ``torchvision.io.decode_jpeg(list, device=...)``; CPU: torchvision's CPU decoder on
the list, in the main process). Each decoded image goes through the very kernel the worker
uses for the JPEGs of its CPU share (:func:`~ff_lightning.pipeline.worker.geometry.place_decoded`), so
the route does not change the sample beyond the decoders' rounding.

Nothing is lost:

- a chunk whose batched call fails is decoded again item by item, so one bad file does not
  fail the others;
- an item the device cannot decode is decoded by PIL on the host (logged once, counted in
  :attr:`DeviceDecoder.fallbacks`, which the stage exposes as ``decode_fallbacks``);
- a file PIL cannot decode either follows the source's ``on_error``: ``source[index]``
  raises, or returns the next decodable sample, exactly as the worker route does;
- the memory guard chunks the call, budgeting each sample's decode buffer at full source
  resolution (``H * W * 3`` bytes from the header), so a batch of large images is split
  instead of running out of memory; a chunk that still runs out is halved, and at the end
  decoded on the host.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ff_lightning.augment._device import h2d
from ff_lightning.errors import CorruptImageError
from ff_lightning.pipeline.batch import EncodedBatch
from ff_lightning.pipeline.jpeg import decode_jpegs
from ff_lightning.pipeline.worker.geometry import crop_boxes, place_decoded, to_uint8_chw

__all__ = ["DECODE_ESTIMATE_FACTOR", "DeviceDecoder", "decode_jpegs"]

log = logging.getLogger("ff_lightning")

#: Working memory per sample before a measurement, in units of the decode buffer ``H*W*3``:
#: the decoded image, its oriented copy, and the crop/resize temporaries.
DECODE_ESTIMATE_FACTOR = 3.0


class DeviceDecoder:
    """Decodes the encoded share of each batch into its slots (see the module docstring).

    Args:
        source: the training source, for files that neither the device nor PIL can decode
            (``source[index]`` follows its ``on_error``); ``None``: such a file raises
            :class:`~ff_lightning.errors.CorruptImageError`.
        logger: where the first fallback of each kind is logged.
    """

    def __init__(self, source: Any = None, logger: logging.Logger | None = None) -> None:
        self.source = source
        self.logger = logger or log
        self.fallbacks = 0  # samples routed to device decode that were decoded on the host
        self.decoded = 0  # samples decoded by the device decoder
        self._logged: set[str] = set()
        self._targets: dict[int, int] = {}  # batch position -> target of a replacement sample
        self._crop: tuple[int, int, tuple[float, float], tuple[float, float]] | None = None

    def decode_into(
        self,
        images: Tensor,
        targets: Tensor,
        enc: EncodedBatch,
        guard: Any,
    ) -> None:
        """Decode ``enc`` into ``images[enc.positions]`` (uint8, on ``images``' device);
        ``targets[pos]`` changes only where a corrupt file was replaced (``on_error="skip"``)."""
        if enc.fallbacks:
            self.fallbacks += enc.fallbacks
            self._log_once(
                "worker",
                "ff_lightning: %d device-routed sample(s) were not baseline JPEGs (PNG, WebP, "
                "CMYK or progressive JPEG, ...) and were decoded by the workers instead; "
                "counted in fusionflow/decode_fallbacks (logged once)",
                enc.fallbacks,
            )
        m = len(enc)
        if m == 0:
            return
        self._targets.clear()
        self._crop = enc.crop
        slots = torch.empty((m, 3, enc.size, enc.size), dtype=torch.uint8, device=images.device)
        out = guard.run(
            self._decode_chunk,
            slots,
            enc,
            self._decode_chunk,  # the guard's last resort: the same steps on the host
            total=int(images.shape[0]),  # its ratio cap is then a share of the whole batch
            out=slots,
            sample_bytes_hint=enc.decoded_bytes(),
        )
        images.index_copy_(0, h2d(enc.positions, images.device), out)
        self.decoded += m
        for pos, target in self._targets.items():
            targets[pos] = target  # rare path (a skipped corrupt file): a small copy

    # ------------------------------------------------------------------ internals
    def _decode_chunk(self, slots: Tensor, enc: EncodedBatch) -> Tensor:
        dev = slots.device
        files = [enc.file(j) for j in range(len(enc))]
        decoded = decode_jpegs(files, dev)
        out = torch.empty_like(slots)
        for j, img in enumerate(decoded):
            h, w = int(enc.sizes[j, 0]), int(enc.sizes[j, 1])
            box = enc.boxes[j].tolist()
            flip = bool(enc.flips[j])
            if img is None or tuple(img.shape) != (3, h, w):
                out[j] = self._host_fallback(enc, j, dev, flip)
                continue
            out[j] = place_decoded(img, int(enc.orientation[j]), box, enc.size, flip)
        return out

    def _host_fallback(self, enc: EncodedBatch, j: int, dev: torch.device, flip: bool) -> Tensor:
        """PIL on the host for a file the device could not decode; then the source's ``on_error``."""
        from ff_lightning.sources.decoding import decode_bytes

        index = int(enc.indices[j])
        name = self._name(index)
        self.fallbacks += 1
        try:
            image = TF.pil_to_tensor(decode_bytes(enc.file(j).numpy().tobytes(), name))
            box = enc.boxes[j].tolist()
            if tuple(image.shape[-2:]) != self._oriented_size(enc, j):
                box = self._box(image, index)
            self._log_once(
                "pil",
                "ff_lightning: the device could not decode %s; decoded it with PIL on the host "
                "instead (further fallbacks are counted in fusionflow/decode_fallbacks, not "
                "logged)",
                name,
            )
        except CorruptImageError:
            if self.source is None:
                raise
            item = self.source[index]  # raises or skips, as the source's `on_error` says
            image, target = to_uint8_chw(item[0]), int(item[1])
            if not isinstance(image, Tensor):
                image = TF.pil_to_tensor(image)
            box = self._box(image, index)
            self._targets[int(enc.positions[j])] = target
        return place_decoded(image.to(dev), 1, box, enc.size, flip)

    @staticmethod
    def _oriented_size(enc: EncodedBatch, j: int) -> tuple[int, int]:
        h, w = int(enc.sizes[j, 0]), int(enc.sizes[j, 1])
        return (w, h) if int(enc.orientation[j]) in (5, 6, 7, 8) else (h, w)

    def _box(self, image: Tensor, index: int) -> list[int]:
        assert self._crop is not None
        seed, epoch, scale, ratio = self._crop
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return list(
            crop_boxes([size], seed=seed, epoch=epoch, indices=[index], scale=scale, ratio=ratio)[0]
        )

    def _name(self, index: int) -> str:
        path = getattr(self.source, "path", None)
        if callable(path):
            try:
                return str(path(index))
            except Exception:
                pass
        return f"sample {index}"

    def _log_once(self, kind: str, msg: str, *args: Any) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            self.logger.warning(msg, *args)

    def state(self) -> dict[str, int]:
        return {"decode_fallbacks": self.fallbacks, "decoded": self.decoded}
