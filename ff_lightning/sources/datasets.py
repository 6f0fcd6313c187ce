"""Map-style image datasets ("sources") read from disk: ImageFolder trees, the synthetic set,
and the factory that builds any source by name (CIFAR-10 lives in :mod:`.cifar`, decoding in
:mod:`.decoding`).

A source returns ``(image, target)`` with the image either an RGB ``PIL.Image`` or a uint8
``[3, H, W]`` tensor, which is what :class:`~ff_lightning.FusionDataModule` accepts. Sources
are cheap to construct (directory scans and decoded CIFAR batches are cached per process) and
picklable, so DataLoader worker processes receive them without rescanning.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from ff_lightning.errors import (
    ConfigError,
    CorruptImageError,
    DatasetNotFoundError,
)
from ff_lightning.sources.cifar import CIFAR10_CLASSES, Cifar10Source
from ff_lightning.sources.decoding import decode_file, reads_encoded_files, to_rgb
from ff_lightning.sources.synthetic import ensure_synthetic_dataset
from ff_lightning.validation import check_choice

__all__ = [
    "CIFAR10_CLASSES",
    "IMG_EXTENSIONS",
    "SOURCES",
    "SPLITS",
    "Cifar10Source",
    "ImageFolderSource",
    "SyntheticSource",
    "build_source",
    "check_split",
    "reads_encoded_files",
    "to_rgb",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
ON_ERROR = ("skip", "raise")
#: File extensions read by :class:`ImageFolderSource` (matched case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
#: In ``on_error="skip"`` mode, give up after this many undecodable images in a row.
MAX_CONSECUTIVE_FAILURES = 64


def check_split(split: object) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise :class:`ConfigError`."""
    return check_choice("split", split, SPLITS)


def _check_on_error(on_error: object) -> str:
    if on_error not in ON_ERROR:
        raise ConfigError(f"`on_error` must be one of {ON_ERROR}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


# --------------------------------------------------------------------------- ImageFolder

_IMAGEFOLDER_LAYOUT = (
    "expected an ImageFolder tree: <root>/train/<class>/<image> and <root>/val/<class>/<image> "
    "(one folder per class; images may be " + ", ".join(e[1:] for e in IMG_EXTENSIONS) + ")"
)


def _class_dirs(split_dir: Path) -> list[str]:
    """Names of the non-hidden sub-folders of ``split_dir`` (empty if it does not exist)."""
    try:
        with os.scandir(split_dir) as it:
            return [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


@functools.lru_cache(maxsize=16)
def _scan(
    split_dir: str, classes: tuple[str, ...], extensions: tuple[str, ...], stamp: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Relative image paths and targets under ``split_dir``, sorted by class then path.

    Cached per process; ``stamp`` (the class folders' mtimes) is only part of the cache key,
    so adding or removing files directly in a class folder triggers a rescan.
    """
    del stamp
    paths: list[str] = []
    targets: list[int] = []
    for target, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, split_dir)
            found.extend(
                os.path.join(rel, f)
                for f in filenames
                if os.path.splitext(f)[1].lower() in extensions and not f.startswith(".")
            )
        if not found:
            log.warning("Class folder %s holds no images", class_dir)
        found.sort()
        paths.extend(found)
        targets.extend([target] * len(found))
    return tuple(paths), tuple(targets)


class ImageFolderSource:
    """Images in an ImageFolder tree, ``<root>/<split>/<class>/**/<image>``, decoded lazily.

    Args:
        root: folder holding ``train/`` and ``val/`` (e.g. an ImageNet layout).
        split: ``"train"`` or ``"val"``.
        on_error: what ``__getitem__`` does with an image that cannot be decoded.
            ``"skip"`` (default) logs a warning naming the file (once per process) and returns
            the next decodable sample instead (index ``i+1``, ``i+2``, ... wrapping around), so
            a few bad files do not stop a long training run; ``"raise"`` raises
            :class:`~ff_lightning.errors.CorruptImageError` naming the file.
        extensions: file extensions to read, lower case with the dot.

    Class names are the sorted union of the class folders of every split present, so
    ``train`` and ``val`` map a class to the same target even when one of them lacks it.
    Images come back as RGB ``PIL.Image`` whatever their mode (see :func:`to_rgb`), oriented
    by their EXIF tag as ``PIL.ImageOps.exif_transpose`` does. :meth:`encoded` hands out a
    file's bytes undecoded (for decoding on the device).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        on_error: str = "skip",
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
    ) -> None:
        self.split = check_split(split)
        self.on_error = _check_on_error(on_error)
        self.root = Path(root).expanduser()
        self.extensions = tuple(e.lower() for e in extensions)
        split_dir = self.root / split
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"ImageFolder root {self.root} does not exist or is not a folder; "
                f"{_IMAGEFOLDER_LAYOUT}."
            )
        if not split_dir.is_dir():
            hint = ""
            if split in _class_dirs(self.root.parent) or self.root.name in SPLITS:
                hint = (
                    f" `root` looks like a split folder itself; pass its parent {self.root.parent}."
                )
            raise DatasetNotFoundError(
                f"ImageFolder split folder {split_dir} does not exist; {_IMAGEFOLDER_LAYOUT}.{hint}"
            )
        own = _class_dirs(split_dir)
        if not own:
            raise DatasetNotFoundError(
                f"no images found under {split_dir}: it has no class folders; "
                f"{_IMAGEFOLDER_LAYOUT}. (A flat folder of images, like ImageNet's raw "
                f"validation set, must first be sorted into one folder per class.)"
            )
        names = set(own)
        for other in SPLITS:
            if other != split:
                names.update(_class_dirs(self.root / other))
        self.classes: list[str] = sorted(names)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        stamp = tuple(_mtime_ns(split_dir / c) for c in self.classes)
        self._paths, targets = _scan(
            str(split_dir), tuple(self.classes), self.extensions, (_mtime_ns(split_dir), *stamp)
        )
        if not self._paths:
            raise DatasetNotFoundError(
                f"no images found under {split_dir} (looked for {', '.join(self.extensions)} "
                f"files in {len(own)} class folders); {_IMAGEFOLDER_LAYOUT}."
            )
        self.targets: list[int] = list(targets)
        self._bad: set[int] = set()  # indices found undecodable in this process

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        """Path of the image at ``index``."""
        return self.root / self.split / self._paths[index]

    def load(self, index: int) -> Image.Image:
        """Decode the image at ``index`` (upright, RGB); :class:`CorruptImageError` if it cannot."""
        return decode_file(self.path(index))

    def encoded(self, index: int) -> tuple[bytes, int]:
        """The file's bytes and target, undecoded (see
        :class:`~ff_lightning.sources.decoding.EncodedSource`); :class:`CorruptImageError`
        when it cannot be read. A file this returns may still fail to decode: ``self[index]``
        is the fallback, with ``on_error``."""
        path = self.path(index)
        try:
            with open(path, "rb") as fh:
                return fh.read(), self.targets[index]
        except OSError as err:
            raise CorruptImageError(f"cannot read image {path}: {err}") from err

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        n = len(self._paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        if self.on_error == "raise":
            return self.load(index), self.targets[index]
        for step in range(min(n, MAX_CONSECUTIVE_FAILURES)):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                return self.load(j), self.targets[j]
            except CorruptImageError as err:
                self._bad.add(j)
                log.warning(
                    "%s; skipping it (samples that land on it get the next decodable image)",
                    err,
                )
        raise CorruptImageError(
            f"{min(n, MAX_CONSECUTIVE_FAILURES)} images in a row from {self.path(index)} on "
            f"cannot be decoded; the dataset under {self.root / self.split} looks corrupt."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"samples={len(self)}, classes={len(self.classes)})"
        )


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class SyntheticSource(ImageFolderSource):
    """The embedded shapes dataset (see :mod:`ff_lightning.sources.synthetic`), generated on first use.

    ``root`` is the cache root (default ``$FF_LIGHTNING_CACHE`` or ``~/.cache/ff_lightning``);
    ``gen_kwargs`` go to :func:`~ff_lightning.sources.synthetic.ensure_synthetic_dataset`
    (``num_classes``, ``image_size``, ``train_per_class``, ``val_per_class``, ``seed``, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        *,
        on_error: str = "skip",
        **gen_kwargs: Any,
    ) -> None:
        check_split(split)
        _check_on_error(on_error)
        super().__init__(ensure_synthetic_dataset(root, **gen_kwargs), split, on_error=on_error)


# --------------------------------------------------------------------------- factory

SOURCES: dict[str, type] = {
    "synthetic": SyntheticSource,
    "imagefolder": ImageFolderSource,
    "cifar10": Cifar10Source,
}


def _allowed_kwargs(kind: str) -> list[str]:
    names = [p for p in inspect.signature(SOURCES[kind]).parameters if p not in ("split",)]
    if kind == "synthetic":
        names = [p for p in names if p != "gen_kwargs"]
        names += [p for p in inspect.signature(ensure_synthetic_dataset).parameters if p != "root"]
    return names


def build_source(kind: str, split: str = "train", **kwargs: Any) -> Any:
    """Build a source by name: ``"synthetic"``, ``"imagefolder"`` or ``"cifar10"``.

    ``kwargs`` go to the source's constructor (``root`` is required except for ``synthetic``).
    Raises :class:`~ff_lightning.errors.ConfigError` for an unknown kind, split or argument.
    """
    key = kind.lower() if isinstance(kind, str) else kind
    if key not in SOURCES:
        raise ConfigError(f"`kind` must be one of {tuple(SOURCES)}, got {kind!r}")
    check_split(split)
    allowed = _allowed_kwargs(key)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {', '.join(f'`{u}`' for u in unknown)} for source {key!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    if key != "synthetic" and kwargs.get("root") is None:
        raise ConfigError(f"`root` is required for source {key!r} (the dataset's folder)")
    return SOURCES[key](split=split, **kwargs)
