"""Turning a file's bytes into an RGB image: PIL decoding, EXIF orientation, mode conversion,
and the small protocol by which a source says it reads encoded files.

Every decoded image is oriented as ``PIL.ImageOps.exif_transpose`` orients it (a phone photo
tagged "rotate 90" comes back upright), in training and validation alike; the device decoder
applies the same orientation after its own decode (:mod:`ff_lightning.pipeline.device.decode`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps

from ff_lightning.errors import CorruptImageError

__all__ = [
    "EncodedSource",
    "decode_bytes",
    "decode_file",
    "exif_orientation",
    "reads_encoded_files",
    "to_rgb",
]

_ORIENTATION = 0x0112


@runtime_checkable
class EncodedSource(Protocol):
    """A source whose samples are encoded files: it hands out their bytes without decoding.

    ``encoded(index)`` returns ``(file bytes, int target)`` and raises
    :class:`~ff_lightning.errors.CorruptImageError` when the file cannot be read;
    ``path(index)`` names the file (for messages). ``source[index]`` must still return the
    decoded sample, following the source's ``on_error``: it is the fallback for every file the
    device cannot decode.
    """

    def encoded(self, index: int) -> tuple[bytes, int]: ...

    def path(self, index: int) -> os.PathLike[str] | str: ...


def reads_encoded_files(source: Any) -> bool:
    """Whether ``source`` reads encoded files (``device_decode="auto"`` turns decoding on the
    device on for those): it implements :class:`EncodedSource`."""
    return callable(getattr(source, "encoded", None)) and callable(getattr(source, "path", None))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit and 32-bit integer images are scaled from 0..65535 (when they use more than 8 bits),
    float images from 0..1 (when their maximum is at most 1), and images with transparency are
    composited over black, so transparent pixels come out the same whatever colour they store.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _scaled_grey(img).convert("RGB")
    if _has_alpha(img):
        return _over_black(img)
    return img.convert("RGB")


def to_gray(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit grayscale (``L``), scaling 16-bit, 32-bit and float images
    and compositing transparency over black as :func:`to_rgb` does."""
    mode = img.mode
    if mode == "L" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _scaled_grey(img)
    if _has_alpha(img):
        return _over_black(img).convert("L")
    return img.convert("L")


def _scaled_grey(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float image as 8-bit ``L``: 0..65535 scaled when more than 8 bits
    are used, floats from 0..1 when their maximum is at most 1."""
    arr = np.asarray(img, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if img.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    elif img.mode != "F" and peak > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _over_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (0, 0, 0))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def exif_orientation(img: Image.Image) -> int:
    """The image's EXIF orientation tag (1-8; 1 when absent or invalid). Reads the header only."""
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make the pixels unreadable
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented(img: Image.Image) -> Image.Image:
    # exif_transpose copies the image even when there is nothing to do: check the tag first.
    return ImageOps.exif_transpose(img) if exif_orientation(img) != 1 else img


def _open_decoded(fp: Any, name: object) -> Image.Image:
    try:
        with Image.open(fp) as img:
            img.load()
            return to_rgb(_oriented(img))
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ... for bad files
        raise CorruptImageError(f"cannot decode image {name}: {err}") from err


def decode_file(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode ``path`` as upright RGB; :class:`CorruptImageError` on failure."""
    return _open_decoded(Path(path), path)


def decode_bytes(data: bytes | bytearray | memoryview, name: object = "<bytes>") -> Image.Image:
    """Decode a file's bytes as upright RGB; :class:`CorruptImageError` (naming ``name``) on failure."""
    return _open_decoded(io.BytesIO(bytes(data)), name)
