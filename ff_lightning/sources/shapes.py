"""The embedded dataset's pictures: procedurally drawn shapes and textures.

Each class is a shape (circle, square, triangle, star, ring, cross, hexagon) or a texture
(horizontal, vertical or diagonal stripes, checkerboard, dots). Every image draws its
position, scale, rotation, colours, background gradient, clutter lines and noise from
distributions that are the same for every class, so colour carries no class information and
a classifier has to use shape and texture. Every image is a pure function of
``(seed, split, class index, image index, image size)``. The cache of JPEG files built from
them lives in :mod:`ff_lightning.sources.synthetic`.
"""

from __future__ import annotations

import math

import numpy as np

from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_int

__all__ = ["CLASS_NAMES", "DEFAULT_IMAGE_SIZE", "SPLITS", "SYNTHETIC_VERSION", "render_sample"]

#: Bump when the drawing code changes the pixels; old caches are then regenerated.
SYNTHETIC_VERSION = 1
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
    check_int("class_index", class_index, 0, len(CLASS_NAMES) - 1)
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
