"""The policy base class: a space of ops, op slots per sample, and how to apply them.

:class:`Policy` holds what every policy shares: magnitude tables for an image size, input
checks, ``apply_batch`` (any device: samples grouped by kernel per slot), ``apply_one`` (one CPU
image) and the CPU cost estimate routing reads. The five concrete policies live in
:mod:`ff_lightning.augment.policies`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode

from ff_lightning.augment.functional import REGISTRY, apply_op, apply_ops_grouped
from ff_lightning.augment.params import Params
from ff_lightning.augment.spaces import OpSpec, magnitude_table
from ff_lightning.errors import ConfigError
from ff_lightning.validation import check_int

__all__ = ["INTERPOLATIONS", "FillType", "Policy", "UnknownKwargError", "tv_apply"]

FillType = float | int | Sequence[float] | None

INTERPOLATIONS = ("nearest", "bilinear")


class UnknownKwargError(ConfigError, TypeError):
    """Unknown keyword argument for a policy (a ConfigError, hence a ValueError, and a TypeError)."""


_check_int = check_int  # the policies' name for the package's integer check


class Policy:
    """Base class: a space of ops, ``num_slots`` op slots per sample and how to apply them.

    Subclasses define ``name``, ``space`` (tuple of :class:`OpSpec`), ``num_bins``,
    ``num_slots`` and :meth:`sample`. Sequential policies apply slot 0, then slot 1, ...
    """

    name: str = ""
    space: tuple[OpSpec, ...] = ()
    num_bins: int = 1
    num_slots: int = 0
    num_weights: int = 0
    #: ``"batched"`` (default): ``apply_one`` runs the batched kernels on a batch of one,
    #: the device route's kernels (bit-identical to ``apply_batch`` on CPU) and the faster
    #: on one CPU thread at 224 px; ``"torchvision"``: torchvision v2's per-image kernels.
    #: Compare with ``recipes/benchmark_augment.py --apply-one``.
    apply_one_backend: str = "batched"

    def __init__(
        self, *, interpolation: str | InterpolationMode = "nearest", fill: FillType = 0
    ) -> None:
        interp = (
            interpolation.value if isinstance(interpolation, InterpolationMode) else interpolation
        )
        if interp not in INTERPOLATIONS:
            raise ConfigError(
                f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        self.interpolation: str = interp
        if fill is not None and not isinstance(fill, (int, float)):
            given = fill
            try:
                if isinstance(fill, (str, bytes)):
                    raise TypeError
                fill = [float(v) for v in fill]
            except (TypeError, ValueError):
                raise ConfigError(
                    "`fill` must be a number or a sequence of 1 or 3 numbers (pixel values "
                    f"0-255), got {given!r}"
                ) from None
            if len(fill) not in (1, 3):
                raise ConfigError(
                    f"`fill` must be a number or a sequence of 1 or 3 numbers, got {fill!r}"
                )
        self.fill: FillType = fill
        self.op_names: tuple[str, ...] = tuple(op.name for op in self.space)
        self._signed = torch.tensor([op.signed for op in self.space], dtype=torch.bool)
        # Ops handed to the grouped kernel; slots that are not applied map to Identity.
        self._apply_names = (
            self.op_names if "Identity" in self.op_names else (*self.op_names, "Identity")
        )
        self._identity_id = self._apply_names.index("Identity")
        self._tables: dict[tuple[int, int, str], Tensor] = {}

    # ---------------------------------------------------------------- sampling
    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> Params:
        """Draw the records of ``indices`` (deterministic in ``(seed, epoch, index)``)."""
        raise NotImplementedError

    def _signs(self, op_ids: Tensor, u: Tensor) -> Tensor:
        """torchvision's ``if signed and torch.rand(()) <= 0.5: magnitude *= -1``."""
        neg = self._signed[op_ids] & (u <= 0.5)
        return torch.where(neg, -1.0, 1.0).to(torch.float32)

    # ---------------------------------------------------------------- magnitudes
    def magnitude_table(
        self, height: int, width: int, device: torch.device | str = "cpu"
    ) -> Tensor:
        """float32 ``[len(space), num_bins]`` of unsigned magnitudes for ``height x width`` images."""
        dev = torch.device(device)
        key = (height, width, str(dev))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) > 64:
                self._tables.clear()
            table = magnitude_table(self.space, self.num_bins, height, width).to(dev)
            self._tables[key] = table
        return table

    def magnitudes(self, params: Params, height: int, width: int) -> Tensor:
        """Signed magnitudes float32 ``[B, K]`` in torchvision's units for ``height x width``."""
        table = self.magnitude_table(height, width, params.device)
        return table[params.op_ids, params.bins] * params.signs

    # ---------------------------------------------------------------- applying
    def _check(self, images: Tensor, params: Params, ndim: int) -> None:
        if (
            not isinstance(images, Tensor)
            or images.dtype != torch.uint8
            or images.ndim != ndim
            or images.shape[-3] not in (1, 3)
        ):
            shape = "[B, C, H, W]" if ndim == 4 else "[C, H, W]"
            shape += " with C = 1 or 3"
            got = (
                f"{images.dtype} {tuple(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ValueError(f"`images` must be a uint8 tensor shaped {shape}, got {got}")
        if not isinstance(params, Params):
            raise TypeError(f"`params` must be a Params, got {type(params).__name__}")
        n = images.shape[0] if ndim == 4 else 1
        if len(params) != n:
            raise ValueError(f"`params` has {len(params)} records for {n} image(s)")
        if params.num_slots != self.num_slots or params.weights.shape[1] != self.num_weights:
            raise ValueError(
                f"`params` has {params.num_slots} slots and {params.weights.shape[1]} weights, "
                f"{self.name} expects {self.num_slots} and {self.num_weights}"
            )

    def _grouped(
        self, images: Tensor, op_ids: Tensor, applied: Tensor, mags: Tensor, out: Tensor | None
    ) -> Tensor:
        ops = torch.where(applied, op_ids, self._identity_id)
        return apply_ops_grouped(
            images,
            ops,
            mags,
            self._apply_names,
            interpolation=self.interpolation,
            fill=self.fill,
            out=out,
        )

    def _chain(self, images: Tensor, p: Params, mags: Tensor, slots: range) -> Tensor | None:
        """Apply ``slots`` in order; the first applied slot writes a new tensor, the later
        ones transform it in place (no copy per slot). ``None``: no slot applied."""
        out = None
        for k in slots:
            if bool(p.applied[:, k].any()):
                src = images if out is None else out
                out = self._grouped(src, p.op_ids[:, k], p.applied[:, k], mags[:, k], out)
        return out

    def apply_batch(self, images: Tensor, params: Params) -> Tensor:
        """Augment uint8 ``[B, 3, H, W]`` on its device, each sample with its own record."""
        self._check(images, params, 4)
        if len(params) == 0 or self.num_slots == 0:
            return images
        # Op ids and magnitudes stay on the CPU: the grouping reads them there anyway, and
        # the kernels then skip identity samples without a device synchronisation.
        p = params.to("cpu")
        mags = self.magnitudes(p, images.shape[-2], images.shape[-1])
        out = self._chain(images, p, mags, range(self.num_slots))
        return images.clone() if out is None else out

    def apply_one(self, image: Tensor, params: Params) -> Tensor:
        """Augment one uint8 ``[3, H, W]`` CPU image with a record of length 1 (worker route)."""
        self._check(image, params, 3)
        if self.num_slots == 0:
            return image
        p = params.to("cpu")
        return self._apply_one(image, p, self.magnitudes(p, image.shape[-2], image.shape[-1])[0])

    def _apply_one(self, image: Tensor, p: Params, mags: Tensor) -> Tensor:
        ops, applied = p.op_ids[0].tolist(), p.applied[0].tolist()
        for k in range(self.num_slots):
            if applied[k]:
                image = self._op(image, ops[k], mags[k : k + 1])
        return image

    def _op(self, image: Tensor, op_id: int, mag: Tensor) -> Tensor:
        """One op on one image with the ``apply_one`` backend; ``mag`` is a ``[1]`` tensor."""
        name = self.op_names[op_id]
        if self.apply_one_backend == "batched":
            out = apply_op(
                image.unsqueeze(0), name, mag, interpolation=self.interpolation, fill=self.fill
            )
            return out[0]
        if self.apply_one_backend == "torchvision":
            return tv_apply(image, name, float(mag), self.interpolation, self.fill)
        raise ValueError(
            f"`apply_one_backend` must be one of ('batched', 'torchvision'), got {self.apply_one_backend!r}"
        )

    def estimate_cost(self, params: Params) -> Tensor:
        """Relative CPU cost float32 ``[B]`` of each record (sum of applied ops' costs).

        Useful to route the costliest samples to the device; costs are rough single-thread
        timings at 224 px relative to Brightness (``OpDef.cost`` in the op registry); AugMix's mixing
        is not counted.
        """
        cost = torch.tensor([REGISTRY[n].cost for n in self.op_names], dtype=torch.float32)
        per_slot = cost[params.op_ids.cpu()] * params.applied.cpu()
        return per_slot.sum(1) if self.num_slots else torch.zeros(len(params))

    # ---------------------------------------------------------------- misc
    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._extra_repr()
        sep = ", " if extra else ""
        return f"{type(self).__name__}({extra}{sep}interpolation={self.interpolation!r}, fill={self.fill!r})"


def tv_apply(
    image: Tensor, op: str, magnitude: float, interpolation: str, fill: FillType
) -> Tensor:
    """One op on one uint8 ``[3, H, W]`` image with torchvision v2's kernels.

    Mirrors ``_AutoAugmentBase._apply_image_or_video_transform`` of torchvision v2 (the
    registry's ``reference`` of each op).
    """
    entry = REGISTRY.get(op)
    if entry is None:
        raise ValueError(f"`op` {op!r} is not an auto-augment op")
    return entry.reference(image, magnitude, interpolation, fill)
