"""torchvision v2's per-image kernel for each auto-augment op: the reference the batched kernels
are tested against, and the ``apply_one_backend="torchvision"`` option of a policy.

Mirrors ``_AutoAugmentBase._apply_image_or_video_transform`` of torchvision v2; torchvision is
imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

FillArg = float | Sequence[float] | None


def _tv():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    return TF, InterpolationMode


def _ref_identity(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
    return image


def _ref_shear(axis: int):
    def ref(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
        TF, Mode = _tv()
        shear = [0.0, 0.0]
        shear[axis] = math.degrees(math.atan(m))
        return TF.affine_image(image, 0.0, [0, 0], 1.0, shear, Mode(interpolation), fill, [0, 0])

    return ref


def _ref_translate(axis: int):
    def ref(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
        TF, Mode = _tv()
        t = [0, 0]
        t[axis] = int(m)
        return TF.affine_image(image, 0.0, t, 1.0, [0.0, 0.0], Mode(interpolation), fill)

    return ref


def _ref_rotate(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
    TF, Mode = _tv()
    return TF.rotate_image(image, m, Mode(interpolation), fill=fill)


def _ref(fn_name: str, convert: Callable[[float], float | int] | None = None):
    def ref(image: Tensor, m: float, interpolation: str, fill: FillArg) -> Tensor:
        fn = getattr(_tv()[0], fn_name)
        return fn(image) if convert is None else fn(image, convert(m))

    return ref
