"""Embedded default dataset: the shapes and textures of :mod:`ff_lightning.sources.shapes`,
cached as JPEG files.

Every image is a pure function of ``(seed, split, class index, image index, image size)``,
so the files are identical whatever order or process they are drawn in. The set is written
once in ImageFolder layout (``<dir>/train/<class>/*.jpg``, ``<dir>/val/<class>/*.jpg``)
with a manifest ``ff_dataset.json`` written last; later calls reuse it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from PIL import Image

from ff_lightning.errors import ConfigError
from ff_lightning.sources.shapes import (
    CLASS_NAMES,
    DEFAULT_IMAGE_SIZE,
    SPLITS,
    SYNTHETIC_VERSION,
    render_sample,
)
from ff_lightning.validation import check_int

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_TRAIN_PER_CLASS",
    "DEFAULT_VAL_PER_CLASS",
    "MANIFEST_NAME",
    "SYNTHETIC_VERSION",
    "default_cache_root",
    "dataset_dirname",
    "ensure_synthetic_dataset",
    "render_sample",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "ff_dataset.json"
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_VAL_PER_CLASS = 100
JPEG_QUALITY = 90


# --------------------------------------------------------------------------- cache


def default_cache_root() -> Path:
    """``$FF_LIGHTNING_CACHE`` if set, else ``~/.cache/ff_lightning``."""
    env = os.environ.get("FF_LIGHTNING_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ff_lightning"


def dataset_dirname(
    *, num_classes: int, image_size: int, train_per_class: int, val_per_class: int, seed: int
) -> str:
    """Name of the cache subfolder, encoding every parameter that changes the files."""
    return (
        f"shapes-s{seed}-c{num_classes}-{image_size}px-"
        f"{train_per_class}x{val_per_class}-v{SYNTHETIC_VERSION}"
    )


def _manifest(
    *, num_classes: int, image_size: int, train_per_class: int, val_per_class: int, seed: int
) -> dict:
    classes = list(CLASS_NAMES[:num_classes])
    return {
        "format": "ff_lightning.synthetic-shapes",
        "version": SYNTHETIC_VERSION,
        "seed": seed,
        "num_classes": num_classes,
        "image_size": image_size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "jpeg_quality": JPEG_QUALITY,
        "classes": classes,
        "counts": {"train": train_per_class * num_classes, "val": val_per_class * num_classes},
    }


def _file_name(class_name: str, index: int) -> str:
    return f"{class_name}_{index:05d}.jpg"


def _is_complete(path: Path, expected: dict) -> bool:
    """True when ``path`` holds a finished dataset with exactly the expected parameters."""
    try:
        found = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if {k: found.get(k) for k in expected} != expected:
        return False
    per_class = {"train": expected["train_per_class"], "val": expected["val_per_class"]}
    for split, count in per_class.items():  # cheap check that no file was deleted since
        for name in expected["classes"]:
            try:
                with os.scandir(path / split / name) as it:
                    if sum(1 for _ in it) != count:
                        return False
            except OSError:
                return False
    return True


def _write_chunk(task: tuple[str, str, int, int, int, int, int]) -> int:
    """Write images ``start..stop-1`` of one (split, class); returns how many."""
    out, split, c, start, stop, seed, size = task
    directory = Path(out) / split / CLASS_NAMES[c]
    for i in range(start, stop):
        arr = render_sample(c, i, seed=seed, split=split, image_size=size)
        Image.fromarray(arr).save(directory / _file_name(CLASS_NAMES[c], i), quality=JPEG_QUALITY)
    return stop - start


def _generate(
    out: Path,
    *,
    num_classes: int,
    image_size: int,
    train_per_class: int,
    val_per_class: int,
    seed: int,
    progress: bool,
    num_workers: int,
    label: str,
) -> None:
    """Write every image into ``out`` (which must be empty), showing a progress bar."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    classes = list(CLASS_NAMES[:num_classes])
    for split in SPLITS:
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    total = num_classes * (train_per_class + val_per_class)
    chunk = 50
    tasks = [
        (str(out), split, c, start, min(start + chunk, per_class), seed, image_size)
        for split, per_class in (("train", train_per_class), ("val", val_per_class))
        for c in range(num_classes)
        for start in range(0, per_class, chunk)
    ]
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(f"Generating {label}", total=total)
        done = 0
        if num_workers > 1:
            # The files do not depend on which process draws them, so workers only add speed;
            # where processes cannot be started (daemonic parent, no semaphores), go on serially.
            try:
                with ProcessPoolExecutor(max_workers=num_workers) as pool:
                    for n in pool.map(_write_chunk, tasks):
                        bar.advance(task, n)
                        done += 1
            except (OSError, AssertionError, BrokenProcessPool) as err:
                log.warning("Generating in one process: worker processes failed (%r)", err)
        for t in tasks[done:]:
            bar.advance(task, _write_chunk(t))


def ensure_synthetic_dataset(
    root: str | os.PathLike[str] | None = None,
    *,
    num_classes: int = 10,
    image_size: int = DEFAULT_IMAGE_SIZE,
    train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    seed: int = 0,
    progress: bool = True,
    num_workers: int | None = None,
) -> Path:
    """Return the directory of the synthetic shapes dataset, generating it on first use.

    Args:
        root: cache root; the dataset lives in a subfolder named by :func:`dataset_dirname`.
            Defaults to :func:`default_cache_root`.
        num_classes: how many of :data:`CLASS_NAMES` to use (2 to 12).
        image_size: side of the square images in pixels (e.g. 224 for realistic GPU cost).
        train_per_class, val_per_class: images per class in each split.
        seed: selects the images; the same seed always gives byte-identical files.
        progress: show a rich progress bar on stderr while generating.
        num_workers: processes used to generate (0 or 1: this process only; ``None``: one
            per available CPU, at most 8, for sets of 1000 images or more). The files do
            not depend on it.

    The set is written into a temporary sibling folder and renamed into place after its
    manifest is written, so an interrupted run never leaves a folder that looks complete;
    a folder without a valid manifest is deleted and regenerated.
    """
    check_int("num_classes", num_classes, 2, len(CLASS_NAMES))
    check_int("image_size", image_size, 8, 4096)
    check_int("train_per_class", train_per_class, 1, 99_999)
    check_int("val_per_class", val_per_class, 1, 99_999)
    check_int("seed", seed, 0, 2**31 - 1)
    if num_workers is not None:
        check_int("num_workers", num_workers, 0, 256)
    params = {
        "num_classes": num_classes,
        "image_size": image_size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
    }
    cache_root = Path(root).expanduser() if root is not None else default_cache_root()
    target = cache_root / dataset_dirname(**params)
    expected = _manifest(**params)
    if _is_complete(target, expected):
        return target

    _make_cache_root(cache_root, "root" if root is not None else "FF_LIGHTNING_CACHE")
    _remove_stale_partials(cache_root, target.name)
    partial = cache_root / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        if num_workers is None:
            total = num_classes * (train_per_class + val_per_class)
            num_workers = min(_available_cpus(), 8) if total >= 1000 else 0
        _generate(partial, progress=progress, num_workers=num_workers, label=target.name, **params)
        tmp_manifest = partial / (MANIFEST_NAME + ".tmp")
        tmp_manifest.write_text(json.dumps(expected, indent=2) + "\n")
        os.replace(tmp_manifest, partial / MANIFEST_NAME)  # the manifest is the commit marker
        if target.exists() and not _is_complete(target, expected):
            log.warning("Removing incomplete synthetic dataset at %s", target)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(partial, target)
        except OSError:
            # Another process finished first (e.g. another DDP rank); use its copy if valid.
            if not _is_complete(target, expected):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("Generated synthetic dataset at %s in %.1f s", target, time.perf_counter() - start)
    return target


def _make_cache_root(path: Path, name: str) -> None:
    """Create the cache root; a file (or a path through one) is a one-line error naming ``name``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        what = "a file, not a folder" if path.is_file() else (err.strerror or str(err)).lower()
        default = "" if name == "root" else " or unset it to use ~/.cache/ff_lightning"
        raise ConfigError(
            f"`{name}` is {str(path)!r}: {what}; the synthetic dataset is generated there, so "
            f"point {name} to a folder that can be created{default}"
        ) from None


def _remove_stale_partials(cache_root: Path, name: str, max_age_s: float = 3600.0) -> None:
    """Delete temporary folders that killed runs left behind (recent ones may still be in use)."""
    for stale in cache_root.glob(f".{name}.partial-*"):
        try:
            if time.time() - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1
