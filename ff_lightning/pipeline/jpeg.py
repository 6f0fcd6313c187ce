"""JPEG files on both routes: the header probe and the batched decode.

With ``device_decode`` on, a device-routed sample whose file is a baseline JPEG is not decoded
in the worker. The worker reads its bytes, parses the header with :func:`jpeg_header` (size,
components, EXIF orientation; no pixel is decoded), draws its crop box and flip as for any
sample, and ships the bytes in an :class:`~ff_lightning.pipeline.batch.EncodedBatch`; the
device stage decodes the whole share with :func:`decode_jpegs` in one batched call per chunk
(:mod:`ff_lightning.pipeline.device.decode`). The worker decodes its own JPEGs with the same
function on the CPU, so both routes see the same decoder.

:func:`jpeg_header` is a plain marker scan: it reads the segment headers up to the frame
header (SOF) and the orientation tag of an EXIF ``APP1`` segment, a few dozen bytes of
Python work per file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

__all__ = ["JpegHeader", "decode_jpegs", "is_allocation_failure", "jpeg_header"]

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


_OOM = (torch.cuda.OutOfMemoryError,)
# nvJPEG reports running out of device memory as a RuntimeError, not as torch's
# OutOfMemoryError: torchvision's "Failed to decode batch: 5" / older "nvjpegDecode failed: 5"
# (status 5 is NVJPEG_STATUS_ALLOCATOR_FAILURE), a buffer it could not create or attach, or a
# CUDA allocation error.
_ALLOCATION_FAILURE = re.compile(
    r"out of memory|NVJPEG_STATUS_ALLOCATOR_FAILURE|allocat\w* fail|fail\w* to allocate"
    r"|cudaErrorMemoryAllocation|failed(?: to [\w ]+)?: 5\b"
    r"|failed to (?:create|attach) (?:device|pinned) buffer",
    re.IGNORECASE,
)


def is_allocation_failure(err: BaseException, device: torch.device) -> bool:
    """Whether a decode error on ``device`` is the device running out of memory (a CUDA
    device only: on the host the retry and fallback would run out alike)."""
    return device.type == "cuda" and bool(_ALLOCATION_FAILURE.search(str(err)))


def _as_oom(err: BaseException) -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(f"{type(err).__name__} from the JPEG decoder: {err}")


def _drain_caller_stream(device: torch.device) -> None:
    # SYNCHRONISATION POINT (CUDA only, once per chunk). torchvision's CUDA decoder writes its
    # outputs from a private stream that is not ordered after the caller's (pytorch/vision
    # #9606): memory the caching allocator hands it may still be read by kernels queued on the
    # current stream, and the decode then corrupts them. Draining the current stream first
    # is the fix measured in that report (0 corrupted iterations of 200).
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def decode_jpegs(
    files: Sequence[Tensor],
    device: torch.device | str,
    *,
    oom_errors: tuple[type[BaseException], ...] = _OOM,
    drain: bool = True,
) -> list[Tensor | None]:
    """Decode JPEG files (uint8 CPU tensors) to RGB uint8 ``[3, H, W]`` on ``device``.

    One batched ``decode_jpeg`` call; when it fails, each file again on its own, and a file
    that fails alone comes back as ``None``. Out-of-memory errors propagate (the memory
    guard handles them), nvJPEG's allocation failures included, as ``OutOfMemoryError``. No
    EXIF orientation is applied (the caller applies it). ``drain``: wait for the caller's
    CUDA stream first (see ``_drain_caller_stream``); ``False`` for a caller that orders the
    decode itself (the device stage decodes on a side stream).
    """
    dev = torch.device(device)
    if not files:
        return []
    if drain:
        _drain_caller_stream(dev)
    try:
        out = decode_jpeg(list(files), mode=ImageReadMode.RGB, device=dev)
        return list(out)
    except oom_errors:
        raise
    except Exception as err:  # one bad file fails the batched call: retry item by item
        if is_allocation_failure(err, dev):
            raise _as_oom(err) from err
    result: list[Tensor | None] = []
    for f in files:
        try:
            result.append(decode_jpeg(f, mode=ImageReadMode.RGB, device=dev))
        except oom_errors:
            raise
        except Exception as err:
            if is_allocation_failure(err, dev):
                raise _as_oom(err) from err
            result.append(None)
    return result
