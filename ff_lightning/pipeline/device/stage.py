"""The device half of the pipeline as a plain object with two explicit steps.

``prepare(batch)`` runs on the host before the batch is copied to the device: it notes the
moment the batch was in hand (the end of the loop's data wait) and checks what must be checked
on the host. ``finish(batch)`` runs on the device after the copy: it decodes the share the workers left
encoded (``device_decode``; :mod:`ff_lightning.pipeline.device.decode`), applies the policy
parameters to the device-routed share (both chunked by the memory guard), normalises, runs the
batch-level ops and returns ``(images, targets)``. The Lightning DataModule's batch-transfer
hooks, the Accelerate adapter and the benchmark all call these same two methods.

No step here synchronises the device with the host: the route record stays on the host, small
host tensors reach the device through pinned, non-blocking copies, and device time is measured
with CUDA events read once they have completed (normally one step later).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import batch_ops, normalization
from ff_lightning.augment._device import h2d
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.batch import BatchRoute, StepStats, is_training_batch
from ff_lightning.pipeline.device.timer import DeviceTimer

__all__ = ["DeviceStage", "output_dtype_for"]


def output_dtype_for(output_dtype: str, precision_plugin: Any = None) -> torch.dtype:
    """The dtype the model receives: ``output_dtype`` unless ``"auto"``, else the dtype the
    Trainer hands its module (``bf16-true``: bfloat16, ``16-true``: float16, ``64-true``:
    float64, anything else float32, ``*-mixed`` included: Lightning gives mixed-precision
    modules float32 inputs and lets autocast cast inside, so code outside autocast still sees
    float32; ask for half inputs with ``output_dtype``)."""
    if output_dtype != "auto":
        return getattr(torch, output_dtype)
    desired = getattr(precision_plugin, "_desired_input_dtype", None)
    if isinstance(desired, torch.dtype) and desired.is_floating_point:
        return desired
    precision = str(getattr(precision_plugin, "precision", ""))
    return {"64-true": torch.float64}.get(precision, torch.float32)


class DeviceStage:
    """Augments the device share, normalises and runs the batch ops of every batch.

    Args:
        policy: the augmentation policy (``apply_batch`` on any device).
        mean, std: normalisation, one value per channel (``normalize=False`` skips them).
        normalize: ``True``: ``(x / 255 - mean) / std``; ``False``: floats in ``[0, 1]``.
        random_erasing, mixup_alpha, cutmix_alpha, num_classes: the batch-level ops (0: off).
        seed: seed of the batch ops' randomness (with the step count and the rank).
        guard: the memory guard that chunks device augmentation (``None``: a guard without a
            budget, which still falls back to the CPU on an out-of-memory error).
        device_decode: whether batches may carry encoded samples to decode here (a batch
            without them is augmented as usual either way).
        source: the training source, for files neither the device nor PIL can decode
            (``source[index]`` applies its ``on_error``).
        ops: the batch ops as ``[("erase", op), ("mix", op)]`` (a compiled pipeline's;
            overrides ``random_erasing`` and the alphas).
    """

    def __init__(
        self,
        policy: Any,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool = True,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        num_classes: int | None = None,
        seed: int = 0,
        guard: Any = None,
        device_decode: bool = False,
        source: Any = None,
        ops: list[tuple[str, Any]] | None = None,
    ) -> None:
        from ff_lightning.pipeline.device.decode import DeviceDecoder

        self.policy = policy
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalize = bool(normalize)
        self.num_classes = num_classes
        self.seed = int(seed)
        self._guard = guard
        self.device_decode = bool(device_decode)
        self.decoder = DeviceDecoder(source)
        self._decode_guard: tuple[Any, Any] | None = None  # (augment guard, its decode guard)
        self.timer = DeviceTimer()
        self.steps = 0  # training batches finished (seeds the batch ops; saved in checkpoints)
        self.last: StepStats | None = None  # the record of the latest training batch
        self.ready_at: float | None = None  # when `prepare` saw that batch (end of data wait)
        self.rank = 0
        self._ops: list[tuple[str, Any]] = list(ops or [])
        if ops is not None:
            self.num_classes = next(
                (getattr(op, "num_classes", None) for kind, op in ops if kind == "mix"), None
            )
        elif random_erasing > 0:
            self._ops.append(("erase", batch_ops.RandomErasing(p=random_erasing)))
        if ops is None and (mixup_alpha > 0 or cutmix_alpha > 0):
            mix = batch_ops.MixUpCutMix(
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, num_classes=num_classes
            )
            self._ops.append(("mix", mix))

    # ------------------------------------------------------------------ guard
    @property
    def guard(self) -> Any:
        if self._guard is None:
            from ff_lightning.pipeline.device.memory import MemoryGuard
            from ff_lightning.pipeline.device.probes import NullProbe

            self._guard = MemoryGuard(NullProbe())
        return self._guard

    @guard.setter
    def guard(self, guard: Any) -> None:
        self._guard = guard

    @property
    def decode_guard(self) -> Any:
        """The guard that chunks decoding: the augmentation guard's probe and reserve, its
        own per-sample figures (a decode buffer is ``H * W * 3`` bytes at full source
        resolution, unrelated to an augmented sample's working memory)."""
        from ff_lightning.pipeline.device.decode import DECODE_ESTIMATE_FACTOR
        from ff_lightning.pipeline.device.memory import MemoryGuard

        guard = self.guard
        if self._decode_guard is None or self._decode_guard[0] is not guard:
            dg = MemoryGuard(
                guard.probe,
                reserve_mb=guard.reserve_bytes / (1 << 20),
                logger=guard.logger,
                oom_errors=guard.oom_errors,
                estimate_factor=DECODE_ESTIMATE_FACTOR,
            )
            self._decode_guard = (guard, dg)
        return self._decode_guard[1]

    def augment_guards(self) -> list[Any]:
        """The memory guards that chunk the augmentation (this stage's; a multi-view stage adds
        one per further view group): what ``fusionflow/oom_events`` adds up."""
        return [self._guard] if self._guard is not None else []

    @property
    def ratio_cap(self) -> float | None:
        """The lowest device share a memory guard suggested after running out of memory, for
        the augmentation or for the decode (``None``: no cap)."""
        caps = [self.guard.ratio_cap] if self._guard is not None else []
        if self._decode_guard is not None and self._decode_guard[0] is self._guard:
            caps.append(self._decode_guard[1].ratio_cap)
        caps = [c for c in caps if c is not None]
        return min(caps) if caps else None

    @property
    def decode_fallbacks(self) -> int:
        """Samples routed to device decode that were decoded on the CPU instead (logged as
        ``fusionflow/decode_fallbacks``): not baseline JPEGs, or undecodable on the device."""
        return self.decoder.fallbacks

    # ------------------------------------------------------------------ steps
    def prepare(self, batch: Any) -> Any:
        """Host side, before the copy to the device. Returns ``batch`` unchanged."""
        if is_training_batch(batch):
            # The loop has the batch in hand: the time since the last step ended was data wait.
            self.ready_at = time.perf_counter()
            self.last = batch["route"].stats
            if self.num_classes and any(kind == "mix" for kind, _ in self._ops):
                self._check_targets(batch["targets"])
        return batch

    def finish(self, batch: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> Any:
        """Device side, after the copy: ``(images, targets)`` ready for the training step.

        ``dtype``: floating dtype of the returned images (the precision the module trains in).
        """
        images: Tensor = batch["images"]
        targets: Tensor = batch["targets"]
        route = batch.get("route")
        train = isinstance(route, BatchRoute)
        if train:
            if self.ready_at is not None and self.last is route.stats:
                # Wall time of the transfer: the whole copy when it is synchronous, the
                # enqueue time for pinned non-blocking copies on CUDA.
                route.stats.h2d_s = time.perf_counter() - self.ready_at
            images = self.augment(images, route, targets)
            self.steps += 1
        x = self._normalize(images, dtype)
        if train and self._ops:
            x, targets = self._batch_ops(x, targets, route, fresh=x is not images)
        return x, targets

    def close_step(self, prev_end: float | None, now: float, num_workers: int) -> StepStats | None:
        """The finished record of the latest training batch, for the step that ran from
        ``prev_end`` (the previous step's end; ``None`` after a clock reset) to ``now``.

        Fills in the data wait (``prev_end`` to :meth:`prepare`), the step time, the device
        augmentation time of the regions that have finished (CUDA events are polled, never
        synchronised) and the worker count. ``None`` when the step cannot be measured: the
        first step after a reset (its wait includes worker start-up or validation).
        """
        stats = self.last
        device_aug_s = sum(self.timer.collect())
        if prev_end is None or stats is None or self.ready_at is None:
            return None
        stats.data_wait_s = max(0.0, self.ready_at - prev_end)
        stats.step_s = now - prev_end
        stats.device_aug_s = device_aug_s
        stats.num_workers = int(num_workers)
        return stats

    # ------------------------------------------------------------------ pieces
    def augment(
        self,
        images: Tensor,
        route: BatchRoute,
        targets: Tensor | None = None,
        *,
        policy: Any = None,
        guard: Any = None,
    ) -> Tensor:
        """Decode the route's encoded samples into their slots, then apply the route's
        parameters to its device share of ``images`` (uint8, in place). ``targets`` changes
        only where a corrupt file was replaced (``on_error="skip"``). ``policy`` and ``guard``:
        another routed stage and memory guard than this stage's own (a view group's)."""
        k, b = route.n_device, int(images.shape[0])
        if k == 0 or images.is_floating_point():  # floats: nothing left to route
            return images
        if policy is None or policy is self.policy:
            apply, cpu = self._apply_device, self._cpu
        else:
            apply = cpu = policy.apply_batch  # the same kernels on either device
        # The timed region includes the decode: the controller's device cost per sample is
        # decode + augmentation, as the worker's CPU cost per sample is.
        self.timer.start(images.device)
        enc = route.encoded
        if enc is not None:
            if targets is None:
                targets = torch.empty(0, dtype=torch.long)
            self.decoder.decode_into(images, targets, enc, self.decode_guard)
        guard = self.guard if guard is None else guard
        if k == b:
            # `gpu` mode: the whole batch, no gather or scatter.
            out = guard.run(apply, images, route.params, cpu, total=b)
        else:
            idx = h2d(route.device_index, images.device)
            part = guard.run(apply, images.index_select(0, idx), route.params, cpu, total=b)
            out = images.index_copy_(0, idx, part)
        self.timer.stop()
        return out

    def _apply_device(self, images: Tensor, params: Any) -> Tensor:
        # The device route's kernels: the policy's batched apply (the guard chunks the call).
        return self.policy.apply_batch(images, params)

    def _cpu(self, images: Tensor, params: Any) -> Tensor:
        # The memory guard's last resort: the same kernels, on the host.
        return self.policy.apply_batch(images, params)

    def _check_targets(self, targets: Tensor) -> None:
        # On the host, before the transfer: reading device values later would sync.
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise ConfigError(
                f"targets must be class indices in [0, num_classes={self.num_classes}) for "
                f"mixup/cutmix, got values in [{int(targets.min())}, {int(targets.max())}]; "
                "set `num_classes` to the number of classes of the dataset"
            )

    def _normalize(self, images: Tensor, dtype: torch.dtype) -> Tensor:
        if images.is_floating_point():
            # The user's own worker-side transforms normalised already: cast only.
            return images.to(dtype)
        return self._normalize_u8(images, dtype)

    def _normalize_u8(self, images: Tensor, dtype: torch.dtype) -> Tensor:
        """uint8 -> ``dtype`` with the package's one normaliser (float32 arithmetic, ``dtype``
        written in the same pass; constants copied to each device once)."""
        c = int(images.shape[1])
        if not self.normalize:
            return normalization.normalize(images, (0.0,) * c, (1.0,) * c, dtype=dtype)
        if len(self.mean) != c:
            raise ConfigError(
                f"`mean` and `std` have {len(self.mean)} values but the images have {c} "
                "channels; give one value per channel"
            )
        return normalization.normalize(images, self.mean, self.std, dtype=dtype)

    def _batch_ops(
        self, x: Tensor, targets: Tensor, route: BatchRoute, *, fresh: bool
    ) -> tuple[Tensor, Tensor]:
        # The batch ops draw their random numbers on the CPU (same result on every device).
        # Erasing is keyed by each sample's (seed, epoch, index), like the routed parameters;
        # mixing pairs samples within the batch, so it is keyed by (seed, step, rank).
        g = torch.Generator()
        g.manual_seed(((self.seed * 7_919 + self.steps) * 1_000_003 + self.rank) % (1 << 64))
        for kind, op in self._ops:
            if kind == "erase":
                # The normaliser's fresh output is erased in place (not the loader's tensor).
                x = op(x, keys=(self.seed, route.epoch, route.indices), inplace=fresh)
            else:
                x, targets = op(x, targets, generator=g)
        return x, targets
