"""Policies from timm's own transform objects (what ``timm.data.create_transform`` returns).

:func:`policy_from_timm` reads a ``timm.data.auto_augment.RandAugment``, ``AutoAugment`` or
``AugMixAugment`` instance (its ops' names, probabilities, magnitudes, hparams, fill and
resampling, its layer count, choice weights, width, depth, alpha, blending) and returns the
matching policy, or ``None`` for any other object. timm is imported only to recognise the
classes; a caller without timm simply gets ``None``.
"""

from __future__ import annotations

import math
from typing import Any

from ff_lightning.augment.timm_augmix import TimmAugMix
from ff_lightning.augment.timm_policies import (
    OpSpec,
    TimmAutoAugment,
    TimmRandAugment,
    resolve_hparams,
)
from ff_lightning.errors import ConfigError

__all__ = ["policy_from_timm"]


def _timm_classes() -> tuple[type, type, type] | None:
    try:
        from timm.data import auto_augment as aa
    except ImportError:
        return None
    return aa.RandAugment, aa.AutoAugment, aa.AugMixAugment


def _spec(op: Any) -> OpSpec:
    std = op.magnitude_std
    return OpSpec(op.name, float(op.prob), float(op.magnitude), float(std or 0), op.magnitude_max)


def _hparams(ops: list[Any]) -> dict[str, Any]:
    """The hparams the ops share: their own dict, with the fill and resampling they were built
    with (``AugmentOp.kwargs``). Ops built with different ones cannot share one policy."""
    if not ops:
        raise ConfigError("a timm transform with no ops cannot be converted")
    fills = {tuple(op.kwargs["fillcolor"]) for op in ops}
    modes = {_modes(op.kwargs["resample"]) for op in ops}
    if len(fills) > 1 or len(modes) > 1:
        raise ConfigError(
            f"the timm transform's ops use different fill colours {sorted(fills)} or "
            f"resampling modes {sorted(modes)}; a policy has one of each"
        )
    hp = dict(ops[0].hparams)
    hp["img_mean"] = fills.pop()
    hp["interpolation"] = modes.pop()
    return resolve_hparams(hp)


def _modes(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else (value,)
    return tuple(int(getattr(v, "value", v)) for v in items)


def policy_from_timm(transform: Any, *, stream: int = 0) -> Any:
    """The policy equivalent to timm's ``transform``, or ``None`` if it is not one of timm's
    ``RandAugment``, ``AutoAugment`` or ``AugMixAugment``."""
    classes = _timm_classes()
    if classes is None:
        return None
    rand_cls, auto_cls, augmix_cls = classes
    if type(transform) is rand_cls:
        ops = list(transform.ops)
        weights = transform.choice_weights
        pol = TimmRandAugment.__new__(TimmRandAugment)
        pol.config = None
        pol._setup(
            [_spec(op) for op in ops],
            int(transform.num_layers),
            None if weights is None else [float(w) for w in weights],
            _hparams(ops),
            stream,
        )
        return pol
    if type(transform) is auto_cls:
        subs = [list(sub) for sub in transform.policy]
        pol = TimmAutoAugment.__new__(TimmAutoAugment)
        pol.config = None
        pol._setup([[_spec(op) for op in sub] for sub in subs], _hparams(sum(subs, [])), stream)
        return pol
    if type(transform) is augmix_cls:
        ops = list(transform.ops)
        pol = TimmAugMix.__new__(TimmAugMix)
        pol.config = None
        alpha = float(transform.alpha)
        if not math.isfinite(alpha):
            raise ConfigError(f"AugMix `alpha` must be finite, got {alpha!r}")
        pol._setup(
            [_spec(op) for op in ops],
            int(transform.width),
            int(transform.depth),
            alpha,
            bool(transform.blended),
            _hparams(ops),
            stream,
        )
        return pol
    return None
