"""Build a policy and the batch-level op settings from a ``configs/augment/*.yaml`` node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ff_lightning.augment.batch_ops import IMAGENET_MEAN, IMAGENET_STD
from ff_lightning.augment.policies import Policy, build_policy

__all__ = ["AUGMENT_KEYS", "BatchOpsConfig", "build_from_config"]

AUGMENT_KEYS = (
    "name",
    "kwargs",
    "interpolation",
    "fill",
    "hflip",
    "random_erasing",
    "mixup_alpha",
    "cutmix_alpha",
    "mean",
    "std",
)


@dataclass(frozen=True)
class BatchOpsConfig:
    """Settings of the ops around the policy.

    ``hflip``: random horizontal flip in the worker; ``random_erasing``: probability of
    :class:`~ff_lightning.augment.batch_ops.RandomErasing` on the device;
    ``mixup_alpha``/``cutmix_alpha``: :class:`~ff_lightning.augment.batch_ops.MixUpCutMix`
    (0 disables); ``mean``/``std``: :func:`~ff_lightning.augment.batch_ops.normalize`.
    """

    hflip: bool = True
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(
                f"`random_erasing` must be a probability in [0, 1], got {self.random_erasing}"
            )
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(
                f"`mean` and `std` must have the same length and `std` > 0, got {self.mean}, {self.std}"
            )

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def build_from_config(cfg: Mapping[str, Any]) -> tuple[Policy, BatchOpsConfig]:
    """``(policy, batch-op settings)`` from a mapping with the keys of :data:`AUGMENT_KEYS`.

    Accepts a dict or an OmegaConf ``DictConfig``. Only ``name`` is required; ``kwargs``
    go to :func:`~ff_lightning.augment.build_policy` with ``interpolation`` and ``fill``.
    """
    unknown = sorted(k for k in cfg if k not in AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"unknown augment config key(s) {unknown}; allowed: {AUGMENT_KEYS}")
    if "name" not in cfg:
        raise ValueError("the augment config needs a `name` (the policy name)")
    kwargs = dict(cfg.get("kwargs") or {})
    for key in ("interpolation", "fill"):
        if key in cfg:
            if key in kwargs:
                raise ValueError(f"`{key}` is given both at the top level and in `kwargs`")
            value = cfg[key]
            kwargs[key] = (
                list(value)
                if key == "fill" and not isinstance(value, (int, float, type(None)))
                else value
            )
    policy = build_policy(cfg["name"], **kwargs)
    ops = BatchOpsConfig(
        hflip=bool(cfg.get("hflip", True)),
        random_erasing=float(cfg.get("random_erasing", 0.0)),
        mixup_alpha=float(cfg.get("mixup_alpha", 0.0)),
        cutmix_alpha=float(cfg.get("cutmix_alpha", 0.0)),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
    )
    return policy, ops
