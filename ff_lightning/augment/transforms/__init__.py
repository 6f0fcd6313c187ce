"""Routed per-sample transforms: torchvision v2's colour, blur and geometric transforms as
batched kernels with a parameter record per sample, on both routes.

Every transform here has the policy protocol (:mod:`ff_lightning.augment.transforms.base`):
``sample(indices, epoch, seed) -> Record``, ``apply_batch(images, record)`` on any device,
``apply_one(image, record_i)`` on the CPU, ``estimate_cost(record)``. A :class:`Chain` of them
(and of ``build_policy(...)`` policies) is ONE routed stage the pipeline drives like a
policy::

    from torchvision.transforms import v2
    from ff_lightning.augment.transforms import Chain, from_torchvision

    user = [v2.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.RandomGrayscale(0.2), v2.GaussianBlur(23)]
    stage = Chain([from_torchvision(t) for t in user])
    record = stage.sample(indices, epoch, seed)   # in the worker, before the route is known
    out = stage.apply_batch(images_uint8, record)  # either route, any device
"""

from __future__ import annotations

from ff_lightning.augment.transforms.base import FIRST_STREAM, RoutedTransform
from ff_lightning.augment.transforms.blur import GaussianBlur, PillowGaussianBlur
from ff_lightning.augment.transforms.composite import (
    Chain,
    PolicyStage,
    RandomApply,
    RandomChoice,
    RandomOrder,
)
from ff_lightning.augment.transforms.convert import (
    LIGHTLY_RECOGNISED,
    RECOGNISED,
    from_lightly,
    from_torchvision,
    unsupported_reason,
)
from ff_lightning.augment.transforms.geometric import (
    RandomAffine,
    RandomHorizontalFlip,
    RandomRotation,
    RandomVerticalFlip,
)
from ff_lightning.augment.transforms.jitter import ColorJitter
from ff_lightning.augment.transforms.pointwise import (
    RandomAdjustSharpness,
    RandomAutocontrast,
    RandomEqualize,
    RandomGrayscale,
    RandomInvert,
    RandomPosterize,
    RandomSolarize,
)
from ff_lightning.augment.transforms.record import Record

__all__ = [
    "FIRST_STREAM",
    "LIGHTLY_RECOGNISED",
    "RECOGNISED",
    "Chain",
    "ColorJitter",
    "GaussianBlur",
    "PillowGaussianBlur",
    "PolicyStage",
    "RandomAdjustSharpness",
    "RandomAffine",
    "RandomApply",
    "RandomAutocontrast",
    "RandomChoice",
    "RandomEqualize",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomInvert",
    "RandomOrder",
    "RandomPosterize",
    "RandomRotation",
    "RandomSolarize",
    "RandomVerticalFlip",
    "Record",
    "RoutedTransform",
    "from_lightly",
    "from_torchvision",
    "unsupported_reason",
]
