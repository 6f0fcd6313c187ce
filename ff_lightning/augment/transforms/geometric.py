"""Routed geometric transforms: ``RandomAffine``, ``RandomRotation`` and per-sample flips.

Affine warps follow torchvision's tensor kernels exactly: each sample's inverse matrix is built
on the host with the same float64 formula (``_get_inverse_affine_matrix``, Python ``math``, in
:func:`inverse_matrix`), and the warp reuses the auto-augment ops' grid code
(:mod:`ff_lightning.augment._geometry`: float32 grid factors, the grid as elementwise
multiply-adds in the order of torchvision's CPU ``bmm``, ``grid_sample`` with
``align_corners=False``). Nearest warps pick the pixel CPU ``grid_sample`` picks (exact);
bilinear warps blend the fill in through a ones-channel, as torchvision does.

Translations of ``RandomAffine`` are fractions of the image size, which the sampler does not
know: a record keeps the uniform draws, and :meth:`RandomAffine.resolve` turns them into
torchvision's integer pixel shifts for the size of the images being warped (every route
resolves the same way).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode

from ff_lightning.augment import _gather, _geometry, rng
from ff_lightning.augment._device import HostPack
from ff_lightning.augment.transforms.base import (
    COSTS,
    FIRST_STREAM,
    GatedTransform,
    RoutedTransform,
    named,
    run_rows,
    uniform_in,
)
from ff_lightning.augment.transforms.record import Record
from ff_lightning.errors import ConfigError

__all__ = [
    "RandomAffine",
    "RandomHorizontalFlip",
    "RandomRotation",
    "RandomVerticalFlip",
    "inverse_matrix",
]

Fill = float | Sequence[float] | None


# ==================================================================== arguments
def _angle_range(name: str, value: object, sizes: tuple[int, ...] = (2,)) -> tuple[float, ...]:
    """torchvision's ``_setup_angle``: a number ``v >= 0`` is ``(-v, v)``; a sequence of one of
    ``sizes`` lengths is taken as given (each pair must increase)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"`{name}` must be a non-negative number or a sequence, got {value!r}"
            )
        return (-float(value), float(value))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in sizes:
        try:
            out = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"`{name}` must hold numbers, got {value!r}") from None
        if all(math.isfinite(v) for v in out) and all(
            out[i] <= out[i + 1] for i in range(0, len(out), 2)
        ):
            return out
    lengths = " or ".join(str(s) for s in sizes)
    raise ConfigError(
        f"`{name}` must be a number or a sequence of {lengths} numbers (min <= max), got {value!r}"
    )


def _pair(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    ordered: bool,
    open_low: bool = False,
) -> tuple[float, float] | None:
    """``None`` or a pair of numbers in ``[low, high]`` (``(low, high]`` when ``open_low``),
    increasing when ``ordered``."""
    if value is None:
        return None
    pair: tuple[float, ...] = ()
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        try:
            pair = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            pair = ()
    ok = len(pair) == 2 and all(
        math.isfinite(v) and (v > low if open_low else v >= low) and v <= high for v in pair
    )
    if not ok or (ordered and pair[0] > pair[1]):
        lo = f"({low:g}" if open_low else f"[{low:g}"
        what = f"a pair (min, max) in {lo}, {high:g}]" if ordered else f"a pair in {lo}, {high:g}]"
        raise ConfigError(f"`{name}` must be None or {what}, got {value!r}")
    return pair[0], pair[1]


def _interpolation(value: object) -> str:
    mode = value.value if isinstance(value, InterpolationMode) else value
    if mode not in ("nearest", "bilinear"):
        raise ConfigError(
            f"`interpolation` must be 'nearest' or 'bilinear' (torchvision's tensor warps), "
            f"got {value!r}"
        )
    return str(mode)


def _fill(value: object) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 3):
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
    raise ConfigError(
        f"`fill` must be None, a number or a sequence of 1 or 3 numbers, got {value!r}"
    )


def _center(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        try:
            return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"`center` must be None or a pair (x, y) of numbers, got {value!r}")


# ==================================================================== matrices and warps
def inverse_matrix(
    center: tuple[float, float],
    angle: float,
    translate: tuple[float, float],
    scale: float,
    shear: tuple[float, float],
) -> list[float]:
    """torchvision's inverse affine matrix (6 floats) for one sample, in the same float64
    operations: ``M^-1 = C RSS^-1 C^-1 T^-1`` with ``RSS`` rotation-scale-shear."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    cos_sy = math.cos(sy)
    tan_sx = math.tan(sx)
    rot_minus_sy = rot - sy
    a = math.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot_minus_sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    cx_t, cy_t = cx + tx, cy + ty
    m[2] += cx - m[0] * cx_t - m[1] * cy_t
    m[5] += cy - m[3] * cx_t - m[4] * cy_t
    return m


def _fill_values(fill: list[float] | None, channels: int, interpolation: str) -> Tensor | None:
    """The fill a warp kernel takes: uint8 ``[C]`` for nearest (rounded as torchvision lands
    it), float32 ``[C]`` for bilinear, ``None`` for bilinear with ``fill=None``. A single
    value, or the first of three on a one-channel image, fills every channel."""
    values = [0.0] if fill is None else fill
    if len(values) != channels:
        values = values[:1]
    t = torch.tensor(values, dtype=torch.float32).clamp_(0, 255).expand(channels).contiguous()
    if interpolation == "nearest":
        return t.round_().to(torch.uint8)
    return None if fill is None else t


def _warp(
    x: Tensor,
    rows: Tensor,
    matrices: list[list[float]],
    interpolation: str,
    fill: list[float] | None,
) -> Tensor:
    """``x[rows]`` warped in place by the inverse ``matrices`` (one per row)."""
    _, ch, height, width = x.shape
    factors = _geometry.grid_factors(torch.tensor(matrices, dtype=torch.float64), height, width)
    terms = _geometry.grid_terms(factors, height, width)  # host float32, tiny
    fill_t = _fill_values(fill, ch, interpolation)
    pack = HostPack()
    slots = [pack.add(t) for t in (*terms, fill_t)]
    moved = pack.to(x.device)  # one pinned, non-blocking copy (host tensors stay)
    terms_d = tuple(moved[s] for s in slots[:3])
    fill_d = moved[slots[3]]

    def warp(part: Tensor) -> Tensor:
        with _geometry.float32_math(part.device):
            if interpolation == "nearest":
                # Continuous per-sample matrices: no index cache, one gather for the rows.
                index = _geometry.source_index(_geometry.grid(*terms_d), height, width)
                _gather.gather_nearest(part, part, None, index, fill_d)
                return part
            return _geometry.warp_bilinear(part, part, terms_d, fill_d)

    return run_rows(warp, x, rows)


# ==================================================================== transforms
class _AffineBase(RoutedTransform):
    """What RandomAffine and RandomRotation share: interpolation, fill, centre, the warp."""

    def _setup(self, interpolation: object, fill: object, center: object) -> None:
        self.interpolation = _interpolation(interpolation)
        self.fill = _fill(fill)
        self.center = _center(center)

    def _center_f(self, height: int, width: int) -> tuple[float, float]:
        if self.center is None:
            return 0.0, 0.0
        return self.center[0] - width * 0.5, self.center[1] - height * 0.5

    def _cost(self, rec: Record) -> Tensor:
        return torch.full((len(rec),), COSTS[f"warp_{self.interpolation}"])

    def _extra_repr(self) -> str:
        return f"interpolation={self.interpolation!r}, fill={self.fill}, center={self.center}"


class RandomAffine(_AffineBase):
    """torchvision's ``RandomAffine(degrees, translate, scale, shear, interpolation, fill,
    center)`` with a draw per sample.

    Record: ``angle`` float32 ``[B]``, ``translate`` float32 ``[B, 2]`` (the uniform draws in
    ``[0, 1)``; see :meth:`resolve`), ``scale`` float32 ``[B]``, ``shear`` float32 ``[B, 2]``.
    """

    num_draws = 6  # angle, tx, ty, scale, shear x, shear y

    def __init__(
        self,
        degrees: float | Sequence[float],
        translate: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
        shear: float | Sequence[float] | None = None,
        interpolation: str | InterpolationMode = "nearest",
        fill: Fill = 0,
        center: Sequence[float] | None = None,
        *,
        stream: int = FIRST_STREAM,
    ) -> None:
        super().__init__(stream=stream)
        with named(self.name):
            self.degrees = _angle_range("degrees", degrees)
            self.translate = _pair("translate", translate, 0.0, 1.0, ordered=False)
            self.scale = _pair("scale", scale, 0.0, math.inf, ordered=True, open_low=True)
            self.shear = None if shear is None else _angle_range("shear", shear, (2, 4))
            self._setup(interpolation, fill, center)

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        n = len(idx)
        angle = uniform_in(words[:, 0], *self.degrees)
        translate = rng.bits_to_uniform(words[:, 1:3])
        scale = uniform_in(words[:, 3], *self.scale) if self.scale else torch.ones(n)
        shear = torch.zeros(n, 2)
        if self.shear is not None:
            shear[:, 0] = uniform_in(words[:, 4], *self.shear[:2])
            if len(self.shear) == 4:
                shear[:, 1] = uniform_in(words[:, 5], *self.shear[2:])
        tensors = {"angle": angle, "translate": translate, "scale": scale, "shear": shear}
        return Record(tensors, n)

    def resolve(self, rec: Record, height: int, width: int) -> list[dict[str, object]]:
        """torchvision's ``affine`` arguments of each sample for ``height x width`` images:
        ``angle``, ``translate`` (integer pixels: ``round(uniform(-t * size, t * size))``, the
        uniform in float32 as torchvision draws it), ``scale`` and ``shear``."""
        rec = rec.to("cpu")
        out = []
        angles, scales = rec["angle"].tolist(), rec["scale"].tolist()
        shears, draws = rec["shear"].tolist(), rec["translate"]
        if self.translate is not None:
            limits = torch.tensor(
                [float(self.translate[0] * width), float(self.translate[1] * height)],
                dtype=torch.float64,
            )
            shifts = (-limits + 2.0 * limits * draws.double()).to(torch.float32).tolist()
        else:
            shifts = [[0.0, 0.0]] * len(rec)
        for i in range(len(rec)):
            out.append(
                {
                    "angle": angles[i],
                    "translate": [int(round(shifts[i][0])), int(round(shifts[i][1]))],
                    "scale": scales[i],
                    "shear": shears[i],
                }
            )
        return out

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        height, width = x.shape[-2:]
        center = self._center_f(height, width)
        matrices = [
            inverse_matrix(center, p["angle"], p["translate"], p["scale"], p["shear"])
            for p in self.resolve(rec, height, width)
        ]
        return _warp(x, torch.arange(len(rec)), matrices, self.interpolation, self.fill)

    def _extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"shear={self.shear}, {super()._extra_repr()}"
        )


class RandomRotation(_AffineBase):
    """torchvision's ``RandomRotation(degrees, interpolation, expand=False, center, fill)``
    with an angle per sample (``expand=True`` changes the image size and is not routed).

    As torchvision's ``rotate``: the angle is taken modulo 360; without a centre, multiples of
    90 degrees that keep the size (0, 180; 90 and 270 on square images) are exact rotations,
    the rest warp. Record: ``angle`` float32 ``[B]``.
    """

    num_draws = 1

    def __init__(
        self,
        degrees: float | Sequence[float],
        interpolation: str | InterpolationMode = "nearest",
        expand: bool = False,
        center: Sequence[float] | None = None,
        fill: Fill = 0,
        *,
        stream: int = FIRST_STREAM,
    ) -> None:
        super().__init__(stream=stream)
        with named(self.name):
            self.degrees = _angle_range("degrees", degrees)
            if expand is not False:
                raise ConfigError(
                    f"`expand` must be False (an expanded rotation changes the image size per "
                    f"sample, which a batch cannot hold), got {expand!r}"
                )
            self._setup(interpolation, fill, center)

    def _sample(self, idx: Tensor, words: Tensor, epoch: int, seed: int) -> Record:
        return Record({"angle": uniform_in(words[:, 0], *self.degrees)}, len(idx))

    def _run(self, x: Tensor, rec: Record) -> Tensor:
        height, width = x.shape[-2:]
        angles = [a % 360 for a in rec["angle"].tolist()]  # Python's modulo, as torchvision
        quarter: dict[int, list[int]] = {}
        warped: list[int] = []
        for i, a in enumerate(angles):
            k = None
            if self.center is None:
                if a in (0.0, 180.0) or (height == width and a in (90.0, 270.0)):
                    k = int(a) // 90
            if k is None:
                warped.append(i)
            elif k:
                quarter.setdefault(k, []).append(i)
        for k, rows in quarter.items():
            x = run_rows(
                lambda part, k=k: torch.rot90(part, k, dims=(-2, -1)), x, torch.tensor(rows)
            )
        if warped:
            center = self._center_f(height, width)
            matrices = [
                inverse_matrix(center, -angles[i], (0.0, 0.0), 1.0, (0.0, 0.0)) for i in warped
            ]
            x = _warp(x, torch.tensor(warped), matrices, self.interpolation, self.fill)
        return x

    def _cost(self, rec: Record) -> Tensor:
        cost = super()._cost(rec)
        if self.center is None:  # 0 and 180 degrees need no warp at any size
            turn = rec["angle"].double().remainder(360.0)
            cost[turn == 0] = 0.0
            cost[turn == 180] = COSTS["quarter_turn"]
        return cost

    def _extra_repr(self) -> str:
        return f"degrees={self.degrees}, {super()._extra_repr()}"


class RandomHorizontalFlip(GatedTransform):
    """torchvision's ``RandomHorizontalFlip(p)``, per sample."""

    unit_cost = COSTS["flip"]

    def _apply_rows(self, x: Tensor, rows: Tensor, rec: Record) -> Tensor:
        return run_rows(lambda part: part.flip(-1), x, rows)


class RandomVerticalFlip(GatedTransform):
    """torchvision's ``RandomVerticalFlip(p)``, per sample."""

    unit_cost = COSTS["flip"]

    def _apply_rows(self, x: Tensor, rows: Tensor, rec: Record) -> Tensor:
        return run_rows(lambda part: part.flip(-2), x, rows)
