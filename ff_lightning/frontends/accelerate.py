"""``FusionAccelerate``: cooperative CPU/device augmentation in a hand-written training loop.

The Lightning callback :class:`~ff_lightning.FusionFlow` times Trainer hooks and calls the pure
controller. This adapter does the same for a plain PyTorch or Hugging Face Accelerate loop: it
owns the iteration, so it can time what the hooks time, and it reuses the
:class:`~ff_lightning.FusionDataModule` for everything else (the routed DataLoader, the
batch-transfer hooks that augment the device share, normalise and run the batch ops, the timing
records and the memory guard) and ``ff_lightning.control`` for the decisions::

    from accelerate import Accelerator
    from ff_lightning import FusionDataModule
    from ff_lightning.frontends.accelerate import FusionAccelerate

    accelerator = Accelerator()
    dm = FusionDataModule(train_ds, val_ds, policy="randaugment", image_size=224, batch_size=64)
    fusion = FusionAccelerate(dm, accelerator=accelerator, log_fn=accelerator.log)
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(fusion)
    for epoch in range(epochs):
        for images, targets in fusion.train_epoch(epoch):  # float, normalised, on the device
            loss = F.cross_entropy(model(images), targets)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
        for images, targets in fusion.eval_batches():  # normalised only
            ...

Signals per step, as the callback measures them (no CUDA synchronisation is added):

- data wait: from the moment the loop body hands control back (the generator resumes) to the
  moment the next batch is in hand (the device stage's ``prepare``);
- step time: from one resume to the next;
- device augmentation time of the routed share (CUDA events polled, a wall clock on CPU);
- the workers' CPU seconds stamped on each batch and the memory guard's ratio cap.

``accelerate`` is imported only by the recipe, never here: with ``accelerator=None`` this works
in a plain PyTorch loop, and any object with ``device``, ``num_processes``, ``reduce`` (and,
for multi-process evaluation, ``prepare_data_loader``) can stand in for an ``Accelerator``
(see :mod:`~ff_lightning.frontends.accelerate_ranks`; the arguments are checked in
:mod:`~ff_lightning.frontends.accelerate_args`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from ff_lightning.control.controller import Decision
from ff_lightning.control.session import FusionSession, _check_int, build_controller, step_metrics
from ff_lightning.errors import ConfigError
from ff_lightning.frontends.accelerate_args import check_accelerate_args
from ff_lightning.frontends.accelerate_ranks import (
    all_mean,
    all_min,
    is_main,
    rank,
    reduce_device,
    resolve_device,
    shard_eval_loader,
    shard_train_loader,
)
from ff_lightning.frontends.datamodule import FusionDataModule
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.report import FitRecorder

__all__ = ["FusionAccelerate"]

log = logging.getLogger("ff_lightning")

SPLITS = ("val", "test")


class FusionAccelerate:
    """Split each batch's augmentation between DataLoader workers and the device, without a Trainer.

    Args:
        datamodule: the :class:`~ff_lightning.FusionDataModule` holding the datasets and policy.
        mode: ``"auto"`` (the controller picks the share), ``"off"`` (CPU workers only),
            ``"gpu"`` (all policy augmentation on the device) or ``"fixed"`` (``ratio``).
        ratio: device share for ``mode="fixed"`` (required there, rejected elsewhere).
        interval: decide at the end of every ``"epoch"`` (default) or every ``every_n_steps``
            ``"steps"``.
        every_n_steps: steps between decisions when ``interval="steps"``.
        reserve_mb: device memory (MiB) the memory guard leaves free for training.
        accelerator: an ``accelerate.Accelerator`` (or ``None`` for a plain PyTorch loop). Its
            ``device`` is the default device; with ``num_processes > 1`` the training set is
            sharded per rank and the statistics are averaged across ranks before each
            decision, so every rank routes alike.
        log_fn: called as ``log_fn(metrics, step=global_step)`` on the main process with the
            same ``fusionflow/*`` metrics the callback logs (``accelerator.log`` fits).
        log_every_n_steps: how often the per-step metrics go to ``log_fn``.
        warmup_steps: steps ignored after each change of ratio (``None``: the loader's
            prefetch depth plus one, since batches already in flight carry the old split).
        probe: a memory probe to use instead of NVML/allocator detection (tests, custom
            devices); see :mod:`ff_lightning.pipeline.device.probes`.
        nvml_module: a ``pynvml``-like module for the NVML probe (tests).
        controller_kwargs: extra arguments for the controller (``min_ratio``, ``max_ratio``,
            ``hysteresis``, ...).
        report: record each step for the FusionFlow report, which :meth:`finish` prints on
            the main process and writes as ``fusionflow_report.json`` and ``fusionflow.png``.
        report_dir: where :meth:`finish` writes them (default: the working directory).
        objective: ``"throughput"`` or ``"cpu"`` (``mode="auto"``): as ``FusionFlow``'s, the
            fewest workers within ``tolerance`` of the best throughput, decided at the end of
            :meth:`train_epoch`; the next epoch's loader is built with that count.
        tolerance: throughput loss the ``"cpu"`` objective accepts to save workers.
    """

    def __init__(
        self,
        datamodule: FusionDataModule,
        mode: str = "auto",
        ratio: float | None = None,
        *,
        interval: str = "epoch",
        every_n_steps: int = 50,
        reserve_mb: float = 1024.0,
        accelerator: Any = None,
        log_fn: Callable[..., Any] | None = None,
        log_every_n_steps: int = 10,
        warmup_steps: int | None = None,
        probe: Any = None,
        nvml_module: Any = None,
        controller_kwargs: dict[str, Any] | None = None,
        report: bool = False,
        report_dir: str | None = None,
        objective: str = "throughput",
        tolerance: float = 0.03,
    ) -> None:
        mode = check_accelerate_args(
            datamodule,
            mode,
            ratio,
            interval=interval,
            every_n_steps=every_n_steps,
            log_every_n_steps=log_every_n_steps,
            reserve_mb=reserve_mb,
            warmup_steps=warmup_steps,
            objective=objective,
            tolerance=tolerance,
            log_fn=log_fn,
            accelerator=accelerator,
        )
        self.controller = build_controller(
            mode, ratio, warmup_steps, controller_kwargs, objective=objective, tolerance=tolerance
        )
        self.controller.configure_workers(datamodule.num_workers)  # before any restored state

        self.mode = mode
        self.interval = interval
        self.every_n_steps = every_n_steps
        self.reserve_mb = float(reserve_mb)
        self.accelerator = accelerator
        self.log_fn = log_fn
        self.log_every_n_steps = log_every_n_steps
        self.warmup_steps = warmup_steps
        self.global_step = 0  # training steps run through this adapter, all epochs
        self._dm = datamodule
        # The controller owns the share from now on; the DataModule's router reads it.
        datamodule.router.bind(self.controller)
        self.session = FusionSession(
            self.controller,
            interval=interval,
            every_n_steps=every_n_steps,
            reserve_mb=self.reserve_mb,
            probe=probe,
            nvml_module=nvml_module,
        )
        self._device: torch.device | None = None
        self._train_loader: Any = None
        self._eval_loaders: dict[str, Any] = {}
        self.last_metrics: dict[str, float] = {}
        self.report, self.report_dir = bool(report), report_dir
        self._recorder: FitRecorder | None = None

    # ------------------------------------------------------------------ public
    @property
    def datamodule(self) -> FusionDataModule:
        return self._dm

    @property
    def ratio(self) -> float:
        """Current share of each batch routed to the device for augmentation."""
        return float(self.controller.ratio)

    @property
    def history(self) -> list[Decision]:
        """One record per decision, each with its ``reason``."""
        return list(self.controller.history)

    @property
    def memory_guard(self) -> MemoryGuard | None:
        """The guard the DataModule augments through (``None`` before :meth:`setup`)."""
        return self.session.guard

    @property
    def train_loader(self) -> Any:
        """The routed training DataLoader, built once (persistent workers survive epochs)."""
        if self._train_loader is None:
            self._train_loader = shard_train_loader(
                self._dm.train_dataloader(), self._dm.train_dataset, self.accelerator, self._dm.seed
            )
        return self._train_loader

    def setup(self, device: torch.device | str | None = None) -> None:
        """Attach a memory guard for ``device`` to the DataModule; run once, lazily, by
        :meth:`train_epoch` (call it yourself to pick the device up front)."""
        dev = resolve_device(device, self._device, self.accelerator)
        if self.session.guard is not None and dev == self._device:
            return
        note = self.session.attach(self._dm, dev)
        self._device = dev
        if self.report:
            self._recorder = FitRecorder(
                mode=self.mode,
                device=dev,
                num_workers=self._dm.num_workers,
                probe=self.session.guard.probe if self.session.guard is not None else None,
            )
        if note and is_main(self.accelerator):
            log.info("FusionAccelerate: %s", note)
        if is_main(self.accelerator):
            log.info(
                "FusionAccelerate: mode=%s on %s, starting device share %.2f",
                self.mode,
                dev,
                self.ratio,
            )

    def train_epoch(
        self,
        epoch: int,
        device: torch.device | str | None = None,
        *,
        max_steps: int | None = None,
        with_indices: bool = False,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Iterate one training epoch: yields ``(images, targets)`` ready for the model.

        ``images`` are float, normalised ``[B, 3, H, W]`` on ``device`` (default: the
        accelerator's device, else CPU), with the device share augmented there and the batch
        ops (random erasing, mixup/cutmix) applied; ``targets`` are ``long [B]`` (or soft
        ``float [B, C]`` with mixing). Each step is timed from the moment the loop asks for the
        next batch; with ``interval="epoch"`` the decision is taken when the epoch (or
        ``max_steps``) is exhausted. If the loop breaks out early, no epoch-end decision is
        taken: call :meth:`decide` yourself (on every rank).

        Args:
            epoch: the epoch number; it seeds the shuffle, the crops and the policy parameters.
            device: where the batches go.
            max_steps: stop after this many steps (the epoch-end decision still happens).
            with_indices: also yield the dataset indices of the batch (``long [B]``, on the host).
        """
        _check_int("epoch", epoch, 0)
        if max_steps is not None:
            _check_int("max_steps", max_steps, 1)
        self.setup(device)
        loader = self.train_loader
        loader.batch_sampler.set_epoch(epoch)
        return self._train_iter(loader, self._device, max_steps, with_indices)

    def eval_batches(
        self, device: torch.device | str | None = None, *, split: str = "val"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the validation (or ``split="test"``) set: resize/centre-crop in the workers,
        normalisation on ``device``; nothing is routed or timed.

        With several processes the set is sharded by ``accelerator.prepare_data_loader``, so
        ``accelerator.gather_for_metrics`` drops the padding samples as usual.
        """
        if split not in SPLITS:
            raise ConfigError(f"`split` must be one of {SPLITS}, got {split!r}")
        dataset = self._dm.val_dataset if split == "val" else self._dm.test_dataset
        if dataset is None:
            raise ConfigError(
                f"the FusionDataModule has no {split} dataset; pass `{split}_dataset=` to "
                "FusionDataModule to evaluate"
            )
        dev = resolve_device(device, self._device, self.accelerator)
        loader = self._eval_loaders.get(split)
        if loader is None:
            loader = self._dm.val_dataloader() if split == "val" else self._dm.test_dataloader()
            loader = self._eval_loaders[split] = shard_eval_loader(loader, self.accelerator)
        return self._eval_iter(loader, dev)

    def decide(self) -> Decision:
        """Take a decision now and route the next batches with it (every rank must call it).

        :meth:`train_epoch` calls it at the end of each epoch (``interval="epoch"``) or every
        ``every_n_steps`` steps (``interval="steps"``).
        """
        old = self.ratio
        decision = self.session.decide(
            all_mean(self.accelerator), all_min(self.accelerator), reduce_device(self.accelerator)
        )
        msg = f"FusionAccelerate: device share {old:.2f} -> {self.ratio:.2f} ({decision.reason})"
        if is_main(self.accelerator):
            log.info(msg)
            if self.log_fn is not None:
                self.log_fn({"fusionflow/decided_ratio": self.ratio}, step=self.global_step)
        else:
            log.debug(msg)
        return decision

    def _end_epoch(self) -> None:
        """The CPU objective's worker decision; a new count rebuilds the training loader."""
        decision = self.session.end_epoch()
        if decision is None:
            return
        if is_main(self.accelerator):
            log.info("FusionAccelerate: %s", decision.reason)
            if self.log_fn is not None:
                self.log_fn(
                    {"fusionflow/workers": float(decision.workers or 0)}, step=self.global_step
                )
        if decision.workers != decision.prev_workers:
            self._train_loader = None  # rebuilt by the next train_epoch (the old workers stop)

    def finish(self) -> dict[str, Any] | None:
        """End of training: with ``report=True``, print the FusionFlow report on the main
        process and write it into ``report_dir``; returns it (``None`` elsewhere)."""
        if self._recorder is None or not is_main(self.accelerator):
            return None
        return self._recorder.finish(self.report_dir or ".", self.controller.history, self.ratio)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (ratio, history, controller, the DataModule's counters); register
        the adapter with ``accelerator.register_for_checkpointing`` to save it with the run."""
        return {
            "controller": self.controller.state_dict(),
            "global_step": self.global_step,
            "datamodule": self._dm.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "datamodule" in state_dict:
            self._dm.load_state_dict(state_dict["datamodule"])
        self.controller.load_state_dict(state_dict["controller"])
        self.global_step = int(state_dict.get("global_step", self.global_step))
        self.session.steps_since_decision = 0
        self.session.dm = self._dm
        if self.session.apply_workers():  # the restored worker count (CPU objective)
            self._train_loader = None

    # ------------------------------------------------------------------ iteration
    def _train_iter(
        self, loader: Any, device: torch.device, max_steps: int | None, with_indices: bool
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        stage = self._dm.device_stage
        dtype = self._dm.resolved_output_dtype()
        # The gap across validation and epoch boundaries is not a training step.
        self.session.prev_end = None
        steps = 0
        for batch in loader:
            # Stamps the moment the batch is in hand (the end of the data wait); the route
            # record stays on the host, so no transfer syncs.
            batch = stage.prepare(batch)
            indices = batch["route"].indices
            # Tensors only, non_blocking from pinned memory on CUDA (as Lightning moves them).
            batch = move_data_to_device(batch, device)
            # Augments the device share (chunked by the memory guard), normalises, batch ops.
            stage.rank = rank(self.accelerator)
            images, targets = stage.finish(batch, dtype=dtype)
            yield (images, targets, indices) if with_indices else (images, targets)
            self._end_step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        if self.interval == "epoch":
            self.decide()
        self._end_epoch()

    def _eval_iter(
        self, loader: Any, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stage = self._dm.device_stage
        dtype = self._dm.resolved_output_dtype()
        for batch in loader:
            batch = move_data_to_device(stage.prepare(batch), device)
            yield stage.finish(batch, dtype=dtype)

    def _end_step(self) -> None:
        """The loop body has handed control back: the step is over (the callback's
        ``on_train_batch_end``)."""
        measured = self.session.end_step(time.perf_counter())
        self.global_step += 1
        if self._recorder is not None:
            self._recorder.step(measured)
        if measured is not None and self.global_step % self.log_every_n_steps == 0:
            self.last_metrics = step_metrics(
                self.ratio,
                measured,
                self.session.guard,
                self.controller.workers,
                self.session.decode_fallbacks,
            )
            if self.log_fn is not None and is_main(self.accelerator):
                self.log_fn(self.last_metrics, step=self.global_step)
        if self.session.step_decision_due:
            self.decide()
