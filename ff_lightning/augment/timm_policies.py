"""timm's RandAugment and AutoAugment (AugMix: :mod:`~ff_lightning.augment.timm_augmix`) with route-independent per-sample parameters.

Each policy takes timm's config string and ``hparams`` dict (``"rand-m9-mstd0.5-inc1"``,
``{"translate_const": 100, "img_mean": (124, 116, 104)}``) and follows timm's ``AugmentOp``
for every application: applied with its probability (``u <= p``), magnitude ``m`` (noise:
``N(m, mstd)``, or uniform in ``[0, m]`` for an infinite std) clipped to ``[0, mmax or 10]``,
signed ops negated with probability 1/2, resampling chosen uniformly among
``hparams["interpolation"]`` (default bilinear or bicubic), fill ``hparams["img_mean"]``
(default ``(128, 128, 128)``), then the Pillow op (:mod:`~ff_lightning.augment.timm_ops`).
Every draw comes from :mod:`~ff_lightning.augment.rng` keyed by ``(seed, epoch, index)`` in the
policy's ``stream``; the record holds the clipped level, sign, resampling and extra draw of
every slot, and both routes apply it with the batched kernels of
:mod:`~ff_lightning.augment.pil_ops`.

:func:`~ff_lightning.augment.timm_convert.policy_from_timm` builds the same policies from timm's
own transform objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import rng
from ff_lightning.augment.op_record import OpRecord
from ff_lightning.augment.pil_ops import Call
from ff_lightning.augment.pil_policy import PilPolicy, check_fill, check_stream
from ff_lightning.augment.pil_warp import RESAMPLE
from ff_lightning.augment.timm_grammar import parse_auto, parse_rand
from ff_lightning.augment.timm_ops import TIMM_OPS, timm_call
from ff_lightning.augment.timm_tables import (
    AA_POLICIES,
    LEVEL_DENOM,
    RAND_OPS,
    RAND_OPS_INCREASING,
    RAND_SETS,
    TIMM_DEFAULT_FILL,
    TIMM_DEFAULT_TRANSLATE_CONST,
)
from ff_lightning.errors import ConfigError

__all__ = ["OpSpec", "TimmAutoAugment", "TimmRandAugment", "resolve_hparams"]

_DRAWS = 6  # per slot: apply, 2 magnitude, sign, resampling, aux


@dataclass(frozen=True)
class OpSpec:
    """One timm ``AugmentOp``: its name, probability, magnitude, magnitude std and max."""

    name: str
    prob: float
    magnitude: float
    std: float = 0.0
    mmax: float | None = None


def _resample_ids(value: object) -> tuple[int, ...]:
    """Pillow ids from timm's ``hparams["interpolation"]`` (one mode or a sequence to pick from)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        key = getattr(item, "value", item)
        if isinstance(key, str) and key in RESAMPLE:
            key = RESAMPLE[key]
        if isinstance(key, bool) or key not in RESAMPLE.values():
            raise ConfigError(
                f"`hparams['interpolation']` must be Pillow's NEAREST, BILINEAR or BICUBIC (or "
                f"'nearest', 'bilinear', 'bicubic'), or a sequence of them; got {value!r}"
            )
        out.append(int(key))
    if not out:
        raise ConfigError("`hparams['interpolation']` must not be empty")
    return tuple(out)


def resolve_hparams(hparams: Mapping[str, Any] | None, **defaults: Any) -> dict[str, Any]:
    """timm's ``hparams or dict(_HPARAMS_DEFAULT)``, then ``setdefault`` of ``defaults`` (the
    config string's ``mstd``/``mmax``; values the caller already set win, as in timm)."""
    if hparams is not None and not isinstance(hparams, Mapping):
        raise ConfigError(f"`hparams` must be a dict (timm's hparams) or None, got {hparams!r}")
    hp = (
        dict(hparams)
        if hparams
        else {
            "translate_const": TIMM_DEFAULT_TRANSLATE_CONST,
            "img_mean": TIMM_DEFAULT_FILL,
        }
    )
    for key, value in defaults.items():
        if value is not None:
            hp.setdefault(key, value)
    for key in ("magnitude_std", "translate_const", "translate_pct"):
        value = hp.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"`hparams['{key}']` must be a number, got {value!r}")
    mmax = hp.get("magnitude_max")
    if mmax is not None and (
        isinstance(mmax, bool) or not isinstance(mmax, (int, float)) or mmax < 0
    ):
        raise ConfigError(f"`hparams['magnitude_max']` must be a number >= 0, got {mmax!r}")
    return hp


class _TimmPolicy(PilPolicy):
    """Shared machinery: a table of :class:`OpSpec`, draws per slot, calls, costs."""

    def _setup_ops(self, specs: Sequence[OpSpec], hparams: Mapping[str, Any], stream: int) -> None:
        for spec in specs:
            if spec.name not in TIMM_OPS:
                raise ConfigError(
                    f"op {spec.name!r} must be one of timm's ops {tuple(TIMM_OPS)}, got {spec.name!r}"
                )
            if spec.name in ("TranslateX", "TranslateY") and "translate_const" not in hparams:
                raise ConfigError(
                    f"op {spec.name!r} needs `hparams['translate_const']` (pixels at magnitude 10)"
                )
        self.stream = check_stream(stream)
        self.hparams = dict(hparams)
        self.fill = check_fill("hparams['img_mean']", hparams.get("img_mean", TIMM_DEFAULT_FILL))
        self.resample_choices = _resample_ids(hparams.get("interpolation", ("bilinear", "bicubic")))
        self.specs = tuple(specs)
        self.op_names = tuple(s.name for s in specs)
        f64 = torch.float64
        self._prob = torch.tensor([s.prob for s in specs], dtype=f64)
        self._magnitude = torch.tensor([s.magnitude for s in specs], dtype=f64)
        self._std = torch.tensor([s.std for s in specs], dtype=f64)
        self._upper = torch.tensor([s.mmax or LEVEL_DENOM for s in specs], dtype=f64)
        kinds = [TIMM_OPS[s.name].kind for s in specs]
        geometric = [TIMM_OPS[s.name].geometric for s in specs]
        self._cost, self._geometric = self.kind_cost(kinds, geometric)

    # ---------------------------------------------------------------- drawing
    def _draw_slots(self, op_ids: Tensor, u: Tensor) -> dict[str, Tensor]:
        """Per-slot fields from ``op_ids [B, K]`` and uniforms ``u [B, K, 6]`` (float64)."""
        prob = self._prob[op_ids]
        applied = (prob >= 1.0) | (u[..., 0] <= prob)
        base, std = self._magnitude[op_ids], self._std[op_ids]
        gauss = base + std * rng.normal(u[..., 1], u[..., 2])
        level = torch.where(std > 0, gauss, base)
        level = torch.where(torch.isinf(std), base * u[..., 1], level)  # random.uniform(0, m)
        level = torch.minimum(level, self._upper[op_ids]).clamp(min=0.0)
        choices = torch.tensor(self.resample_choices, dtype=torch.int64)
        pick = (u[..., 4] * len(choices)).to(torch.int64).clamp(max=len(choices) - 1)
        return {
            "applied": applied,
            "levels": level,
            "signs": torch.where(u[..., 3] > 0.5, -1.0, 1.0).to(torch.float32),
            "resample": choices[pick],
            "aux": u[..., 5],
        }

    def _record(self, op_ids: Tensor, u: Tensor, weights: Tensor | None = None) -> OpRecord:
        fields = self._draw_slots(op_ids, u)
        n = op_ids.shape[0]
        return OpRecord(
            op_ids=op_ids,
            bins=torch.zeros_like(op_ids),
            weights=torch.zeros(n, 0) if weights is None else weights,
            **fields,
        )

    # ---------------------------------------------------------------- applying
    def calls(self, record: OpRecord, slot: int, height: int, width: int) -> list[Call]:
        names = [self.op_names[k] for k in record.op_ids[:, slot].tolist()]
        rows = zip(
            names,
            record.levels[:, slot].tolist(),
            record.signs[:, slot].tolist(),
            record.resample[:, slot].tolist(),
            record.aux[:, slot].tolist(),
            strict=True,
        )
        hp = self.hparams
        return [timm_call(*row, hp, height, width) for row in rows]

    def op_cost(self, op_ids: Tensor, resample: Tensor) -> Tensor:
        return self.table_cost(op_ids, resample, self._cost, self._geometric)


def _specs(
    names: Sequence[str], prob: float, magnitude: float, hp: Mapping[str, Any]
) -> list[OpSpec]:
    std = float(hp.get("magnitude_std", 0) or 0)
    mmax = hp.get("magnitude_max")
    return [OpSpec(n, float(prob), float(magnitude), std, mmax) for n in names]


class TimmRandAugment(_TimmPolicy):
    """timm's ``rand_augment_transform(config, hparams, transforms)``.

    ``transforms``: a set name (``"3a"``, ``"3aw"``, ``"weights"``), a list of op names, or a dict
    of op weights; it overrides the config's ``t`` token, as in timm. With weights, the
    ``n`` ops of an image are drawn without replacement (each pick proportional to the
    remaining weights, as ``np.random.choice(..., replace=False, p=w)``); without, uniformly
    with replacement. Draws per sample: ``n`` op picks, then 6 per slot.
    """

    name = "timm_randaugment"

    def __init__(
        self,
        config: str = "rand-m9-mstd0.5-inc1",
        hparams: Mapping[str, Any] | None = None,
        transforms: str | Sequence[str] | Mapping[str, float] | None = None,
        *,
        stream: int = rng.STREAM_POLICY,
    ) -> None:
        cfg = parse_rand(config)
        hp = resolve_hparams(
            hparams, magnitude_std=cfg.magnitude_std, magnitude_max=cfg.magnitude_max
        )
        chosen = transforms if transforms is not None else cfg.transforms
        if isinstance(chosen, str):
            if chosen not in RAND_SETS:
                raise ConfigError(f"`transforms` must be one of {tuple(RAND_SETS)}, got {chosen!r}")
            chosen = RAND_SETS[chosen]
        elif chosen is None:
            chosen = RAND_OPS_INCREASING if cfg.increasing else RAND_OPS
        weights = None
        if isinstance(chosen, Mapping):
            names, weights = list(chosen), [float(w) for w in chosen.values()]
        else:
            names = list(chosen)
        self.config = config
        self._setup(_specs(names, cfg.prob, cfg.magnitude, hp), cfg.num_layers, weights, hp, stream)

    def _setup(self, specs, num_layers: int, weights, hparams, stream: int) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ConfigError(f"`n` (ops per image) must be an integer >= 0, got {num_layers!r}")
        if not specs:
            raise ConfigError("`transforms` must name at least one op, got none")
        self._setup_ops(specs, hparams, stream)
        self.num_layers = self.num_slots = num_layers
        self.choice_weights = None
        if weights is not None:
            w = torch.tensor(weights, dtype=torch.float64)
            if w.numel() != len(specs) or not bool((w >= 0).all()) or not float(w.sum()) > 0:
                raise ConfigError(
                    f"op weights must be non-negative with a positive sum, got {weights!r}"
                )
            if int((w > 0).sum()) < num_layers:
                raise ConfigError(
                    f"`n` = {num_layers} ops without replacement need as many ops of positive "
                    f"weight, got {int((w > 0).sum())}"
                )
            self.choice_weights = w / w.sum()

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> OpRecord:
        k = self.num_slots
        b = rng.bits(seed, epoch, indices, self.stream, k * (1 + _DRAWS))
        u = rng.bits_to_uniform(b, torch.float64)
        if self.choice_weights is None:
            op_ids = rng.bits_to_randint(b[:, :k], len(self.specs))
        else:
            op_ids = _without_replacement(self.choice_weights, u[:, :k])
        return self._record(op_ids, u[:, k:].reshape(len(u), _DRAWS, k).transpose(1, 2))

    def _extra_repr(self) -> str:
        return (
            f"config={getattr(self, 'config', None)!r}, ops={len(self.specs)}, n={self.num_layers}"
        )


def _without_replacement(weights: Tensor, u: Tensor) -> Tensor:
    """``k`` successive picks per row, each proportional to the weights not yet picked."""
    w = weights.expand(u.shape[0], -1).clone()
    picks = []
    for j in range(u.shape[1]):
        cdf = w.cumsum(1)
        cdf = cdf / cdf[:, -1:]
        pick = torch.searchsorted(cdf, u[:, j : j + 1].contiguous(), right=True).clamp(
            max=w.shape[1] - 1
        )
        picks.append(pick)
        w.scatter_(1, pick, 0.0)
    return torch.cat(picks, 1) if picks else torch.zeros(u.shape[0], 0, dtype=torch.int64)


class TimmAutoAugment(_TimmPolicy):
    """timm's ``auto_augment_transform(config, hparams)``: a sub-policy uniformly, then each of
    its ops as an ``AugmentOp`` (its own probability and magnitude). Draws per sample: the
    sub-policy, then 6 per slot."""

    name = "timm_autoaugment"

    def __init__(
        self,
        config: str = "original",
        hparams: Mapping[str, Any] | None = None,
        *,
        stream: int = rng.STREAM_POLICY,
    ) -> None:
        cfg = parse_auto(config)
        hp = resolve_hparams(hparams, magnitude_std=cfg.magnitude_std)
        std, mmax = float(hp.get("magnitude_std", 0) or 0), hp.get("magnitude_max")
        subs = [
            [OpSpec(n, p, float(m), std, mmax) for n, p, m in sub]
            for sub in AA_POLICIES[cfg.policy]
        ]
        self.config = config
        self._setup(subs, hp, stream)

    def _setup(self, subs: Sequence[Sequence[OpSpec]], hparams, stream: int) -> None:
        if not subs or not all(subs):
            raise ConfigError("an AutoAugment policy needs at least one non-empty sub-policy")
        specs = [s for sub in subs for s in sub]
        self._setup_ops(specs, hparams, stream)
        self.num_slots = max(len(sub) for sub in subs)
        ids = [
            [sum(len(s) for s in subs[:i]) + j for j in range(len(sub))]
            for i, sub in enumerate(subs)
        ]
        pad = [row + [-1] * (self.num_slots - len(row)) for row in ids]
        self.sub_ops = torch.tensor(pad, dtype=torch.int64)

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> OpRecord:
        k = self.num_slots
        b = rng.bits(seed, epoch, indices, self.stream, 1 + k * _DRAWS)
        u = rng.bits_to_uniform(b[:, 1:], torch.float64).reshape(len(b), _DRAWS, k).transpose(1, 2)
        ops = self.sub_ops[rng.bits_to_randint(b[:, 0], self.sub_ops.shape[0])]
        record = self._record(ops.clamp(min=0), u)
        applied = record.applied & (ops >= 0)  # a shorter sub-policy leaves its last slots out
        return OpRecord(**{**_fields(record), "applied": applied})

    def _extra_repr(self) -> str:
        return f"config={getattr(self, 'config', None)!r}, sub_policies={self.sub_ops.shape[0]}"


def _fields(record: OpRecord) -> dict[str, Tensor]:
    return {n: getattr(record, n) for n in record._names()}
