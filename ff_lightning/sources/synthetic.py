"""Embedded default dataset: procedurally drawn shapes and textures, cached as JPEG files.

Each class is a shape (circle, square, triangle, star, ring, cross, hexagon) or a texture
(horizontal, vertical or diagonal stripes, checkerboard, dots). Every image draws its
position, scale, rotation, colours, background gradient, clutter lines and noise from
distributions that are the same for every class, so colour carries no class information and
a classifier has to use shape and texture.

Every image is a pure function of ``(seed, split, class index, image index, image size)``,
so the files are identical whatever order or process they are drawn in. The set is written
once in ImageFolder layout (``<dir>/train/<class>/*.jpg``, ``<dir>/val/<class>/*.jpg``)
with a manifest ``ff_dataset.json`` written last; later calls reuse it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image

from ff_lightning.errors import ConfigError

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

#: Bump when the drawing code changes the pixels; old caches are then regenerated.
SYNTHETIC_VERSION = 1
MANIFEST_NAME = "ff_dataset.json"
#: Class names in class-index order of generation (``num_classes`` takes the first ones).
CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "hstripes",
    "vstripes",
    "checkerboard",
    "dots",
    "cross",
    "hexagon",
    "dstripes",
)
DEFAULT_IMAGE_SIZE = 96
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_VAL_PER_CLASS = 100
JPEG_QUALITY = 90
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
_SALT = 0x5EED_F1F0  # separates these streams from other users of the same seed
_SUPERSAMPLE = 2  # coverage is computed on a 2x grid for anti-aliased edges


# --------------------------------------------------------------------------- drawing


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an ``n x n`` grid in image-side units ``[0, 1]``."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return c[None, :], c[:, None]  # x varies along columns, y along rows (broadcastable)


def _frame(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred at ``(cx, cy)``, rotated by ``angle`` and divided by ``scale``."""
    dx, dy = x - cx, y - cy
    ca, sa = math.cos(angle), math.sin(angle)
    return (dx * ca + dy * sa) / scale, (-dx * sa + dy * ca) / scale


def _polygon(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Regular ``n``-gon with circumradius 1."""
    apothem = math.cos(math.pi / n)
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for k in range(n):
        a = 2 * math.pi * (k + 0.5) / n  # edge normals sit between the vertices
        inside &= u * math.cos(a) + v * math.sin(a) < apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, inner: float, points: int = 5) -> np.ndarray:
    """Star with outer radius 1 and inner radius ``inner``, tested in one folded sector."""
    half = math.pi / points
    r = np.sqrt(u * u + v * v)
    a = np.abs(np.mod(np.arctan2(v, u) + half, 2 * half) - half)
    qx, qy = r * np.cos(a), r * np.sin(a)
    ix, iy = inner * math.cos(half), inner * math.sin(half)  # inner vertex; tip at (1, 0)
    return (ix - 1.0) * qy - iy * (qx - 1.0) > 0


def _shape_mask(name: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one solid shape with random centre, size and rotation."""
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    scale = rng.uniform(0.2, 0.38)
    angle = rng.uniform(0, 2 * math.pi)
    # Every shape lies within 1.1 * scale of its centre: evaluate only that box.
    n = x.shape[1]
    j0, j1 = max(0, int((cx - 1.1 * scale) * n)), min(n, math.ceil((cx + 1.1 * scale) * n))
    i0, i1 = max(0, int((cy - 1.1 * scale) * n)), min(n, math.ceil((cy + 1.1 * scale) * n))
    u, v = _frame(x[:, j0:j1], y[i0:i1], cx, cy, angle, scale)
    mask = np.zeros((n, n), dtype=bool)
    mask[i0:i1, j0:j1] = _shape_inside(name, u, v, rng)
    return mask


def _shape_inside(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inside test of shape ``name`` in its own frame (circumradius 1)."""
    if name == "circle":
        return u * u + v * v < 1.0
    if name == "ring":
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > rng.uniform(0.45, 0.7) ** 2)
    if name == "square":
        return _polygon(u, v, 4)
    if name == "triangle":
        return _polygon(u, v, 3)
    if name == "hexagon":
        return _polygon(u, v, 6)
    if name == "star":
        return _star(u, v, rng.uniform(0.38, 0.5))
    if name == "cross":
        w = rng.uniform(0.18, 0.3)
        au, av = np.abs(u), np.abs(v)
        return ((au < w) & (av < 1.0)) | ((av < w) & (au < 1.0))
    raise AssertionError(name)


def _texture_mask(name: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a periodic texture filling a random ellipse or rectangle."""
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    ru, rv = rng.uniform(0.22, 0.42, size=2)
    ru_, rv_ = _frame(x, y, cx, cy, rng.uniform(0, math.pi), 1.0)
    if rng.random() < 0.5:
        region = (ru_ / ru) ** 2 + (rv_ / rv) ** 2 < 1.0
    else:
        region = (np.abs(ru_) < ru) & (np.abs(rv_) < rv)

    period = rng.uniform(0.07, 0.14)
    jitter = math.radians(rng.uniform(-12, 12))
    if name == "hstripes":
        angle = jitter
    elif name == "vstripes":
        angle = math.pi / 2 + jitter
    elif name == "dstripes":
        angle = rng.choice([math.pi / 4, -math.pi / 4]) + jitter
    else:
        angle = rng.uniform(0, math.pi / 2)
    u, v = _frame(x, y, 0.5, 0.5, angle, period)
    pu, pv = rng.uniform(0, 1, size=2)  # pattern phase
    if name in ("hstripes", "vstripes", "dstripes"):
        pattern = np.mod(v + pv, 1.0) < rng.uniform(0.35, 0.6)
    elif name == "checkerboard":
        pattern = (np.floor(u + pu) + np.floor(v + pv)) % 2 == 0
    elif name == "dots":
        du, dv = np.mod(u + pu, 1.0) - 0.5, np.mod(v + pv, 1.0) - 0.5
        pattern = du * du + dv * dv < rng.uniform(0.2, 0.32) ** 2
    else:
        raise AssertionError(name)
    return region & pattern


def _segment_alpha(
    x: np.ndarray, y: np.ndarray, p0: np.ndarray, p1: np.ndarray, half_width: float, size: int
) -> np.ndarray:
    """Anti-aliased coverage ``[H, W, 1]`` of a line of ``half_width`` along ``p0 -> p1``."""
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    ex, ey = x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1])
    dist_px = np.sqrt(ex * ex + ey * ey) * size
    return np.clip(half_width * size + 0.5 - dist_px, 0, 1)[..., None]


def _coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """Average a supersampled boolean mask down to per-pixel coverage ``[size, size, 1]``."""
    ss = mask.shape[0] // size
    total = np.zeros((size, size), dtype=np.uint8)
    for i in range(ss):
        for j in range(ss):
            total += mask[i::ss, j::ss]
    return (total * np.float32(1 / (ss * ss)))[..., None]


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours, i.i.d. uniform RGB conditioned on being far apart.

    The condition is symmetric, so both colours have the same distribution, for every class.
    """
    while True:
        a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        if float(np.linalg.norm(a - b)) > 110:
            return a, b


def render_sample(
    class_index: int,
    index: int,
    *,
    seed: int = 0,
    split: str = "train",
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> np.ndarray:
    """Draw one image of class ``CLASS_NAMES[class_index]`` as uint8 ``[H, W, 3]``.

    The result depends only on the arguments (not on call order or process).
    """
    if split not in _SPLIT_CODE:
        raise ConfigError(f"`split` must be one of {SPLITS}, got {split!r}")
    _check_int("class_index", class_index, 0, len(CLASS_NAMES) - 1)
    name = CLASS_NAMES[class_index]
    rng = np.random.default_rng(
        [_SALT, SYNTHETIC_VERSION, seed, _SPLIT_CODE[split], class_index, index]
    )
    size = image_size
    x, y = _grid(size)
    xs, ys = _grid(size * _SUPERSAMPLE)

    fg, bg = _colour_pair(rng)
    # Background: a linear colour gradient in a random direction.
    g_angle = rng.uniform(0, 2 * math.pi)
    ramp = (x - 0.5) * math.cos(g_angle) + (y - 0.5) * math.sin(g_angle)
    img = bg + ramp[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)

    # Clutter: a few thin lines in colours from the same distribution, behind the object.
    for _ in range(int(rng.integers(0, 4))):
        p0, p1 = rng.uniform(0, 1, size=(2, 2))
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        half_width = rng.uniform(0.5, 1.2) / size
        img += _segment_alpha(x, y, p0, p1, half_width, size) * (colour - img)

    if name in ("hstripes", "vstripes", "dstripes", "checkerboard", "dots"):
        mask = _texture_mask(name, xs, ys, rng)
    else:
        mask = _shape_mask(name, xs, ys, rng)
    img += _coverage(mask, size) * (fg - img)

    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(3, 12))
    img += noise + np.float32(0.5)  # +0.5: round to nearest in the cast below
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


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
    _check_int("num_classes", num_classes, 2, len(CLASS_NAMES))
    _check_int("image_size", image_size, 8, 4096)
    _check_int("train_per_class", train_per_class, 1, 99_999)
    _check_int("val_per_class", val_per_class, 1, 99_999)
    _check_int("seed", seed, 0, 2**31 - 1)
    if num_workers is not None:
        _check_int("num_workers", num_workers, 0, 256)
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

    cache_root.mkdir(parents=True, exist_ok=True)
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


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"`{name}` must be an integer in [{low}, {high}], got {value!r}")
