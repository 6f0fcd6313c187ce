"""Augmentation: policies with route-independent parameters, kernels and batch-level ops.

``build_policy(name, **kwargs)`` gives a policy with ``sample(indices, epoch, seed) ->
Params``, ``apply_batch(images, params)`` (any device) and ``apply_one(image, params_i)``
(CPU worker route). ``ff_lightning.augment.rng`` holds the counter-based RNG that the
policy and the worker's crop/flip draw from. ``ff_lightning.augment.transforms`` holds the
routed per-sample torchvision v2 transforms (ColorJitter, GaussianBlur, RandomAffine, ...) with
the same protocol, and ``Chain`` to make one routed stage of them.
"""

from __future__ import annotations

from ff_lightning.augment import rng, transforms
from ff_lightning.augment.batch_ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MixUpCutMix,
    RandomErasing,
    normalize,
)
from ff_lightning.augment.params import Params
from ff_lightning.augment.policies import (
    POLICIES,
    AugMix,
    AutoAugment,
    NoAugment,
    Policy,
    RandAugment,
    TrivialAugmentWide,
    build_policy,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POLICIES",
    "AugMix",
    "AutoAugment",
    "MixUpCutMix",
    "NoAugment",
    "Params",
    "Policy",
    "RandAugment",
    "RandomErasing",
    "TrivialAugmentWide",
    "build_policy",
    "normalize",
    "rng",
    "transforms",
]
