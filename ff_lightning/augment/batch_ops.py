"""Batch-level ops applied on the device to every sample after the policy.

- :func:`normalize`: fused uint8 -> float ``(x / 255 - mean) / std`` (in
  :mod:`ff_lightning.augment.normalization`, re-exported here).
- :class:`RandomErasing`: torchvision's rule, each sample its own rectangle.
- :class:`MixUpCutMix`: timm's MixUp/CutMix with soft targets.

Random draws are made on the CPU from a ``torch.Generator`` (passed per call, or made
from ``seed`` at construction) and moved to the images' device, so results do not depend
on the device and are reproducible. ``RandomErasing`` can instead key each sample's box
and its per-pixel noise (``value="random"``) by the sample's dataset index, with the
counter-based generator of :mod:`~ff_lightning.augment.rng`: then a sample is erased the
same way in any batch and on any route (and with the same box and the same draws on another
device type, whose float arithmetic may round the noise's last bit differently). On an accelerator no op loops over
samples; on the CPU, RandomErasing writes one slice per erased sample (cheaper there than
whole-batch masks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ff_lightning.augment import rng
from ff_lightning.augment._device import HostPack, device_cache, h2d
from ff_lightning.augment.normalization import IMAGENET_MEAN, IMAGENET_STD, normalize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MixUpCutMix", "RandomErasing", "normalize"]


def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`{name}` must be a tensor shaped [B, C, H, W], got {got}")


_AXES: dict[tuple[str, int], Tensor] = {}
device_cache(_AXES.clear)


def _axis(n: int, device: torch.device) -> Tensor:
    """int64 ``arange(n)`` on ``device``, kept per device and size (a constant)."""
    key = (str(device), n)
    axis = _AXES.get(key)
    if axis is None:
        if len(_AXES) > 64:
            _AXES.clear()
        axis = _AXES[key] = torch.arange(n, device=device)
    return axis


def _box_mask(edges: Tensor, height: int, width: int) -> Tensor:
    """bool ``[B, H, W]``: inside each sample's box, ``edges`` int64 ``[B, 4]`` on the images'
    device as ``(top, bottom, left, right)``, bottom and right exclusive."""
    rows = _axis(height, edges.device).view(1, height, 1)
    cols = _axis(width, edges.device).view(1, 1, width)
    e = edges.view(-1, 4, 1, 1)
    inside_rows = (rows >= e[:, 0]) & (rows < e[:, 1])  # [B, H, 1]
    inside_cols = (cols >= e[:, 2]) & (cols < e[:, 3])  # [B, 1, W]
    return inside_rows & inside_cols


_FILLS: dict[tuple, Tensor] = {}
device_cache(_FILLS.clear)


def _to(t: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """Copy a small host tensor to ``device``; on CUDA through pinned memory, non-blocking,
    because a copy from pageable memory would synchronise the stream every batch."""
    if dtype is not None:
        t = t.to(dtype)
    return h2d(t, device)


def _generator(
    generator: torch.Generator | int | None, own: torch.Generator | None
) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator if generator is not None else own


def _check_range(name: str, value: Sequence[float], low: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1]:
        raise ValueError(
            f"`{name}` must be (min, max) with {low} <= min <= max, got {tuple(value)}"
        )
    return float(value[0]), float(value[1])


Keys = tuple[int, int, "Tensor | Sequence[int]"]


def _check_keys(keys: Keys, batch: int) -> tuple[int, int, Tensor]:
    seed, epoch, indices = keys
    idx = rng.as_indices(indices)
    if idx.numel() != batch:
        raise ValueError(
            f"`keys` must give one dataset index per sample ({batch}), got {idx.numel()}"
        )
    return int(seed), int(epoch), idx


def _box_noise(
    noise_keys: tuple[Tensor, int, int],
    edges: Tensor,
    ch: int,
    height: int,
    width: int,
    dtype: torch.dtype,
) -> Tensor:
    """Keyed noise ``[B, C, H, W]`` on ``edges``' device whose value inside each box is
    the one the CPU path writes there (draw ``ERASE_NOISE_COUNTER + (c * h + y) * w + x``
    of the sample's index, box-relative ``y, x``); outside the boxes it is unused."""
    device = edges.device
    h_idx = _to(noise_keys[0], device).view(-1, 1, 1, 1)
    top, bottom, left, right = edges.view(-1, 4, 1, 1).unbind(1)
    bh, bw = (bottom - top).unsqueeze(1), (right - left).unsqueeze(1)  # [B, 1, 1, 1]
    y = (_axis(height, device).view(1, 1, height, 1) - top.unsqueeze(1)).clamp_(min=0)
    x = (_axis(width, device).view(1, 1, 1, width) - left.unsqueeze(1)).clamp_(min=0)
    c = _axis(ch, device).view(1, ch, 1, 1)
    ctr = rng.ERASE_NOISE_COUNTER + (c * bh + y) * bw + x
    # float32 as on the CPU path (16-bit uniforms do not survive bfloat16), then cast.
    return rng.normal_from_bits(rng.counter_bits(h_idx, ctr, *noise_keys[1:])).to(dtype)


class RandomErasing:
    """torchvision's ``RandomErasing`` for a batch, one rectangle per sample.

    Each sample is erased with probability ``p``; its rectangle has an area fraction
    uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``, up to 10 tries for one
    with ``h < H and w < W`` (none fits: the sample is left as is), and a uniform position.
    ``value``: a number, one number per channel, or ``"random"`` (standard normal per pixel).
    Works on float (normalised) or uint8 images.

    Args:
        seed: makes an internal CPU generator; a call's ``generator`` argument overrides it.
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float | Sequence[float] | str = 0.0,
        *,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"`p` must be in [0, 1], got {p}")
        self.p = float(p)
        self.scale = _check_range("scale", scale, 0.0)
        if self.scale[1] > 1.0:
            raise ValueError(f"`scale` must be within [0, 1], got {tuple(scale)}")
        self.ratio = _check_range("ratio", ratio, 1e-12)
        if isinstance(value, str) and value != "random":
            raise ValueError(
                f"`value` must be a number, a sequence of numbers or 'random', got {value!r}"
            )
        self.value = value
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | int | None = None,
        *,
        keys: Keys | None = None,
    ) -> Tensor:
        """Rectangles int64 ``[B, 4]`` as ``(top, left, h, w)``; ``h == 0`` means not erased.

        ``keys``: ``(seed, epoch, indices)`` draws each sample's box from its dataset index
        (the same box whichever batch, position or route the sample takes); otherwise the
        boxes come from ``generator`` (or the seed given at construction).
        """
        if keys is not None:
            seed, epoch, indices = _check_keys(keys, batch)
            u = rng.uniform(seed, epoch, indices, rng.STREAM_ERASE, 23, dtype=torch.float64)
        else:
            g = _generator(generator, self.generator)
            u = torch.rand(batch, 23, generator=g, dtype=torch.float64)
        area = height * width
        erase_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 1:11])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 11:21])
        h = torch.sqrt(erase_area * aspect).round().long()
        w = torch.sqrt(erase_area / aspect).round().long()
        ok = (h < height) & (w < width)
        first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)
        h = torch.gather(h, 1, first).squeeze(1)
        w = torch.gather(w, 1, first).squeeze(1)
        keep = ok.any(1) & (u[:, 0] < self.p)
        h, w = torch.where(keep, h, 0), torch.where(keep, w, 0)
        top = (u[:, 21] * (height - h + 1)).long()
        left = (u[:, 22] * (width - w + 1)).long()
        return torch.stack([top, left, h, w], dim=1)

    def __call__(
        self,
        images: Tensor,
        generator: torch.Generator | int | None = None,
        *,
        keys: Keys | None = None,
        inplace: bool = False,
    ) -> Tensor:
        """Erase ``[B, C, H, W]`` images on their device.

        ``keys``: ``(seed, epoch, indices)``, the dataset index of each batch position: each
        sample's box and noise are then drawn from its index, like every routed parameter.
        ``inplace``: on the CPU, write into ``images`` (which must not be needed afterwards)
        instead of a copy; on an accelerator the result is always a new tensor.
        """
        _check_images(images)
        bsz, ch, height, width = images.shape
        g = _generator(generator, self.generator)
        boxes = self.sample(bsz, height, width, g, keys=keys)
        random = isinstance(self.value, str)
        if random:
            if not images.is_floating_point():
                raise ValueError("`value='random'` needs float images, got uint8")
            if keys is None:  # one seed from the generator; batch positions as indices
                seed = int(torch.randint(0, 2**62, (1,), generator=g, dtype=torch.int64))
                keys = (seed, 0, torch.arange(bsz))
            noise_keys = rng.index_keys(keys[0], keys[1], keys[2], rng.STREAM_ERASE)
            fill = None
        else:
            fill = self._fill(images, ch)
        if images.device.type == "cpu":
            out = images if inplace else images.clone()
            # On the CPU, one slice per erased sample: only the erased pixels are touched.
            for b, (top, left, h, w) in enumerate(boxes.tolist()):
                if h == 0:
                    continue
                region = out[b, :, top : top + h, left : left + w]
                if random:
                    ctr = rng.ERASE_NOISE_COUNTER + torch.arange(ch * h * w).view(ch, h, w)
                    bits = rng.counter_bits(noise_keys[0][b], ctr, *noise_keys[1:])
                    region.copy_(rng.normal_from_bits(bits))
                else:
                    region.copy_(fill[0].expand_as(region))
            return out
        # On an accelerator, whole-batch masks (a handful of kernels, no loop over samples).
        top, left, h, w = boxes.unbind(1)
        edges = _to(torch.stack([top, top + h, left, left + w], dim=1), images.device)
        mask = _box_mask(edges, height, width)
        if random:
            fill = _box_noise(noise_keys, edges, ch, height, width, images.dtype)
        return torch.where(mask[:, None], fill, images)

    def _fill(self, images: Tensor, ch: int) -> Tensor:
        """The constant fill ``[1, C, 1, 1]`` in the images' dtype, on their device."""
        vals = torch.as_tensor(self.value, dtype=torch.float32).flatten()
        if vals.numel() not in (1, ch):
            raise ValueError(f"`value` must have 1 or {ch} numbers, got {vals.numel()}")
        vals = vals.expand(ch)
        key = (tuple(vals.tolist()), images.dtype, str(images.device))
        fill = _FILLS.get(key)
        if fill is None:  # copied once per value, dtype and device
            if len(_FILLS) > 64:
                _FILLS.clear()
            fill = _to(vals.to(images.dtype).view(1, -1, 1, 1), images.device)
            _FILLS[key] = fill
        return fill

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r})"


class MixUpCutMix:
    """timm's MixUp / CutMix for a batch, returning soft targets.

    Sample ``i`` is mixed with sample ``B - 1 - i`` (the batch flipped). Per batch
    (``mode="batch"``, timm's default) or per sample (``mode="elem"``): with probability
    ``prob`` mixing happens; CutMix is chosen with probability ``switch_prob`` when both
    alphas are positive, else whichever alpha is positive; ``lam ~ Beta(alpha, alpha)``.
    MixUp: ``x = lam * x + (1 - lam) * x_flipped``. CutMix pastes a box of area ``1 - lam``
    (timm's ``rand_bbox``, clipped to the image) from the flipped batch and sets ``lam`` to
    the kept area fraction.

    Targets: class indices int64 ``[B]`` (label smoothing applied) or soft float ``[B, C]``.
    Returns ``(images, targets)`` with targets float32 ``[B, num_classes]`` on the images'
    device, ``lam * t + (1 - lam) * t_flipped``; each row sums to 1.
    """

    MODES = ("batch", "elem")

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        num_classes: int = 1000,
        switch_prob: float = 0.5,
        *,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        mode: str = "batch",
        seed: int | None = None,
    ) -> None:
        for name, v in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not (isinstance(v, (int, float)) and 0.0 <= v < math.inf):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}")
        for name, v in (("switch_prob", switch_prob), ("prob", prob)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {v}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}")
        if mode not in self.MODES:
            raise ValueError(f"`mode` must be one of {self.MODES}, got {mode!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.num_classes = num_classes
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.label_smoothing = float(label_smoothing)
        self.mode = mode
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _beta(self, alpha: float, n: int, g: torch.Generator | None) -> Tensor:
        draws = rng.gamma_draws(alpha)
        u = torch.rand(n, 2 * draws, generator=g, dtype=torch.float64)
        return rng.dirichlet(u, alpha, 2)[:, 0]

    def sample(
        self, batch: int, height: int, width: int, generator: torch.Generator | int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample ``lam`` float64 ``[B]`` (already area-corrected for CutMix) and CutMix
        boxes int64 ``[B, 4]`` as ``(y0, y1, x0, x1)`` (empty for MixUp or no mixing)."""
        g = _generator(generator, self.generator)
        n = batch if self.mode == "elem" else 1
        u = torch.rand(n, 4, generator=g, dtype=torch.float64)
        lam_mix = (
            self._beta(self.mixup_alpha, n, g)
            if self.mixup_alpha > 0
            else torch.ones(n, dtype=torch.float64)
        )
        lam_cut = (
            self._beta(self.cutmix_alpha, n, g)
            if self.cutmix_alpha > 0
            else torch.ones(n, dtype=torch.float64)
        )
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cut = u[:, 1] < self.switch_prob
        else:
            use_cut = torch.full((n,), self.cutmix_alpha > 0)
        active = (u[:, 0] < self.prob) & self.enabled
        lam = torch.where(use_cut, lam_cut, lam_mix)
        lam = torch.where(active, lam, torch.ones_like(lam))
        # timm's rand_bbox: box of ratio sqrt(1 - lam) centred uniformly, clipped.
        cut_rat = torch.sqrt(1.0 - lam)
        cut_h, cut_w = (height * cut_rat).long(), (width * cut_rat).long()
        cy, cx = (u[:, 2] * height).long(), (u[:, 3] * width).long()
        y0, y1 = (cy - cut_h // 2).clamp(0, height), (cy + cut_h // 2).clamp(0, height)
        x0, x1 = (cx - cut_w // 2).clamp(0, width), (cx + cut_w // 2).clamp(0, width)
        boxes = torch.stack([y0, y1, x0, x1], dim=1)
        is_cut = use_cut & active
        boxes = torch.where(is_cut[:, None], boxes, torch.zeros_like(boxes))
        area = ((y1 - y0) * (x1 - x0)).to(torch.float64)
        lam = torch.where(is_cut, 1.0 - area / (height * width), lam)
        if n != batch:
            lam, boxes = lam.expand(batch), boxes.expand(batch, 4)
        return lam.contiguous(), boxes.contiguous()

    def soft_targets(self, targets: Tensor) -> Tensor:
        """float32 ``[B, num_classes]`` from class ids ``[B]`` (smoothed) or soft ``[B, C]``."""
        if targets.ndim == 1 and not targets.is_floating_point():
            # The range check reads values back, so it runs only for host tensors; on an
            # accelerator it would synchronise every step (FusionDataModule checks the targets
            # on the host before the transfer instead).
            if (
                targets.device.type == "cpu"
                and targets.numel()
                and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes)
            ):
                raise ValueError(
                    f"`targets` must be class indices in [0, {self.num_classes}), "
                    f"got values in [{int(targets.min())}, {int(targets.max())}]"
                )
            off = self.label_smoothing / self.num_classes
            out = torch.full((targets.numel(), self.num_classes), off, device=targets.device)
            return out.scatter_(1, targets.long()[:, None], 1.0 - self.label_smoothing + off)
        if targets.ndim == 2 and targets.shape[1] == self.num_classes:
            return targets.to(torch.float32)
        raise ValueError(
            f"`targets` must be int class indices [B] or soft targets [B, {self.num_classes}], "
            f"got {targets.dtype} {tuple(targets.shape)}"
        )

    def __call__(
        self, images: Tensor, targets: Tensor, generator: torch.Generator | int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mix ``[B, C, H, W]`` images and return ``(images, soft targets [B, num_classes])``."""
        _check_images(images)
        bsz, _, height, width = images.shape
        if targets.shape[0] != bsz:
            raise ValueError(f"`targets` has {targets.shape[0]} rows for {bsz} images")
        soft = self.soft_targets(targets.to(images.device))
        lam, boxes = self.sample(bsz, height, width, generator)
        # Everything per sample is computed on the host in float32 (the values the device
        # would compute) and travels in one pinned copy: the weights, the box edges.
        lam32 = lam.to(torch.float32)
        # CutMix samples: blend 1 (the box carries the mix); MixUp: lam, and no box.
        blend = torch.where(boxes[:, 1] > boxes[:, 0], 1.0, lam32)
        pack = HostPack()
        slots = [pack.add(t) for t in (lam32, 1.0 - lam32, blend, 1.0 - blend, boxes)]
        on_device = pack.to(images.device)  # the one host-to-device copy of the call
        lam_d, lam_c, blend_d, blend_c, edges = (on_device[k] for k in slots)
        flipped = images.flip(0)
        in_box = _box_mask(edges, height, width)[:, None]  # boxes are (y0, y1, x0, x1)
        work = images if images.is_floating_point() else images.to(torch.float32)
        flip_w = flipped if flipped.is_floating_point() else flipped.to(torch.float32)
        per = (bsz, 1, 1, 1)
        mixed = torch.where(in_box, flip_w, work * blend_d.view(per) + flip_w * blend_c.view(per))
        if not images.is_floating_point():
            mixed = mixed.round_().clamp_(0, 255).to(images.dtype)
        else:
            mixed = mixed.to(images.dtype)
        return mixed, soft * lam_d.view(bsz, 1) + soft.flip(0) * lam_c.view(bsz, 1)

    def __repr__(self) -> str:
        return (
            f"MixUpCutMix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"num_classes={self.num_classes}, switch_prob={self.switch_prob}, prob={self.prob}, "
            f"label_smoothing={self.label_smoothing}, mode={self.mode!r})"
        )
