"""``FusionFlow``: the Lightning callback that times the pipeline and moves the device share.

The callback only times hooks, calls the pure :class:`~ff_lightning.fusion.controller.Controller`
and logs; the decision rule, the memory guard and the probes live in ``ff_lightning.fusion``.

Signals per training step (no CUDA synchronisation is added):

- data wait: from the previous ``on_train_batch_end`` to the DataModule's
  ``on_before_batch_transfer`` (Lightning runs the batch-transfer hooks before the callbacks'
  ``on_train_batch_start``, so that is the first moment the batch is in hand);
- device augmentation time of the routed share: CUDA events read once finished (normally one
  step late), a wall clock on CPU;
- step time: from one ``on_train_batch_end`` to the next;
- worker CPU seconds stamped on each batch; memory from the probe (NVML + allocator).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ff_lightning.errors import ConfigError

log = logging.getLogger("ff_lightning")


def _as_dict(obj: Any) -> dict[str, Any]:
    if is_dataclass(obj):
        return asdict(obj)  # type: ignore[arg-type]
    if isinstance(obj, dict):
        return dict(obj)
    return {"value": obj}


class FusionFlow(L.Callback):
    """Split each batch's augmentation between DataLoader workers and the device.

    Args:
        mode: ``"auto"`` (the controller picks the share), ``"off"`` (CPU workers only),
            ``"gpu"`` (all policy augmentation on the device) or ``"fixed"`` (``ratio``).
        ratio: device share for ``mode="fixed"`` (required there); ignored otherwise.
        interval: decide every ``"epoch"`` (default) or every ``every_n_steps`` ``"steps"``.
        every_n_steps: steps between decisions when ``interval="steps"``.
        reserve_mb: device memory (MiB) the memory guard leaves free for training.
        log_every_n_steps: how often the per-step ``fusionflow/*`` metrics are logged.
        warmup_steps: steps ignored after each change of ratio (``None``: the loader's
            prefetch depth plus one, since batches already in flight carry the old split).
        probe: a memory probe to use instead of NVML/allocator detection (tests, custom
            devices); see :mod:`ff_lightning.fusion.probes`.
        controller_kwargs: extra arguments for the controller (``min_ratio``, ``max_ratio``,
            ``hysteresis``, ...).
    """

    def __init__(
        self,
        mode: str = "auto",
        ratio: float | None = None,
        *,
        interval: str = "epoch",
        every_n_steps: int = 50,
        reserve_mb: float = 1024.0,
        log_every_n_steps: int = 10,
        warmup_steps: int | None = None,
        probe: Any = None,
        nvml_module: Any = None,
        controller_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from ff_lightning.fusion.glue import build_controller, check_fusion_args

        mode = check_fusion_args(
            mode,
            ratio,
            interval=interval,
            every_n_steps=every_n_steps,
            log_every_n_steps=log_every_n_steps,
            reserve_mb=reserve_mb,
            warmup_steps=warmup_steps,
            example="FusionFlow(mode='fixed', ratio=0.3)",
        )
        self.mode = mode
        self.interval = interval
        self.every_n_steps = every_n_steps
        self.reserve_mb = float(reserve_mb)
        self.log_every_n_steps = log_every_n_steps
        self.warmup_steps = warmup_steps
        self._probe = probe
        self._nvml_module = nvml_module
        self.controller = build_controller(mode, ratio, warmup_steps, controller_kwargs)
        self._dm: Any = None
        self._guard: Any = None
        self._prev_end: float | None = None
        self._steps_since_decision = 0
        self._last_log: dict[str, float] = {}
        self._agreed_cap: float | None = None  # DDP: the smallest cap any rank hit

    # ------------------------------------------------------------------ public
    @property
    def ratio(self) -> float:
        """Current share of each batch routed to the device for augmentation."""
        return float(self.controller.ratio)

    @property
    def history(self) -> list[Any]:
        """One record per decision, each with its ``reason``."""
        return list(self.controller.history)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode)

    # ------------------------------------------------------------------- setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from ff_lightning.data.datamodule import FusionDataModule

        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, FusionDataModule):
            raise ConfigError(
                "FusionFlow needs a FusionDataModule to route augmentation, got "
                f"{type(dm).__name__ if dm is not None else 'no datamodule'}; wrap your datasets as "
                "`dm = FusionDataModule(train_dataset, val_dataset, policy='randaugment')` and call "
                "`trainer.fit(model, datamodule=dm)`"
            )
        self._dm = dm
        if stage != "fit":
            return
        from ff_lightning.fusion.memory import MemoryGuard
        from ff_lightning.fusion.probes import make_probe

        device = pl_module.device if pl_module.device.type != "meta" else torch.device("cpu")
        if self._probe is None:
            probe, note = make_probe(device, nvml_module=self._nvml_module, logger=log)
            if note:
                rank_zero_info(f"FusionFlow: {note}")
        else:
            probe = self._probe
        self._guard = MemoryGuard(probe, reserve_mb=self.reserve_mb, logger=log)
        dm.memory_guard = self._guard
        if self.controller.warmup_steps is None:
            # Batches already prefetched carry the old split: skip them after each change.
            depth = dm.num_workers * dm.prefetch_factor if dm.num_workers > 0 else 0
            self.controller.warmup_steps = depth + 1
        dm.set_ratio(self.ratio)

    # ------------------------------------------------------------------- steps
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._dm is not None:
            self._dm.set_ratio(self.ratio)  # a restored checkpoint may have changed it
        rank_zero_info(f"FusionFlow: mode={self.mode}, starting device share {self.ratio:.2f}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The gap across validation and epoch boundaries is not a training step.
        self._prev_end = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation inside an epoch (val_check_interval) must not count as data wait.
        self._prev_end = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        from ff_lightning.fusion.controller import StepStats

        now = time.perf_counter()
        dm = self._dm
        stats = dm.stats
        rec = stats.last
        # Device augmentation regions that have finished (CUDA: polled, never synchronised).
        finished = stats.device_timer.collect()
        device_aug_s = sum(s for s, _ in finished)
        if self._prev_end is not None and stats.t_before_transfer is not None:
            wait = max(0.0, stats.t_before_transfer - self._prev_end)
            step_s = now - self._prev_end
            n_cpu = rec.batch_size - rec.n_device
            self.controller.observe(
                StepStats(
                    batch_size=rec.batch_size,
                    n_device=rec.n_device,
                    data_wait_s=wait,
                    step_s=step_s,
                    device_aug_s=device_aug_s,
                    cpu_aug_s=rec.cpu_aug_s,
                    n_cpu=n_cpu,
                    num_workers=dm.num_workers,
                    h2d_s=rec.h2d_s,
                    prep_s=rec.prep_s,
                    ratio=rec.ratio,
                )
            )
            self._maybe_log(trainer, pl_module, wait, step_s, device_aug_s, rec)
        self._prev_end = now
        guard = self._guard
        cap = getattr(guard, "ratio_cap", None) if guard is not None else None
        if self._agreed_cap is not None:
            # Never rise above the cap all ranks agreed on, or the ranks would drift apart.
            cap = self._agreed_cap if cap is None else min(cap, self._agreed_cap)
        if cap is not None and cap != self.controller.memory_cap:
            self.controller.set_memory_cap(cap)
            if self._dm is not None:
                # Apply the cap to the next batch the sampler emits, not at the next decision:
                # until then every device-routed batch would run out of memory again.
                self._dm.set_ratio(self.ratio)
        self._steps_since_decision += 1
        if self.interval == "steps" and self._steps_since_decision >= self.every_n_steps:
            self._decide(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch":
            self._decide(trainer, pl_module)

    # ---------------------------------------------------------------- decision
    def _reduce_fn(self, trainer: L.Trainer) -> Any:
        if trainer.world_size <= 1:
            return None

        def reduce(values: dict[str, float]) -> dict[str, float]:
            # Every rank must take the same decision: average the statistics first.
            keys = sorted(values)
            t = torch.tensor(
                [float(values[k]) for k in keys],
                dtype=torch.float64,
                device=trainer.strategy.root_device,
            )
            t = trainer.strategy.reduce(t, reduce_op="mean")
            return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}

        return reduce

    def _agree_on_memory_cap(self, trainer: L.Trainer) -> None:
        """Under DDP, every rank takes the smallest memory cap any rank hit.

        Between decisions each rank applies its own cap at once (its memory is what ran
        out); at a decision all ranks adopt the minimum so that they route alike again.
        """
        if trainer.world_size <= 1:
            return
        local = self.controller.memory_cap
        t = torch.tensor([float(local)], dtype=torch.float64, device=trainer.strategy.root_device)
        shared = float(trainer.strategy.reduce(t, reduce_op="min").item())
        if shared < 1.0:
            self._agreed_cap = shared
        if shared < local:
            self.controller.set_memory_cap(shared)

    def _decide(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps_since_decision = 0
        old = self.ratio
        self._agree_on_memory_cap(trainer)
        decision = self.controller.decide(reduce=self._reduce_fn(trainer))
        if self._dm is not None:
            self._dm.set_ratio(self.ratio)
        d = _as_dict(decision)
        msg = f"FusionFlow: device share {old:.2f} -> {self.ratio:.2f} ({d.get('reason', '')})"
        rank_zero_info(msg)
        log.debug(msg)
        if trainer.logger is not None:
            pl_module.log(
                "fusionflow/decided_ratio",
                self.ratio,
                on_step=False,
                on_epoch=True,
                rank_zero_only=True,
            )

    # ------------------------------------------------------------------ logging
    def _maybe_log(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        wait: float,
        step_s: float,
        aug_s: float,
        rec: Any,
    ) -> None:
        if trainer.logger is None or trainer.global_step % self.log_every_n_steps != 0:
            return
        from ff_lightning.fusion.glue import step_metrics

        metrics = step_metrics(self.ratio, wait, step_s, aug_s, rec, self._guard)
        self._last_log = metrics
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=max(rec.batch_size, 1))

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ratio": self.ratio,
            "history": [_as_dict(d) for d in self.controller.history],
            "controller": self.controller.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict["controller"])
        if self._dm is not None:
            self._dm.set_ratio(self.ratio)
