"""``FusionFlow``: the Lightning callback that times the pipeline and moves the device share.

The callback only times hooks, calls the pure :class:`~ff_lightning.control.controller.Controller`
and logs; the decision rule, the memory guard and the probes live in ``ff_lightning.control`` and ``ff_lightning.device``.

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
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ff_lightning.errors import ConfigError
from ff_lightning.frontends.namespaces import CALLBACK_BASES
from ff_lightning.frontends.options import FusionOptions
from ff_lightning.frontends.session import FusionSession, step_metrics
from ff_lightning.report import FitRecorder, probe_sample

log = logging.getLogger("ff_lightning")


class FusionFlow(*CALLBACK_BASES):  # type: ignore[misc]
    """Split each batch's augmentation between DataLoader workers and the device.

    Args:
        mode: ``"auto"`` (the controller picks the share), ``"off"`` (CPU workers only),
            ``"gpu"`` (all policy augmentation on the device) or ``"fixed"`` (``ratio``).
        ratio: device share for ``mode="fixed"`` (required there); rejected otherwise.
        **options: the rest of :class:`~ff_lightning.frontends.options.FusionOptions`:
            ``objective``, ``tolerance``, ``interval``, ``every_n_steps``, ``reserve_mb``,
            ``log_every_n_steps``, ``warmup_steps``, ``probe``, ``nvml_module``,
            ``controller_kwargs``, ``report``, ``report_dir`` (each documented there). With
            ``objective="cpu"`` the training loader is rebuilt through Lightning's dataloader
            reload when the worker count changes; ``report_dir`` defaults to the trainer's
            ``log_dir``, else ``default_root_dir``.
    """

    def __init__(self, mode: str = "auto", ratio: float | None = None, **options: Any) -> None:
        self.options = FusionOptions.build(
            "FusionFlow", "FusionFlow(mode='fixed', ratio=0.3)", mode=mode, ratio=ratio, **options
        )
        opts = self.options
        self.controller = opts.controller()
        self._user_reload: int | None = None  # the Trainer's own value while we ask a reload
        self.session = FusionSession(
            self.controller,
            interval=opts.interval,
            every_n_steps=opts.every_n_steps,
            reserve_mb=opts.reserve_mb,
            probe=opts.probe,
            nvml_module=opts.nvml_module,
        )
        self._recorder: FitRecorder | None = None
        self._last_global_step = 0

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def interval(self) -> str:
        return self.options.interval

    @property
    def every_n_steps(self) -> int:
        """Steps between decisions (raised to the warm-up plus a window when shorter)."""
        return self.session.every_n_steps

    @property
    def objective(self) -> str:
        return self.options.objective

    @property
    def tolerance(self) -> float:
        return float(self.options.tolerance)

    @property
    def report(self) -> bool:
        return self.options.report

    # ------------------------------------------------------------------ public
    @property
    def ratio(self) -> float:
        """Current share of each batch routed to the device for augmentation."""
        return float(self.controller.ratio)

    @property
    def history(self) -> list[Any]:
        """One record per decision, each with its ``reason``."""
        return list(self.controller.history)

    #: Tells a FusionDataModule that this callback's controller drives the device share (the
    #: DataModule otherwise routes with its own ``ratio``).
    drives_share = True

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode)

    # ------------------------------------------------------------------- setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from ff_lightning.frontends.datamodule import FusionDataModule

        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, FusionDataModule):
            raise ConfigError(
                "FusionFlow needs a FusionDataModule to route augmentation, got "
                f"{type(dm).__name__ if dm is not None else 'no datamodule'}; wrap your datasets as "
                "`dm = FusionDataModule(train_dataset, val_dataset, policy='randaugment')` and call "
                "`trainer.fit(model, datamodule=dm)`"
            )
        twins = [c for c in trainer.callbacks if isinstance(c, FusionFlow) and c is not self]
        if twins:
            modes = ", ".join(repr(c.mode) for c in (self, *twins))
            raise ConfigError(
                f"the Trainer has {len(twins) + 1} FusionFlow callbacks (modes {modes}); one "
                "controller drives the device share: keep one FusionFlow in `callbacks`"
            )
        self.session.pipeline = dm.pipeline
        if stage != "fit":
            return
        self._last_global_step = trainer.global_step
        device = pl_module.device if pl_module.device.type != "meta" else torch.device("cpu")
        note = self.session.attach(dm.pipeline, device)
        if note:
            rank_zero_info(f"FusionFlow: {note}")
        if self.report:
            probe = self.session.guard.probe if self.session.guard is not None else None
            self._recorder = FitRecorder(
                mode=self.mode, device=device, num_workers=dm.num_workers, probe=probe
            )

    # ------------------------------------------------------------------- steps
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"FusionFlow: mode={self.mode}, starting device share {self.ratio:.2f}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The gap across validation and epoch boundaries is not a training step.
        self.session.prev_end = None
        self._restore_reload(trainer)  # the new training loader is built by now

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation inside an epoch (val_check_interval) must not count as data wait.
        self.session.prev_end = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Under gradient accumulation several batches make one optimizer step: every batch is
        # measured, but decisions count optimizer steps and each step is logged once.
        stepped = trainer.global_step != self._last_global_step
        self._last_global_step = trainer.global_step
        measured = self.session.end_step(time.perf_counter(), optimizer_step=stepped)
        if self._recorder is not None:
            self._recorder.step(measured)
        if measured is not None and stepped:
            self._maybe_log(trainer, pl_module, measured)
        if self.session.step_decision_due:
            self._decide(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch":
            self._decide(trainer, pl_module)
        self._end_epoch(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_reload(trainer)
        if self._recorder is not None and trainer.is_global_zero:
            directory = self.options.report_dir or trainer.log_dir or trainer.default_root_dir
            self._recorder.finish(directory, self.controller.history, self.ratio)

    # ---------------------------------------------------------------- decision
    @staticmethod
    def _all_reduce(trainer: L.Trainer, op: str) -> Any:
        if trainer.world_size <= 1:
            return None
        return lambda t: trainer.strategy.reduce(t, reduce_op=op)

    def _reduce_fn(self, trainer: L.Trainer) -> Any:
        """The controller's reduce hook: statistics averaged over ranks (``None``: one rank)."""
        device = trainer.strategy.root_device if trainer.world_size > 1 else "cpu"
        return FusionSession.mean_reduce(self._all_reduce(trainer, "mean"), torch.device(device))

    def _agree_on_memory_cap(self, trainer: L.Trainer) -> None:
        """Under DDP, every rank takes the smallest memory cap any rank hit."""
        if trainer.world_size > 1:
            self.session.agree_on_memory_cap(
                self._all_reduce(trainer, "min"), trainer.strategy.root_device
            )

    def _decide(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        old = self.ratio
        device = trainer.strategy.root_device if trainer.world_size > 1 else "cpu"
        decision = self.session.decide(
            self._all_reduce(trainer, "mean"), self._all_reduce(trainer, "min"), device
        )
        msg = f"FusionFlow: device share {old:.2f} -> {self.ratio:.2f} ({decision.reason})"
        rank_zero_info(msg)
        log.debug(msg)
        self._log(trainer, {"fusionflow/decided_ratio": self.ratio})

    def _end_epoch(self, trainer: L.Trainer) -> None:
        """The CPU objective's worker decision; a new count rebuilds the training loader."""
        decision = self.session.end_epoch()
        if decision is None:
            return
        rank_zero_info(f"FusionFlow: {decision.reason}")
        self._log(trainer, {"fusionflow/workers": float(decision.workers or 0)})
        if decision.workers != decision.prev_workers:
            # Lightning's own reload: with `reload_dataloaders_every_n_epochs` set, the fit loop
            # asks the DataModule for a new training loader as the next epoch starts (before
            # `on_train_epoch_start`, where the Trainer's own value is put back). The sampler's
            # epoch, the router and the parameters do not depend on the loader.
            if self._user_reload is None:
                self._user_reload = trainer.reload_dataloaders_every_n_epochs
            trainer.reload_dataloaders_every_n_epochs = 1

    def _restore_reload(self, trainer: L.Trainer) -> None:
        if self._user_reload is not None:
            trainer.reload_dataloaders_every_n_epochs = self._user_reload
            self._user_reload = None

    # ------------------------------------------------------------------ logging
    def _maybe_log(self, trainer: L.Trainer, pl_module: L.LightningModule, stats: Any) -> None:
        if trainer.logger is None or trainer.global_step % self.options.log_every_n_steps != 0:
            return
        metrics = step_metrics(
            self.ratio,
            stats,
            self.session.guard,
            self.controller.workers,
            self.session.decode_fallbacks,
            self.session.augment_guards(),
        )
        util = probe_sample(self.session.guard.probe if self.session.guard else None)["gpu_util"]
        if util is not None:
            metrics["fusionflow/gpu_util"] = util  # NVML, percent; no CUDA sync
        self._log(trainer, metrics)

    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        """Plain floats straight to the loggers, on rank 0 only.

        ``LightningModule.log`` would turn every value into a tensor on the module's device, a
        blocking host-to-device copy (a CUDA synchronisation) per value per logged step.
        """
        if not trainer.is_global_zero or not trainer.loggers:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        # Each value once: the controller's state holds the share, the search and the history.
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict["controller"])
        if self.session.pipeline is not None:  # restored before the first training loader
            self.session.apply_workers()
