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
  decoded on the host. nvJPEG's allocation failures (``RuntimeError``s) count as running out
  of memory (``ff_lightning.pipeline.jpeg.is_allocation_failure``), not as bad files.

**Streams (CUDA).** torchvision's decoder writes its outputs without waiting for the work
queued on the caller's stream (pytorch/vision #9606), so memory the caching allocator hands
it may still be read by that work. The decode therefore runs with a side stream current: its
outputs come from that stream's pool, where no block the training stream freed can be; the
training stream then waits for the side stream on the device (``wait_stream``, no host wait)
and each decoded image is marked as used there (``record_stream``), so its block is not
reused before the training stream is done with it. The host waits only for the decode itself
(torchvision synchronises its own stream), never for the training stream. ``drain_stream=True``
restores the old workaround (draining the current stream before each chunk).

**Placement.** On the device the decoded images are placed in a few batched steps: each
sample's crop is a view of its decoded image (the EXIF transposition a view too), resized in
float32 (two kernels per sample), then the whole chunk is rounded, converted and flipped
(EXIF flips and the random flip, as two batched selects) at once. The host route keeps
:func:`~ff_lightning.pipeline.worker.geometry.place_decoded` per sample.
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

__all__ = ["DECODE_ESTIMATE_FACTOR", "ORIENTATIONS", "DeviceDecoder", "decode_jpegs", "stored_crop"]

log = logging.getLogger("ff_lightning")

#: Working memory per sample before a measurement, in units of the decode buffer ``H*W*3``:
#: the decoded image (on CPU also its oriented copy), the float32 copy of its crop while it is
#: resized (one sample at a time on the device) and the resized rows.
DECODE_ESTIMATE_FACTOR = 3.0


# EXIF orientation -> (transpose, flip rows, flip columns): the oriented image is the stored
# one transposed (or not), then flipped, as ``geometry.orient`` computes it.
ORIENTATIONS: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}


def stored_crop(
    image: Tensor, orientation: int, box: list[int]
) -> tuple[Tensor | None, bool, bool]:
    """The crop ``box`` of the oriented ``image`` as a view of the stored image (transposed
    when the orientation transposes), and the flips ``(rows, columns)`` that remain to be
    applied to it (after a resize: flips commute with it). ``None`` when the box is not
    inside the image (torchvision pads such a crop)."""
    transpose, fv, fh = ORIENTATIONS.get(int(orientation), (False, False, False))
    top, left, h, w = (int(v) for v in box)
    a = image.transpose(-2, -1) if transpose else image
    height, width = int(a.shape[-2]), int(a.shape[-1])
    if top < 0 or left < 0 or h <= 0 or w <= 0 or top + h > height or left + w > width:
        return None, False, False
    # A crop of the flipped image is the flipped crop of the mirrored box.
    r0 = height - top - h if fv else top
    c0 = width - left - w if fh else left
    return a[:, r0 : r0 + h, c0 : c0 + w], fv, fh


def _resize_float(view: Tensor, size: int) -> Tensor:
    """float32 ``[3, S, S]``: antialiased bilinear resize of a uint8 ``[3, h, w]`` view, as
    torchvision resizes uint8 images off the CPU (float32, rounded by the caller)."""
    x = view.to(torch.float32)
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.nn.functional.interpolate(
        x.unsqueeze(0), size=[size, size], mode="bilinear", align_corners=False, antialias=True
    )[0]


class DeviceDecoder:
    """Decodes the encoded share of each batch into its slots (see the module docstring).

    Args:
        source: the training source, for files that neither the device nor PIL can decode
            (``source[index]`` follows its ``on_error``); ``None``: such a file raises
            :class:`~ff_lightning.errors.CorruptImageError`.
        logger: where the first fallback of each kind is logged.
    """

    def __init__(
        self,
        source: Any = None,
        logger: logging.Logger | None = None,
        *,
        drain_stream: bool = False,
    ) -> None:
        self.source = source
        self.logger = logger or log
        #: drain the current CUDA stream before each chunk instead of decoding on a side
        #: stream (the workaround this module used before; see the module docstring)
        self.drain_stream = bool(drain_stream)
        self._side: dict[torch.device, Any] = {}  # the decode stream of each CUDA device
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
        # The guard chunks this shape-only placeholder (never written: one chunk's result is
        # returned as it is, several fill a buffer the guard allocates).
        slots = torch.empty((m, 3, enc.size, enc.size), dtype=torch.uint8, device=images.device)
        out = guard.run(
            self._decode_chunk,
            slots,
            enc,
            self._decode_chunk,  # the guard's last resort: the same steps on the host
            total=int(images.shape[0]),  # its ratio cap is then a share of the whole batch
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
        decoded = self._decode(files, dev)
        if dev.type != "cpu":
            return self._place_batch(decoded, enc, dev)
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

    def _decode(self, files: list[Tensor], dev: torch.device) -> list[Tensor | None]:
        """The batched decode, on a side stream on CUDA (see the module docstring)."""
        if dev.type != "cuda" or self.drain_stream:
            return decode_jpegs(files, dev, drain=self.drain_stream)
        main = torch.cuda.current_stream(dev)
        side = self._side.get(dev)
        if side is None:
            side = self._side[dev] = torch.cuda.Stream(device=dev)
        with torch.cuda.stream(side):
            decoded = decode_jpegs(files, dev, drain=False)
        # ORDERING, NOT A SYNCHRONISATION: the training stream waits for the decode on the
        # device; the host goes on.
        main.wait_stream(side)
        for img in decoded:
            if img is not None:
                # Freed later on the host, the block must outlive the training stream's use.
                img.record_stream(main)
        return decoded

    def _place_batch(
        self, decoded: list[Tensor | None], enc: EncodedBatch, dev: torch.device
    ) -> Tensor:
        """Orient, crop, resize and flip the chunk's decoded images in batched steps: uint8
        ``[m, 3, S, S]`` on ``dev`` (see the module docstring)."""
        size, m = enc.size, len(decoded)
        rows: list[Tensor] = []
        flips = torch.zeros(m, 2, dtype=torch.bool)  # host: (vertical, horizontal) per sample
        sizes, boxes = enc.sizes.tolist(), enc.boxes.tolist()  # host records
        orientation, flip = enc.orientation.tolist(), enc.flips.tolist()
        for j, img in enumerate(decoded):
            (h, w), box = sizes[j], boxes[j]
            view = None
            if img is not None and tuple(img.shape) == (3, h, w):
                view, fv, fh = stored_crop(img, orientation[j], box)
            if view is None:  # undecodable, or a box beyond the image: placed one by one
                if img is None or tuple(img.shape) != (3, h, w):
                    placed = self._host_fallback(enc, j, dev, flip[j])
                else:
                    placed = place_decoded(img, orientation[j], box, size, flip[j])
                rows.append(placed.to(torch.float32))
                continue
            flips[j, 0], flips[j, 1] = fv, fh != flip[j]
            rows.append(_resize_float(view, size))
        # Rounded as torchvision rounds a float resize of uint8 images, then converted.
        out = torch.stack(rows).round_().to(torch.uint8)
        if bool(flips.any()):  # host flags: no synchronisation
            mask = h2d(flips, dev)  # one pinned copy for both axes
            for axis, dim in ((0, -2), (1, -1)):
                if bool(flips[:, axis].any()):
                    out = torch.where(mask[:, axis].view(m, 1, 1, 1), out.flip(dim), out)
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
