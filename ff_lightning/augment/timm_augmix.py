"""timm's AugMix (``augment_and_mix_transform``, ``AugMixAugment``) with per-sample parameters.

Chains of timm ``AugmentOp`` applications (see :mod:`~ff_lightning.augment.timm_policies`, whose
op machinery it shares), mixed in float32 exactly as timm mixes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import pil_color, rng
from ff_lightning.augment._device import h2d
from ff_lightning.augment.op_record import OpRecord
from ff_lightning.augment.timm_grammar import parse_augmix
from ff_lightning.augment.timm_policies import _DRAWS, _fields, _specs, _TimmPolicy, resolve_hparams
from ff_lightning.augment.timm_tables import AUGMIX_OPS
from ff_lightning.errors import ConfigError

__all__ = ["TimmAugMix"]


class TimmAugMix(_TimmPolicy):
    """timm's ``augment_and_mix_transform(config, hparams)`` (``AugMixAugment``).

    ``width`` chains of ``depth`` ops (1..3 at random when ``depth <= 0``), ops uniform with
    replacement among timm's AugMix ops with probability 1 and magnitude ``m`` (uniform in
    ``[0, m]`` unless ``mstd`` says otherwise), weights ``w ~ Dirichlet(alpha)`` and
    ``m ~ Beta(alpha, alpha)`` in float32. Non-blended: ``blend(x, uint8(clip(sum_i w_i
    chain_i(x))), m)``; blended (``b1``): ``x`` blended with each chain in turn with timm's
    recomputed weights. Slots are chain-major; ``weights`` is ``[m, w_1, ..., w_width]``.
    """

    name = "timm_augmix"

    def __init__(
        self,
        config: str = "augmix-m3-w3",
        hparams: Mapping[str, Any] | None = None,
        *,
        stream: int = rng.STREAM_POLICY,
    ) -> None:
        cfg = parse_augmix(config)
        hp = resolve_hparams(hparams, magnitude_std=cfg.magnitude_std)
        hp.setdefault("magnitude_std", math.inf)
        self.config = config
        specs = _specs(AUGMIX_OPS, 1.0, cfg.magnitude, hp)
        self._setup(specs, cfg.width, cfg.depth, cfg.alpha, cfg.blended, hp, stream)

    def _setup(
        self, specs, width: int, depth: int, alpha: float, blended: bool, hparams, stream
    ) -> None:
        if width < 1:
            raise ConfigError(f"`w` (chains) must be an integer >= 1, got {width!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < math.inf):
            raise ConfigError(f"`a` (alpha) must be a positive finite number, got {alpha!r}")
        self._setup_ops(specs, hparams, stream)
        self.width, self.depth, self.alpha, self.blended = width, depth, float(alpha), bool(blended)
        self.max_depth = depth if depth > 0 else 3
        self.num_slots = width * self.max_depth
        self.num_weights = width + 1

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> OpRecord:
        w, d, k = self.width, self.max_depth, self.num_slots
        gd = rng.gamma_draws(self.alpha)
        b = rng.bits(seed, epoch, indices, self.stream, w + k * (1 + _DRAWS) + (w + 2) * gd)
        u = rng.bits_to_uniform(b, torch.float64)
        depth = (
            torch.full((b.shape[0], w), self.depth) if self.depth > 0 else 1 + (u[:, :w] * 3).long()
        )
        op_ids = rng.bits_to_randint(b[:, w : w + k], len(self.specs))
        slots = u[:, w + k : w + k * (1 + _DRAWS)].reshape(len(u), _DRAWS, k).transpose(1, 2)
        gam = u[:, w + k * (1 + _DRAWS) :]
        mix = rng.dirichlet(gam[:, : w * gd], self.alpha, w).to(torch.float32)
        m = rng.dirichlet(gam[:, w * gd :], self.alpha, 2)[:, :1].to(torch.float32)
        record = self._record(op_ids, slots, torch.cat([m, mix], 1))
        in_depth = torch.arange(d).repeat(w)[None, :] < depth.repeat_interleave(d, dim=1)
        return OpRecord(**{**_fields(record), "applied": record.applied & in_depth})

    def blended_weights(self, weights: Tensor) -> Tensor:
        """timm's ``_calc_blended_weights`` in float32: ``[B, width]`` blend factors."""
        ws = weights[:, 1:] * weights[:, :1]
        cump = torch.ones(ws.shape[0], dtype=torch.float32)
        out = []
        for c in reversed(range(ws.shape[1])):
            alpha = ws[:, c] / cump
            cump = cump * (1 - alpha)
            out.append(alpha)
        return torch.stack(out[::-1], 1)

    def apply_batch(self, images: Tensor, params: OpRecord) -> Tensor:
        self._check(images, params, 4)
        if len(params) == 0:
            return images
        record = params.to("cpu")  # see PilPolicy.apply_batch
        x = images.contiguous()
        host = record.weights if not self.blended else self.blended_weights(record.weights)
        wts = h2d(host.contiguous(), x.device).view(len(record), -1, 1, 1, 1)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if not self.blended else x
        for c in range(self.width):
            first = c * self.max_depth
            aug = self._chain(x, record, range(first, first + self.max_depth))
            aug = x if aug is None else aug
            if self.blended:
                out = pil_color.blend(out, aug, wts[:, c])
            else:
                out.add_(aug.to(torch.float32) * wts[:, c + 1])  # mixed += w_c * chain_c
        if self.blended:
            return out
        mixed = out.clamp_(0, 255).to(torch.uint8)
        return pil_color.blend(x, mixed, wts[:, 0])

    def _extra_repr(self) -> str:
        return f"config={getattr(self, 'config', None)!r}, width={self.width}, depth={self.depth}"
