"""The parameter record of the Pillow-semantics policies (timm's and DeepAA's).

:class:`OpRecord` is a :class:`~ff_lightning.augment.params.Params` (same container protocol:
``len``, indexing by int / slice / bool mask / index tensor, ``.to(device)``, ``pin_memory``,
``Params.cat``, pickling, equality) with three more per-slot fields, because timm draws a
continuous magnitude, a resampling filter and, for some ops, one more random number per
application, none of which the bin tables of the torchvision policies can hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ff_lightning.augment.params import Params

__all__ = ["OpRecord"]


@dataclass(frozen=True, eq=False)
class OpRecord(Params):
    """Parameters of ``B`` samples for a policy with ``K`` op slots.

    Attributes (besides :class:`Params`'): ``op_ids`` index the policy's op table; ``bins`` a
    magnitude bin where the policy has bins (DeepAA), else 0; ``signs`` the random negation of
    signed ops (``-1.0``/``1.0``); ``applied`` whether the slot runs; ``weights`` the mixing
    weights (timm's AugMix: ``[m, w_1, ..., w_width]``, else none).

        levels: float64 ``[B, K]``: the magnitude level after noise and clipping (timm's
            ``0..mmax`` scale; DeepAA: the bin's fraction of the range).
        resample: int64 ``[B, K]``: Pillow's resampling id of geometric ops (0 nearest, 2
            bilinear, 3 bicubic).
        aux: float64 ``[B, K * A]``: ``A`` more draws per slot, for ops with their own randomness
            (timm's GaussianBlurRand radius, DeepAA's flip / cutout / crop positions).
    """

    levels: Tensor
    resample: Tensor
    aux: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.op_ids.shape[1]
        for name in ("levels", "resample"):
            if getattr(self, name).shape[1] != k:
                raise ValueError(
                    f"`{name}` must have {k} slots like `op_ids`, got {tuple(getattr(self, name).shape)}"
                )
        if k and self.aux.shape[1] % k:
            raise ValueError(
                f"`aux` must have a multiple of {k} columns (draws per slot), got {tuple(self.aux.shape)}"
            )

    @classmethod
    def empty(cls, num_slots: int, num_weights: int = 0, batch: int = 0, aux: int = 0) -> OpRecord:
        """Identity records: ``batch`` samples, nothing applied."""
        base = Params.empty(num_slots, num_weights, batch)
        return cls(
            op_ids=base.op_ids,
            bins=base.bins,
            signs=base.signs,
            applied=base.applied,
            weights=base.weights,
            levels=torch.zeros(batch, num_slots, dtype=torch.float64),
            resample=torch.zeros(batch, num_slots, dtype=torch.int64),
            aux=torch.zeros(batch, num_slots * aux, dtype=torch.float64),
        )

    def allclose(self, other: Params, *, atol: float = 1e-6) -> bool:
        """Integer fields equal; ``weights``, ``levels`` and ``aux`` within ``atol``."""
        if not isinstance(other, OpRecord) or not super().allclose(other, atol=atol):
            return False
        if not torch.equal(self.resample.cpu(), other.resample.cpu()):
            return False
        return all(
            getattr(self, n).shape == getattr(other, n).shape
            and torch.allclose(getattr(self, n).cpu(), getattr(other, n).cpu(), atol=atol, rtol=0)
            for n in ("levels", "aux")
        )

    def __repr__(self) -> str:
        return f"OpRecord(len={len(self)}, num_slots={self.num_slots}, num_weights={self.weights.shape[1]}, device={self.device})"
