"""CIFAR-10 from the python batches (``cifar-10-batches-py``): in-memory uint8 tensors.

Only load batches from a source you trust: they are Python pickles.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ff_lightning.errors import DatasetNotFoundError, FFLightningError
from ff_lightning.validation import check_choice

__all__ = ["CIFAR10_CLASSES", "CIFAR10_URL", "Cifar10Source"]

log = logging.getLogger("ff_lightning.sources.datasets")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _check_split(split: object) -> str:
    return check_choice("split", split, tuple(_CIFAR_FILES))


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{k}" for k in range(1, 6)),
    "val": ("test_batch",),
}


def _cifar_hint(root: Path) -> str:
    return (
        f"Download cifar-10-python.tar.gz from {CIFAR10_URL} and extract it so that "
        f"{root / _CIFAR_DIR / 'data_batch_1'} exists (e.g. `tar -xzf cifar-10-python.tar.gz "
        f"-C {root}`)."
    )


def _find_cifar_dir(root: Path) -> Path:
    """The ``cifar-10-batches-py`` folder: ``root`` itself or its child of that name."""
    if (root / _CIFAR_DIR).is_dir():
        return root / _CIFAR_DIR
    if root.is_dir() and (root.name == _CIFAR_DIR or (root / "data_batch_1").exists()):
        return root
    raise DatasetNotFoundError(
        f"CIFAR-10 not found: expected {root / _CIFAR_DIR / 'data_batch_1'} (or "
        f"{root / 'data_batch_1'} when `root` is the {_CIFAR_DIR} folder itself). "
        + _cifar_hint(root)
    )


def _get(d: dict, key: str) -> Any:
    """``d[key]`` for pickles read with ``encoding='bytes'`` (bytes keys) or written with str keys."""
    return d[key.encode()] if key.encode() in d else d[key]


@functools.lru_cache(maxsize=4)
def _load_cifar(files: tuple[str, ...], stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded CIFAR-10 batches: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``, cached per process.

    Batches are Python pickles, so only load files from a source you trust.
    """
    del stamp
    data, labels = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            x = np.asarray(_get(batch, "data"), dtype=np.uint8)
            y = np.asarray(_get(batch, "labels"), dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
            raise FFLightningError(f"cannot read CIFAR-10 batch {f}: {e!r}") from e
        if x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise FFLightningError(
                f"malformed CIFAR-10 batch {f}: expected data uint8 [N, 3072] and N labels, "
                f"got data {list(x.shape)} and {len(y)} labels"
            )
        data.append(x.reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(data), np.concatenate(labels)


class Cifar10Source:
    """CIFAR-10 from the python batches (``cifar-10-batches-py``); items are uint8 ``[3,32,32]``.

    Args:
        root: the folder holding ``cifar-10-batches-py``, or that folder itself.
        split: ``"train"`` (``data_batch_1`` .. ``data_batch_5``) or ``"val"`` (``test_batch``).

    Class names come from ``batches.meta`` when present. The decoded arrays are not pickled
    with the source; each worker process reloads them on first access.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.split = _check_split(split)
        self.root = Path(root).expanduser()
        self.base = _find_cifar_dir(self.root)
        self.files = tuple(str(self.base / name) for name in _CIFAR_FILES[split])
        missing = [f for f in self.files if not os.path.isfile(f)]
        if missing:
            raise DatasetNotFoundError(
                f"CIFAR-10 {split} split incomplete: missing {', '.join(missing)}. "
                + _cifar_hint(self.base.parent if self.base.name == _CIFAR_DIR else self.base)
            )
        self.classes: list[str] = self._read_classes()
        data, labels = self._arrays()
        if labels.size and not 0 <= labels.min() <= labels.max() < len(self.classes):
            raise FFLightningError(
                f"CIFAR-10 labels in {self.base} must lie in [0, {len(self.classes)}), "
                f"got [{labels.min()}, {labels.max()}]"
            )
        self.targets: list[int] = labels.tolist()

    def _read_classes(self) -> list[str]:
        meta = self.base / "batches.meta"
        if not meta.is_file():
            return list(CIFAR10_CLASSES)
        try:
            with open(meta, "rb") as fh:
                names = _get(pickle.load(fh, encoding="bytes"), "label_names")
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception as e:  # a broken meta file should not hide the data
            log.warning("Ignoring unreadable %s (%r); using the standard class names", meta, e)
            return list(CIFAR10_CLASSES)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        stamp = tuple(os.stat(f).st_mtime_ns for f in self.files)
        return _load_cifar(self.files, stamp)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, _ = self._arrays()
        # Copy: the cached array is shared by every source in this process.
        return torch.from_numpy(data[index].copy()), self.targets[index]

    def __repr__(self) -> str:
        return f"Cifar10Source(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"
