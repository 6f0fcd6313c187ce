"""Augmentation: policies with route-independent parameters, kernels and batch-level ops.

``build_policy(name, **kwargs)`` gives a policy with ``sample(indices, epoch, seed) ->
Params``, ``apply_batch(images, params)`` (any device) and ``apply_one(image, params_i)``
(CPU worker route): torchvision's auto-augment policies, timm's (``timm_randaugment``,
``timm_autoaugment``, ``timm_augmix``: Pillow semantics, timm's config strings) and DeepAA
(``deepaa``, from a policy file). ``policy_from_timm(t)`` converts timm's own transform.
``ff_lightning.augment.transforms`` holds the routed per-sample torchvision v2 transforms
(ColorJitter, GaussianBlur, RandomAffine, ...) with the same protocol, and ``Chain`` to make one
routed stage of them. ``ff_lightning.augment.rng`` holds the counter-based RNG that the
policies and the worker's crop/flip draw from.
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
from ff_lightning.augment.deepaa import DeepAA
from ff_lightning.augment.op_record import OpRecord
from ff_lightning.augment.params import Params
from ff_lightning.augment.pil_policy import PilPolicy
from ff_lightning.augment.policies import (
    PIL_POLICIES,
    POLICIES,
    AugMix,
    AutoAugment,
    NoAugment,
    Policy,
    RandAugment,
    TrivialAugmentWide,
    build_policy,
)
from ff_lightning.augment.timm_augmix import TimmAugMix
from ff_lightning.augment.timm_convert import policy_from_timm
from ff_lightning.augment.timm_policies import TimmAutoAugment, TimmRandAugment

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POLICIES",
    "AugMix",
    "AutoAugment",
    "DeepAA",
    "MixUpCutMix",
    "NoAugment",
    "OpRecord",
    "PIL_POLICIES",
    "Params",
    "PilPolicy",
    "Policy",
    "RandAugment",
    "RandomErasing",
    "TimmAugMix",
    "TimmAutoAugment",
    "TimmRandAugment",
    "TrivialAugmentWide",
    "build_policy",
    "normalize",
    "policy_from_timm",
    "rng",
    "transforms",
]
