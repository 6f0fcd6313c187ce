"""``FusionAccelerate``: cooperative CPU/device augmentation in a hand-written training loop.

The Lightning callback :class:`~ff_lightning.FusionFlow` times Trainer hooks and calls the pure
controller. This adapter does the same for a plain PyTorch or Hugging Face Accelerate loop: it
owns the iteration, so it can time what the hooks time, and it drives a
:class:`~ff_lightning.pipeline.Pipeline` for everything else (the routed DataLoader, the
transfer that augments the device share, normalises and runs the batch ops, the step records
and the memory guard) and ``ff_lightning.control`` for the decisions. Neither Lightning nor
Accelerate is imported::

    from accelerate import Accelerator
    from ff_lightning.pipeline import Pipeline
    from ff_lightning.frontends.accelerate import FusionAccelerate

    accelerator = Accelerator()
    pipeline = Pipeline(train_ds, val_ds, policy="randaugment", image_size=224, batch_size=64)
    fusion = FusionAccelerate(pipeline, accelerator=accelerator, log_fn=accelerator.log)
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

A ``FusionDataModule`` is accepted too (its pipeline is used). ``accelerate`` is imported only
by the recipe, never here: with ``accelerator=None`` this works in a plain PyTorch loop, and any
object with ``device``, ``num_processes``, ``reduce`` (and, for multi-process evaluation,
``prepare_data_loader``) can stand in for an ``Accelerator`` (see
:mod:`~ff_lightning.frontends.accelerate_ranks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ff_lightning.control.controller import Decision
from ff_lightning.errors import ConfigError
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
from ff_lightning.frontends.options import FusionOptions
from ff_lightning.frontends.session import FusionSession, step_metrics
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.pipeline import Pipeline
from ff_lightning.report import FitRecorder
from ff_lightning.validation import check_int

__all__ = ["FusionAccelerate"]

log = logging.getLogger("ff_lightning")

SPLITS = ("val", "test")


def _pipeline_of(source: Any) -> Pipeline:
    """The pipeline behind ``source`` (a Pipeline, or a FusionDataModule's)."""
    if isinstance(source, Pipeline):
        return source
    pipeline = getattr(source, "pipeline", None)
    if isinstance(pipeline, Pipeline):
        return pipeline
    raise ConfigError(
        "FusionAccelerate needs a Pipeline (or a FusionDataModule) to route augmentation, got "
        f"{type(source).__name__}; build one as `pipeline = Pipeline(train_dataset, "
        "val_dataset, policy='randaugment')` and pass `FusionAccelerate(pipeline)`"
    )


def _check_loop_args(log_fn: Any, accelerator: Any) -> None:
    if log_fn is not None and not callable(log_fn):
        raise ConfigError(
            "`log_fn` must be callable as log_fn(metrics, step=...), e.g. accelerator.log, "
            f"got {log_fn!r}"
        )
    if accelerator is not None and not (
        hasattr(accelerator, "device") and hasattr(accelerator, "num_processes")
    ):
        raise ConfigError(
            "`accelerator` must be an accelerate.Accelerator (or have `device`, "
            f"`num_processes` and `reduce`), got {type(accelerator).__name__}"
        )


class FusionAccelerate:
    """Split each batch's augmentation between DataLoader workers and the device, without a Trainer.

    Args:
        pipeline: the :class:`~ff_lightning.pipeline.Pipeline` holding the datasets and policy
            (or a ``FusionDataModule``, whose pipeline is used).
        mode: ``"auto"`` (the controller picks the share), ``"off"`` (CPU workers only),
            ``"gpu"`` (all policy augmentation on the device) or ``"fixed"`` (``ratio``).
        ratio: device share for ``mode="fixed"`` (required there, rejected elsewhere).
        accelerator: an ``accelerate.Accelerator`` (or ``None`` for a plain PyTorch loop). Its
            ``device`` is the default device; with ``num_processes > 1`` the training set is
            sharded per rank and the statistics are averaged across ranks before each
            decision, so every rank routes alike.
        log_fn: called as ``log_fn(metrics, step=global_step)`` on the main process with the
            same ``fusionflow/*`` metrics the callback logs (``accelerator.log`` fits).
        **options: the rest of :class:`~ff_lightning.frontends.options.FusionOptions`
            (``objective``, ``tolerance``, ``interval``, ``every_n_steps``, ``reserve_mb``,
            ``log_every_n_steps``, ``warmup_steps``, ``probe``, ``nvml_module``,
            ``controller_kwargs``, ``report``, ``report_dir``). With ``objective="cpu"`` the
            worker decision is taken at the end of :meth:`train_epoch` and the next epoch's
            loader is built with that count; :meth:`finish` writes the report into
            ``report_dir`` (default: the working directory).
    """

    def __init__(
        self,
        pipeline: Any,
        mode: str = "auto",
        ratio: float | None = None,
        *,
        accelerator: Any = None,
        log_fn: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        pipe = _pipeline_of(pipeline)
        self.options = FusionOptions.build(
            "FusionAccelerate",
            "FusionAccelerate(pipeline, mode='fixed', ratio=0.3)",
            mode=mode,
            ratio=ratio,
            **options,
        )
        _check_loop_args(log_fn, accelerator)
        opts = self.options
        self.controller = opts.controller()
        self.controller.configure_workers(pipe.num_workers)  # before any restored state
        self.accelerator = accelerator
        self.log_fn = log_fn
        self.global_step = 0  # training steps run through this adapter, all epochs
        self._pipeline = pipe
        self._source = pipeline
        # The controller owns the share from now on; the pipeline's router reads it.
        pipe.bind(self.controller)
        self.session = FusionSession(
            self.controller,
            interval=opts.interval,
            every_n_steps=opts.every_n_steps,
            reserve_mb=opts.reserve_mb,
            probe=opts.probe,
            nvml_module=opts.nvml_module,
        )
        self._device: torch.device | None = None
        self._train_loader: Any = None
        self._eval_loaders: dict[str, Any] = {}
        self.last_metrics: dict[str, float] = {}
        self._recorder: FitRecorder | None = None

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def interval(self) -> str:
        return self.options.interval

    @property
    def every_n_steps(self) -> int:
        return self.session.every_n_steps

    # ------------------------------------------------------------------ public
    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    @property
    def datamodule(self) -> Any:
        """What was passed in (a ``FusionDataModule`` or the pipeline itself)."""
        return self._source

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
            pipe = self._pipeline
            self._train_loader = shard_train_loader(
                pipe.train_loader(), pipe.train_dataset, self.accelerator, pipe.options.seed
            )
        return self._train_loader

    def setup(self, device: torch.device | str | None = None) -> None:
        """Attach a memory guard for ``device`` to the DataModule; run once, lazily, by
        :meth:`train_epoch` (call it yourself to pick the device up front)."""
        dev = resolve_device(device, self._device, self.accelerator)
        if self.session.guard is not None and dev == self._device:
            return
        note = self.session.attach(self._pipeline, dev)
        self._device = dev
        if self.options.report:
            self._recorder = FitRecorder(
                mode=self.mode,
                device=dev,
                num_workers=self._pipeline.num_workers,
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
        check_int("epoch", epoch, 0)
        if max_steps is not None:
            check_int("max_steps", max_steps, 1)
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
        pipe = self._pipeline
        dataset = pipe.val_dataset if split == "val" else pipe.test_dataset
        if dataset is None:
            raise ConfigError(
                f"the pipeline has no {split} dataset; pass `{split}_dataset=` to the Pipeline "
                "(or FusionDataModule) to evaluate"
            )
        dev = resolve_device(device, self._device, self.accelerator)
        loader = self._eval_loaders.get(split)
        if loader is None:
            loader = pipe.eval_loader(split)
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
        return self._recorder.finish(
            self.options.report_dir or ".", self.controller.history, self.ratio
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (ratio, history, controller, the pipeline's counters); register
        the adapter with ``accelerator.register_for_checkpointing`` to save it with the run."""
        return {
            "controller": self.controller.state_dict(),
            "global_step": self.global_step,
            "pipeline": self._pipeline.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("pipeline", state_dict.get("datamodule"))  # earlier: "datamodule"
        if saved is not None:
            self._pipeline.load_state_dict(saved)
        self.controller.load_state_dict(state_dict["controller"])
        self.global_step = int(state_dict.get("global_step", self.global_step))
        self.session.steps_since_decision = 0
        self.session.pipeline = self._pipeline
        if self.session.apply_workers():  # the restored worker count (CPU objective)
            self._train_loader = None

    # ------------------------------------------------------------------ iteration
    def _train_iter(
        self, loader: Any, device: torch.device, max_steps: int | None, with_indices: bool
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        pipe = self._pipeline
        dtype = pipe.output_dtype()
        # The gap across validation and epoch boundaries is not a training step.
        self.session.prev_end = None
        steps = 0
        for batch in loader:
            indices = batch["route"].indices
            # prepare (the data wait ends; the route record stays on the host, so no transfer
            # syncs), the move (non_blocking from pinned memory on CUDA), finish (the device
            # share augmented, chunked by the memory guard; normalised; batch ops).
            images, targets = pipe.transfer(batch, device, dtype=dtype, rank=rank(self.accelerator))
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
        pipe = self._pipeline
        dtype = pipe.output_dtype()
        for batch in loader:
            yield pipe.transfer(batch, device, dtype=dtype)

    def _end_step(self) -> None:
        """The loop body has handed control back: the step is over (the callback's
        ``on_train_batch_end``)."""
        measured = self.session.end_step(time.perf_counter())
        self.global_step += 1
        if self._recorder is not None:
            self._recorder.step(measured)
        if measured is not None and self.global_step % self.options.log_every_n_steps == 0:
            self.last_metrics = step_metrics(
                self.ratio,
                measured,
                self.session.guard,
                self.controller.workers,
                self.session.decode_fallbacks,
                self.session.augment_guards(),
            )
            if self.log_fn is not None and is_main(self.accelerator):
                self.log_fn(self.last_metrics, step=self.global_step)
        if self.session.step_decision_due:
            self.decide()
