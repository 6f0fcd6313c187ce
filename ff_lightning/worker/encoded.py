"""Samples that leave the worker still encoded: the JPEG header probe and the batch record.

With ``device_decode`` on, a device-routed sample whose file is a baseline JPEG is not decoded
in the worker. The worker reads its bytes, parses the header (size, components, EXIF
orientation; no pixel is decoded), draws its crop box and flip as for any sample, and ships
the bytes with those facts in an :class:`EncodedBatch`; the device stage decodes the whole
share in one batched call per chunk (:mod:`ff_lightning.device.decode`).

:func:`jpeg_header` is a plain marker scan: it reads the segment headers up to the frame
header (SOF) and the orientation tag of an EXIF ``APP1`` segment, a few dozen bytes of
Python work per file.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["EncodedBatch", "JpegHeader", "jpeg_header"]

_SOF_BASELINE = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
# Every other frame type (progressive C2, lossless C3, arithmetic C9-CB, hierarchical ...).
_SOF_OTHER = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """What the header of a JPEG file says, read without decoding it.

    Attributes:
        height, width: the stored size (before the EXIF orientation is applied).
        components: colour components (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK).
        baseline: a sequential Huffman-coded frame (SOF0/SOF1) of 8-bit samples.
        orientation: the EXIF orientation tag (1-8; 1 when absent or invalid).
    """

    height: int
    width: int
    components: int
    baseline: bool
    orientation: int = 1

    @property
    def device_decodable(self) -> bool:
        """Whether the device decoder takes it: baseline, 8 bits, grey or colour (not CMYK)."""
        return self.baseline and self.components in (1, 3) and self.height > 0 and self.width > 0


def _exif_orientation(segment: bytes) -> int:
    """The orientation tag of an ``APP1`` payload starting with ``Exif\\0\\0`` (1 if absent)."""
    tiff = segment[6:]
    if len(tiff) < 8:
        return 1
    if tiff[:2] == b"II":
        end = "<"
    elif tiff[:2] == b"MM":
        end = ">"
    else:
        return 1
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            break
        tag, kind = struct.unpack_from(end + "HH", tiff, at)
        if tag == _EXIF_ORIENTATION:
            if kind == 3:  # SHORT
                (value,) = struct.unpack_from(end + "H", tiff, at + 8)
            elif kind == 4:  # LONG
                (value,) = struct.unpack_from(end + "I", tiff, at + 8)
            else:
                return 1
            return int(value) if 1 <= value <= 8 else 1
    return 1


def jpeg_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """Parse a JPEG file's header; ``None`` when ``data`` is not a JPEG (or is truncated
    before its frame header)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i, n = 2, len(data)
    orientation = 1
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # garbage between segments
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, i + 2)
        body = i + 4
        if marker == 0xE1 and bytes(data[body : body + 6]) == b"Exif\x00\x00":
            try:
                orientation = _exif_orientation(bytes(data[body : i + 2 + length]))
            except struct.error:
                orientation = 1
        elif marker in _SOF_BASELINE or marker in _SOF_OTHER:
            if body + 6 > n:
                return None
            precision, height, width, comps = struct.unpack_from(">BHHB", data, body)
            baseline = marker in _SOF_BASELINE and precision == 8
            return JpegHeader(int(height), int(width), int(comps), baseline, orientation)
        i += 2 + length
    return None


class EncodedBatch:
    """The device-routed samples of one batch that the device decodes, in batch order.

    Attributes:
        positions: int64 ``[m]``, their batch positions (a subset of the route's
            ``device_index``; the ``images`` slots there hold zeros until decoded).
        indices: int64 ``[m]``, their dataset indices (for the fallback's messages and the
            source's ``on_error``).
        data: uint8 ``[N]``, every file's bytes end to end; ``starts``/``lengths`` (int64
            ``[m]``) locate each one.
        sizes: int64 ``[m, 2]``, stored height and width from the header (the decoder's
            output before orientation; the memory guard budgets ``H * W * 3`` bytes each).
        orientation: int64 ``[m]``, EXIF orientation (1-8).
        boxes: int64 ``[m, 4]``, the crop ``(top, left, height, width)`` in oriented coordinates.
        flips: bool ``[m]``.
        size: side of the output.
        crop: ``(seed, epoch, scale, ratio)`` of the random resized crop, to draw the box of a
            replacement sample (a corrupt file under ``on_error="skip"``) as the worker would.
        fallbacks: device-routed samples of this batch the worker decoded itself (not a
            device-decodable JPEG); counted by the device stage.

    Like :class:`~ff_lightning.worker.record.BatchRoute` it stays on the host. Indexing by an
    index tensor gives the record of those samples (the memory guard's chunks); ``.to`` is the
    identity (the decoder copies the bytes itself).
    """

    __slots__ = (
        "boxes",
        "crop",
        "data",
        "fallbacks",
        "flips",
        "indices",
        "lengths",
        "orientation",
        "positions",
        "size",
        "sizes",
        "starts",
    )

    def __init__(
        self,
        *,
        positions: torch.Tensor,
        indices: torch.Tensor,
        data: torch.Tensor,
        starts: torch.Tensor,
        lengths: torch.Tensor,
        sizes: torch.Tensor,
        orientation: torch.Tensor,
        boxes: torch.Tensor,
        flips: torch.Tensor,
        size: int,
        crop: tuple[int, int, tuple[float, float], tuple[float, float]],
        fallbacks: int = 0,
    ) -> None:
        self.positions = positions
        self.indices = indices
        self.data = data
        self.starts = starts
        self.lengths = lengths
        self.sizes = sizes
        self.orientation = orientation
        self.boxes = boxes
        self.flips = flips
        self.size = int(size)
        self.crop = crop
        self.fallbacks = int(fallbacks)

    @classmethod
    def build(
        cls,
        *,
        positions: Sequence[int],
        indices: Sequence[int],
        files: Sequence[bytes],
        headers: Sequence[JpegHeader],
        boxes: Sequence[tuple[int, int, int, int]],
        flips: Sequence[bool],
        size: int,
        crop: tuple[int, int, tuple[float, float], tuple[float, float]],
        fallbacks: int = 0,
    ) -> EncodedBatch:
        lengths = torch.tensor([len(f) for f in files], dtype=torch.long)
        starts = torch.zeros_like(lengths)
        if len(files) > 1:
            starts[1:] = lengths.cumsum(0)[:-1]
        joined = bytearray(b"".join(files))
        data = (
            torch.frombuffer(joined, dtype=torch.uint8)
            if joined
            else torch.zeros(0, dtype=torch.uint8)
        )
        return cls(
            positions=torch.tensor(list(positions), dtype=torch.long),
            indices=torch.tensor(list(indices), dtype=torch.long),
            data=data,
            starts=starts,
            lengths=lengths,
            sizes=torch.tensor([[h.height, h.width] for h in headers], dtype=torch.long).view(
                -1, 2
            ),
            orientation=torch.tensor([h.orientation for h in headers], dtype=torch.long),
            boxes=torch.tensor([list(b) for b in boxes], dtype=torch.long).view(-1, 4),
            flips=torch.tensor(list(flips), dtype=torch.bool),
            size=size,
            crop=crop,
            fallbacks=fallbacks,
        )

    def __len__(self) -> int:
        return int(self.positions.numel())

    def file(self, j: int) -> torch.Tensor:
        """uint8 ``[n]``: the bytes of sample ``j`` (a view into :attr:`data`)."""
        s, n = int(self.starts[j]), int(self.lengths[j])
        return self.data[s : s + n]

    def decoded_bytes(self) -> int:
        """The largest decode buffer of one sample: ``H * W * 3`` at full source resolution."""
        if len(self) == 0:
            return 0
        return int((self.sizes[:, 0] * self.sizes[:, 1]).max()) * 3

    def __getitem__(self, idx: Any) -> EncodedBatch:
        idx = torch.as_tensor(idx, dtype=torch.long).cpu().view(-1)
        return EncodedBatch(
            positions=self.positions[idx],
            indices=self.indices[idx],
            data=self.data,
            starts=self.starts[idx],
            lengths=self.lengths[idx],
            sizes=self.sizes[idx],
            orientation=self.orientation[idx],
            boxes=self.boxes[idx],
            flips=self.flips[idx],
            size=self.size,
            crop=self.crop,
            fallbacks=0,
        )

    def to(self, device: Any) -> EncodedBatch:
        return self  # a host record: the decoder moves what it needs

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return (
            f"EncodedBatch(samples={len(self)}, bytes={int(self.lengths.sum())}, size={self.size})"
        )
