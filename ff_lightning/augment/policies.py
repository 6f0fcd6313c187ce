"""Auto-augment policies with route-independent per-sample parameters.

A policy separates drawing from applying (principle 1): ``sample(indices, epoch, seed)``
draws a :class:`~ff_lightning.augment.params.Params` record per sample from the
counter-based RNG, keyed by ``(seed, epoch, index)`` alone; ``apply_batch`` (any device,
samples grouped by kernel, principle 2) and ``apply_one`` (one image on the CPU, in a worker)
apply exactly that record. The op tables, magnitude bins, signs and probabilities are
torchvision v2's (``RandAugment``, ``TrivialAugmentWide``, ``AutoAugment``, ``AugMix``).

Image-size-dependent magnitudes (Translate in RandAugment, AutoAugment and AugMix) are
resolved at apply time from the size of the images being augmented, with torchvision's
exact formula, by both routes (:meth:`Policy.magnitudes`); every image of a batch has the
same size after the worker's crop/resize.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode

from ff_lightning.augment import rng
from ff_lightning.augment._device import h2d
from ff_lightning.augment.params import Params
from ff_lightning.augment.policy import (
    FillType,
    Policy,
    UnknownKwargError,
    _check_int,
    tv_apply,
)
from ff_lightning.augment.spaces import (
    AUGMIX_PARTIAL_SPACE,
    AUGMIX_SPACE,
    AUTOAUGMENT_SPACE,
    AUTOAUGMENT_SUBPOLICIES,
    RANDAUGMENT_SPACE,
    TRIVIALAUGMENT_SPACE,
)
from ff_lightning.errors import ConfigError

__all__ = [
    "PIL_POLICIES",
    "POLICIES",
    "AugMix",
    "AutoAugment",
    "NoAugment",
    "Policy",
    "RandAugment",
    "TrivialAugmentWide",
    "build_policy",
    "tv_apply",
]

POLICIES = ("randaugment", "trivialaugment", "autoaugment", "augmix", "none")
#: Policies with Pillow semantics (timm's and DeepAA), built by their own modules.
PIL_POLICIES = ("timm_randaugment", "timm_autoaugment", "timm_augmix", "deepaa")


# ==================================================================== policies
class NoAugment(Policy):
    """The identity policy (``"none"``): records with no slots."""

    name = "none"

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Params:
        return Params.empty(0, 0, batch=len(rng.as_indices(indices)))


class RandAugment(Policy):
    """torchvision's ``RandAugment``: ``num_ops`` ops drawn uniformly with replacement,
    all at bin ``magnitude`` of ``num_magnitude_bins``, signed ops negated with p=0.5.

    Draws per sample: ``num_ops`` op choices, then ``num_ops`` signs.
    """

    name = "randaugment"
    space = RANDAUGMENT_SPACE

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        *,
        interpolation: str | InterpolationMode = "nearest",
        fill: FillType = 0,
    ) -> None:
        self.num_ops = _check_int("num_ops", num_ops, 0)
        self.num_bins = _check_int("num_magnitude_bins", num_magnitude_bins, 2)
        self.magnitude = _check_int("magnitude", magnitude, 0, num_magnitude_bins - 1)
        self.num_slots = num_ops
        super().__init__(interpolation=interpolation, fill=fill)

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Params:
        k = self.num_ops
        b = rng.bits(seed, epoch, indices, rng.STREAM_POLICY, 2 * k)
        op_ids = rng.bits_to_randint(b[:, :k], len(self.space))
        return Params(
            op_ids=op_ids,
            bins=torch.full_like(op_ids, self.magnitude),
            signs=self._signs(op_ids, rng.bits_to_uniform(b[:, k:])),
            applied=torch.ones_like(op_ids, dtype=torch.bool),
            weights=torch.zeros(len(op_ids), 0),
        )

    def _extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_bins}"


class TrivialAugmentWide(Policy):
    """torchvision's ``TrivialAugmentWide``: one op uniformly, a uniform magnitude bin of
    ``num_magnitude_bins``, signed ops negated with p=0.5.

    Draws per sample: op, bin, sign.
    """

    name = "trivialaugment"
    space = TRIVIALAUGMENT_SPACE
    num_slots = 1

    def __init__(
        self,
        num_magnitude_bins: int = 31,
        *,
        interpolation: str | InterpolationMode = "nearest",
        fill: FillType = 0,
    ) -> None:
        self.num_bins = _check_int("num_magnitude_bins", num_magnitude_bins, 2)
        super().__init__(interpolation=interpolation, fill=fill)

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Params:
        b = rng.bits(seed, epoch, indices, rng.STREAM_POLICY, 3)
        op_ids = rng.bits_to_randint(b[:, :1], len(self.space))
        return Params(
            op_ids=op_ids,
            bins=rng.bits_to_randint(b[:, 1:2], self.num_bins),
            signs=self._signs(op_ids, rng.bits_to_uniform(b[:, 2:3])),
            applied=torch.ones_like(op_ids, dtype=torch.bool),
            weights=torch.zeros(len(op_ids), 0),
        )

    def _extra_repr(self) -> str:
        return f"num_magnitude_bins={self.num_bins}"


class AutoAugment(Policy):
    """torchvision's ``AutoAugment``: a sub-policy uniformly, each of its two ops applied
    when ``u <= probability``, at the sub-policy's bin of 10, signed ops negated with p=0.5.

    Draws per sample: sub-policy, 2 apply draws, 2 signs.
    """

    name = "autoaugment"
    space = AUTOAUGMENT_SPACE
    num_bins = 10
    num_slots = 2

    def __init__(
        self,
        policy: Any = "imagenet",
        *,
        interpolation: str | InterpolationMode = "nearest",
        fill: FillType = 0,
    ) -> None:
        key = getattr(policy, "value", policy)  # torchvision's AutoAugmentPolicy enum
        if key not in AUTOAUGMENT_SUBPOLICIES:
            raise ConfigError(
                f"`policy` must be one of {tuple(AUTOAUGMENT_SUBPOLICIES)}, got {policy!r}"
            )
        self.policy: str = key
        super().__init__(interpolation=interpolation, fill=fill)
        subs = AUTOAUGMENT_SUBPOLICIES[key]
        #: ``[S, 2]`` op ids, bins, probabilities of the sub-policies.
        self.sub_ops = torch.tensor([[self.op_names.index(op) for op, _, _ in s] for s in subs])
        self.sub_bins = torch.tensor([[m or 0 for _, _, m in s] for s in subs])
        self.sub_probs = torch.tensor([[p for _, p, _ in s] for s in subs], dtype=torch.float32)

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Params:
        b = rng.bits(seed, epoch, indices, rng.STREAM_POLICY, 5)
        sub = rng.bits_to_randint(b[:, 0], len(self.sub_ops))
        op_ids = self.sub_ops[sub]
        return Params(
            op_ids=op_ids,
            bins=self.sub_bins[sub],
            signs=self._signs(op_ids, rng.bits_to_uniform(b[:, 3:5])),
            applied=rng.bits_to_uniform(b[:, 1:3]) <= self.sub_probs[sub],
            weights=torch.zeros(len(op_ids), 0),
        )

    def _extra_repr(self) -> str:
        return f"policy={self.policy!r}"


class AugMix(Policy):
    """torchvision's ``AugMix``.

    ``mixture_width`` chains of ``chain_depth`` ops (uniform in 1..3 when ``chain_depth <=
    0``), ops uniform, bins uniform in ``[0, severity)`` of 10, signed ops negated with
    p=0.5. The output is ``m0 * x + sum_i w_i * chain_i(x)`` computed in float32 and cast to
    uint8 (truncation) as torchvision does, with ``m ~ Dirichlet(alpha, alpha)`` and
    ``w = Dirichlet(alpha * 1_width) * m1``.

    Slots are chain-major: slot ``c * max_depth + j`` is op ``j`` of chain ``c``; slots past
    a chain's depth are not applied. ``weights`` is ``[m0, w_1, ..., w_width]``.
    Draws per sample: ``width`` depths, ``width * max_depth`` ops, bins and signs, then the
    gamma uniforms of the two Dirichlets.
    """

    name = "augmix"
    num_bins = 10  # torchvision's _PARAMETER_MAX

    def __init__(
        self,
        severity: int = 3,
        mixture_width: int = 3,
        chain_depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = True,
        *,
        interpolation: str | InterpolationMode = "nearest",
        fill: FillType = 0,
    ) -> None:
        self.severity = _check_int("severity", severity, 1, 10)
        self.mixture_width = _check_int("mixture_width", mixture_width, 1)
        if isinstance(chain_depth, bool) or not isinstance(chain_depth, int):
            raise ConfigError(
                f"`chain_depth` must be an integer (<= 0 for a random depth in 1..3), got {chain_depth!r}"
            )
        self.chain_depth = chain_depth
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not alpha > 0
            or math.isinf(alpha)
        ):
            raise ConfigError(f"`alpha` must be a positive finite number, got {alpha!r}")
        self.alpha = float(alpha)
        if not isinstance(all_ops, bool):
            raise ConfigError(f"`all_ops` must be a bool, got {all_ops!r}")
        self.all_ops = all_ops
        self.space = AUGMIX_SPACE if all_ops else AUGMIX_PARTIAL_SPACE
        self.max_depth = chain_depth if chain_depth > 0 else 3
        self.num_slots = self.mixture_width * self.max_depth
        self.num_weights = self.mixture_width + 1
        super().__init__(interpolation=interpolation, fill=fill)

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Params:
        w, d, k = self.mixture_width, self.max_depth, self.num_slots
        gd = rng.gamma_draws(self.alpha)
        b = rng.bits(seed, epoch, indices, rng.STREAM_POLICY, w + 3 * k + (2 + w) * gd)
        n = b.shape[0]
        if self.chain_depth > 0:
            depth = torch.full((n, w), self.chain_depth, dtype=torch.int64)
        else:
            depth = 1 + rng.bits_to_randint(b[:, :w], 3)
        o = w
        op_ids = rng.bits_to_randint(b[:, o : o + k], len(self.space))
        bins = rng.bits_to_randint(b[:, o + k : o + 2 * k], self.severity)
        signs = self._signs(op_ids, rng.bits_to_uniform(b[:, o + 2 * k : o + 3 * k]))
        applied = torch.arange(d).repeat(w)[None, :] < depth.repeat_interleave(d, dim=1)
        o += 3 * k
        # float64 keeps each row's weights independent of the vector kernels' tail handling.
        u = rng.bits_to_uniform(b[:, o:], torch.float64)
        m = rng.dirichlet(u[:, : 2 * gd], self.alpha, 2).to(torch.float32)
        mix = rng.dirichlet(u[:, 2 * gd :], self.alpha, w).to(torch.float32) * m[:, 1:2]
        return Params(
            op_ids=op_ids,
            bins=bins,
            signs=signs,
            applied=applied,
            weights=torch.cat([m[:, :1], mix], dim=1),
        )

    def apply_batch(self, images: Tensor, params: Params) -> Tensor:
        self._check(images, params, 4)
        if len(params) == 0:
            return images
        p = params.to("cpu")  # see Policy.apply_batch
        mags = self.magnitudes(p, images.shape[-2], images.shape[-1])
        width, depth, b = self.mixture_width, self.max_depth, images.shape[0]
        # The chains run side by side: one copy of the batch per chain, stacked chain-major
        # (row c * B + i is chain c of sample i), then one grouped call per depth over all
        # of them in place. Every sample's result is its own op's (the kernels are per
        # sample), so this is each chain run alone, with a third of the calls.
        chains = images.repeat(width, 1, 1, 1)
        for j in range(depth):
            cols = [c * depth + j for c in range(width)]
            applied = p.applied[:, cols].T.reshape(-1)
            if bool(applied.any()):  # host tensors: no synchronisation
                ops = p.op_ids[:, cols].T.reshape(-1)
                self._grouped(chains, ops, applied, mags[:, cols].T.reshape(-1), chains)
        wts = h2d(p.weights, images.device)[:, :, None, None, None]
        mix = wts[:, 0] * images  # float32, as torchvision's `m[:, 0] * batch`
        for c in range(width):
            mix.add_(wts[:, c + 1] * chains[c * b : (c + 1) * b])
        return mix.to(torch.uint8)

    def _apply_one(self, image: Tensor, p: Params, mags: Tensor) -> Tensor:
        ops, applied = p.op_ids[0].tolist(), p.applied[0].tolist()
        wts = p.weights[0]
        mix = wts[0] * image
        for c in range(self.mixture_width):
            aug = image
            for j in range(self.max_depth):
                s = c * self.max_depth + j
                if applied[s]:
                    aug = self._op(aug, ops[s], mags[s : s + 1])
            mix.add_(wts[c + 1] * aug)
        return mix.to(torch.uint8)

    def _extra_repr(self) -> str:
        return (
            f"severity={self.severity}, mixture_width={self.mixture_width}, chain_depth={self.chain_depth}, "
            f"alpha={self.alpha}, all_ops={self.all_ops}"
        )


_CLASSES: dict[str, type[Policy]] = {
    "randaugment": RandAugment,
    "trivialaugment": TrivialAugmentWide,
    "autoaugment": AutoAugment,
    "augmix": AugMix,
    "none": NoAugment,
}
_ALIASES = {"trivialaugmentwide": "trivialaugment", "identity": "none"}


def _pil_classes() -> dict[str, type]:
    """The Pillow-semantics policies by normalised name (imported on first use)."""
    from ff_lightning.augment.deepaa import DeepAA
    from ff_lightning.augment.timm_augmix import TimmAugMix
    from ff_lightning.augment.timm_policies import TimmAutoAugment, TimmRandAugment

    return {
        "timmrandaugment": TimmRandAugment,
        "timmautoaugment": TimmAutoAugment,
        "timmaugmix": TimmAugMix,
        "deepaa": DeepAA,
    }


def build_policy(name: str | Policy, **kwargs: Any) -> Policy:
    """Build a policy by name with torchvision's keyword arguments.

    ``name``: one of :data:`POLICIES` (case-insensitive; ``"trivialaugmentwide"`` is an
    alias), or a :class:`Policy`, returned as is. Keyword arguments as torchvision's classes
    name them (``num_ops``, ``magnitude``, ``num_magnitude_bins``, ``policy``, ``severity``,
    ``mixture_width``, ``chain_depth``, ``alpha``, ``all_ops``) plus ``interpolation``
    (``"nearest"`` or ``"bilinear"``) and ``fill``.

    ``name`` may also be one of :data:`PIL_POLICIES`, with their own arguments: timm's config
    string and ``hparams`` (``build_policy("timm_randaugment", config="rand-m9-mstd0.5-inc1",
    hparams={...})``; ``"timm_autoaugment"``, ``"timm_augmix"`` alike) or DeepAA's
    ``policy_file`` and ``variant``; every one takes ``stream``.
    """
    from ff_lightning.augment.pil_policy import PilPolicy

    if isinstance(name, (Policy, PilPolicy)):
        if kwargs:
            raise ConfigError(
                f"keyword arguments {sorted(kwargs)} cannot be applied to an existing policy {name!r}"
            )
        return name
    key = name.lower().replace("-", "").replace("_", "") if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    classes = {**_CLASSES, **_pil_classes()}
    if key not in classes:
        raise ConfigError(f"`name` must be one of {POLICIES + PIL_POLICIES}, got {name!r}")
    cls = classes[key]
    allowed = tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise UnknownKwargError(
            f"unknown keyword argument(s) {unknown} for policy {key!r}; allowed: {allowed}"
        )
    return cls(**kwargs)
