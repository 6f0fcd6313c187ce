"""``FusionDataModule``: the Lightning face of :class:`~ff_lightning.pipeline.Pipeline`.

It builds a pipeline from its keywords and only adds the Lightning hooks: the loaders, the
batch-transfer hooks (which call the pipeline's two transfer halves around Lightning's own move)
and the state. Data flow of one training batch (see design.md):

1. main process: :class:`~ff_lightning.pipeline.routing.RoutedBatchSampler` emits one routed
   batch (indices, epoch, the controller's share) per batch;
2. worker (:mod:`ff_lightning.pipeline.worker.dataset`): decode, random-resized-crop + flip to a fixed
   size, draw the batch's policy parameters once, pick the device share (the costliest samples),
   augment the CPU share with one batched call, and return the batch with its route record;
3. main process, on the device (:class:`~ff_lightning.pipeline.device.stage.DeviceStage`, called from
   the batch-transfer hooks): apply the same parameters to the device share (chunked by the
   memory guard), normalise, run the batch-level ops, and hand ``(images, targets)`` to the
   user's ``training_step``.

Hook order when the user's LightningModule also overrides a batch-transfer hook (Lightning
would otherwise call only the DataModule's): ``on_before_batch_transfer`` — the module's hook
runs first and receives the raw batch dict (keys ``images`` uint8, ``targets`` and, for
training, ``route``: a host-side :class:`~ff_lightning.pipeline.batch.BatchRoute`), then ours;
``on_after_batch_transfer`` — ours runs first (augment + normalise), then the module's
receives ``(images, targets)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ff_lightning.errors import ConfigError
from ff_lightning.frontends.namespaces import DATAMODULE_BASES, overrides
from ff_lightning.pipeline.batch import RawBatch
from ff_lightning.pipeline.options import PipelineOptions
from ff_lightning.pipeline.pipeline import Pipeline, move_to_device

__all__ = ["FusionDataModule"]

# We call the LightningModule's batch-transfer hooks ourselves (see the module docstring), so
# Lightning's "overridden in both" warning would be misleading.
warnings.filterwarnings(
    "ignore",
    message=r".*overridden `(on_before_batch_transfer|on_after_batch_transfer|"
    r"transfer_batch_to_device)` in both.*",
)


class FusionDataModule(*DATAMODULE_BASES):  # type: ignore[misc]
    """A ``LightningDataModule`` that splits the augmentation of each batch between workers and device.

    It works with a ``lightning.pytorch`` Trainer and with a ``pytorch_lightning`` one. Every
    option is a field of :class:`~ff_lightning.pipeline.options.PipelineOptions` (documented
    there) and readable here as an attribute (``dm.batch_size``, ``dm.channels``, ...), resolved
    against the training data.

    Args:
        train_dataset: map-style dataset of ``(PIL image or uint8 [C,H,W] tensor, int target)``.
        val_dataset: optional validation dataset of the same form (resize + centre crop only).
        test_dataset: optional test dataset, as ``val_dataset``.
        **options: the pipeline's options: ``policy``, ``policy_kwargs``, ``image_size``,
            ``batch_size``, ``num_workers``, ``seed``, ``crop_scale``, ``crop_ratio``,
            ``hflip``, ``val_crop_fraction``, ``mean``, ``std``, ``channels``, ``normalize``,
            ``random_erasing``, ``mixup_alpha``, ``cutmix_alpha``, ``num_classes``,
            ``route_strategy``, ``ratio``, ``reserve_mb``, ``output_dtype``, ``drop_last``,
            ``pin_memory``, ``persistent_workers``, ``prefetch_factor``, ``device_decode``,
            ``multiprocessing_context``, ``image_key``, ``label_key``, ``transform``,
            ``val_transform``, ``batch_transform``, ``views`` and ``views_format`` (multi-view
            training: ``training_step`` then receives ``(views, targets)``).
    """

    def __init__(
        self,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        *,
        test_dataset: Dataset | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        pipeline = options.pop("pipeline", None)
        if pipeline is None:
            from ff_lightning.pipeline.options import options_from_kwargs

            opts = options_from_kwargs("FusionDataModule", options)
            pipeline = Pipeline(train_dataset, val_dataset, test_dataset=test_dataset, options=opts)
        self.pipeline: Pipeline = pipeline

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> FusionDataModule:
        """The DataModule face of an existing pipeline."""
        return cls(
            pipeline.train_dataset,
            pipeline.val_dataset,
            test_dataset=pipeline.test_dataset,
            pipeline=pipeline,
        )

    # ------------------------------------------------------------------ reading
    @property
    def options(self) -> PipelineOptions:
        return self.pipeline.options

    @property
    def train_dataset(self) -> Dataset:
        return self.pipeline.train_dataset

    @property
    def val_dataset(self) -> Dataset | None:
        return self.pipeline.val_dataset

    @property
    def test_dataset(self) -> Dataset | None:
        return self.pipeline.test_dataset

    @property
    def device_stage(self) -> Any:
        """The pipeline's device stage."""
        return self.pipeline.stage

    @property
    def router(self) -> Any:
        return self.pipeline.router

    @property
    def memory_guard(self) -> Any:
        return self.pipeline.stage.guard

    @property
    def ratio(self) -> float:
        """Share of each training batch routed to the device (read from its owner)."""
        return self.pipeline.ratio

    def set_ratio(self, ratio: float) -> None:
        """Route with a constant share (for use without the FusionFlow callback)."""
        self.pipeline.set_ratio(ratio)

    @property
    def train_workers(self) -> int:
        """Worker processes of the next training DataLoader (see
        :meth:`Pipeline.train_workers <ff_lightning.pipeline.Pipeline.train_workers>`)."""
        return self.pipeline.train_workers

    def set_num_workers(self, n: int) -> None:
        self.pipeline.set_num_workers(n)

    def describe(self) -> str:
        """Which stage runs where (the compiled plan)."""
        return self.pipeline.describe()

    def setup(self, stage: str) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        # A callback that drives the share says so (FusionFlow's `drives_share`): read as an
        # attribute, so this module need not import the callback's (which imports this one).
        if not any(getattr(cb, "drives_share", False) is True for cb in trainer.callbacks):
            # No controller in this Trainer: route with this DataModule's own share, not the
            # share a FusionFlow of an earlier fit left bound.
            self.pipeline.unbind()

    # ------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        return self.pipeline.train_loader()

    def val_dataloader(self) -> DataLoader | list:
        return self.pipeline.eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        if self.pipeline.test_dataset is None:
            # Lightning would run zero batches and report nothing: say why instead.
            raise ConfigError(
                "`trainer.test` needs a test set: pass `test_dataset=` to FusionDataModule (or "
                "evaluate with trainer.validate on the validation set)"
            )
        return self.pipeline.eval_loader("test")

    # ------------------------------------------------------- device-side hooks
    def _user_module(self) -> L.LightningModule | None:
        trainer = getattr(self, "trainer", None)
        return trainer.lightning_module if trainer is not None else None

    def resolved_output_dtype(self) -> torch.dtype:
        """The dtype of the images handed to the model (``output_dtype`` resolved)."""
        trainer = getattr(self, "trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return self.pipeline.output_dtype(plugin)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        module = self._user_module()
        if module is not None and overrides(module, "on_before_batch_transfer"):
            batch = module.on_before_batch_transfer(batch, dataloader_idx)
        return self.pipeline.prepare(batch)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Lightning's move, or the user module's own hook when it overrides one (Lightning
        would call only ours). That hook receives the raw batch dict: a hook written for
        ``(images, targets)`` gets an error saying where its work belongs."""
        module = self._user_module()
        if module is None or not overrides(module, "transfer_batch_to_device"):
            return move_to_device(batch, device)
        try:
            return module.transfer_batch_to_device(batch, device, dataloader_idx)
        except (TypeError, ValueError) as err:
            if not isinstance(batch, RawBatch):
                raise
            raise ConfigError(
                f"{type(module).__name__}.transfer_batch_to_device failed on FusionDataModule's "
                "raw batch, a dict with `images` (uint8), `targets` and `route` that is "
                "augmented and normalised after the move; read it by key, or move the work to "
                f"`on_after_batch_transfer`, which receives (images, targets) ({err})"
            ) from err

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "images" in batch and "targets" in batch:
            trainer = getattr(self, "trainer", None)
            rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer else 0
            batch = self.pipeline.finish(batch, dtype=self.resolved_output_dtype(), rank=rank)
        module = self._user_module()
        if module is not None and overrides(module, "on_after_batch_transfer"):
            batch = module.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return self.pipeline.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pipeline.load_state_dict(state_dict)


def _option(name: str) -> property:
    return property(
        lambda self: getattr(self.pipeline.options, name),
        doc=f"The pipeline's ``{name}`` option (see ``PipelineOptions``), resolved.",
    )


for _name in PipelineOptions.__dataclass_fields__:
    if _name not in ("ratio", "resolved") and not hasattr(FusionDataModule, _name):
        setattr(FusionDataModule, _name, _option(_name))
