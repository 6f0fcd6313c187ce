"""``Pipeline``: the whole data path without Lightning.

One object holds what ``FusionDataModule``, ``FusionFlow``, ``FusionAccelerate``, a plain PyTorch
loop and the benchmark all drive: the stage list, the router (which reads the device share from
its owner), the training and evaluation loaders, and the device stage. Its transfer sequence is
written once here::

    pipeline = Pipeline(train_dataset, val_dataset, policy="randaugment", image_size=224)
    for batch in pipeline.train_loader():
        images, targets = pipeline.transfer(batch, "cuda", dtype=torch.bfloat16)

:meth:`transfer` is :meth:`prepare` (host: the data wait ends, host-side checks), a move of the
tensors to the device (the route record stays on the host), then :meth:`finish` (device: the
device share is augmented, everything normalised, the batch ops run). Lightning's batch-transfer
hooks call the two halves around its own move.

With ``views=`` (multi-view training) the stage list is one per view group
(:func:`~ff_lightning.pipeline.stages.view_stages`), the workers run
:class:`~ff_lightning.pipeline.worker.views.ViewsDataset` and the device stage is a
:class:`~ff_lightning.pipeline.device.views.ViewsStage`; :meth:`transfer` then gives
``(views, targets)``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.device.stage import DeviceStage, output_dtype_for
from ff_lightning.pipeline.loader import ResumableDataLoader
from ff_lightning.pipeline.options import PipelineOptions, options_from_kwargs
from ff_lightning.pipeline.routing import EpochSampler, FixedShare, RoutedBatchSampler, Router
from ff_lightning.pipeline.stages import (
    DeviceTail,
    RoutedStage,
    Stage,
    ViewGroup,
    WorkerGeometry,
    WorkerTransforms,
    transform_stages,
    view_stages,
)
from ff_lightning.pipeline.stages import keyword_stages as _keyword_stages
from ff_lightning.pipeline.worker.dataset import AugmentingDataset, collate_batch, worker_init
from ff_lightning.pipeline.worker.items import class_index, read_item, to_uint8_chw
from ff_lightning.validation import check_int

__all__ = ["Pipeline", "move_to_device"]

log = logging.getLogger("ff_lightning")


def _check_datasets(train: Any, val: Any, test: Any) -> None:
    if train is None:
        raise ConfigError(
            "`train_dataset` is required: pass a map-style dataset of (image, int target)"
        )
    if isinstance(train, IterableDataset):
        raise ConfigError(
            f"`train_dataset` must be a map-style dataset (indexable by int), got the "
            f"IterableDataset {type(train).__name__}; the router picks samples by "
            "index, so wrap the data in a map-style Dataset with __getitem__ and __len__"
        )
    try:
        n_train = len(train)
    except TypeError:
        raise ConfigError(
            "`train_dataset` must be a map-style dataset with __len__ and __getitem__, got "
            f"{type(train).__name__}"
        ) from None
    if n_train == 0:
        raise ConfigError(
            "`train_dataset` is empty: it has 0 samples; check the dataset path or filter"
        )
    for name, ds, what in (("val_dataset", val, "validation"), ("test_dataset", test, "testing")):
        if ds is not None and len(ds) == 0:
            raise ConfigError(f"`{name}` is empty: it has 0 samples; pass None to skip {what}")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """The batch's tensors on ``device`` (dicts, lists and tuples walked; anything else, such
    as the host-side route record, left where it is). Copies from pinned memory to CUDA are
    non-blocking, as Lightning's own move does."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda" and batch.is_pinned())
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class Pipeline:
    """The data path of one training run: stages, router, loaders and device stage.

    Args:
        train_dataset: map-style dataset of ``(PIL image or uint8 [C,H,W] tensor, int target)``.
        val_dataset, test_dataset: optional evaluation datasets of the same form.
        options: a :class:`~ff_lightning.pipeline.options.PipelineOptions`; or give its fields
            as keyword arguments (``policy="randaugment"``, ``image_size=224``, ...).
        stages: the stage list (worker geometry, routed stage, device tail); ``None`` builds it
            from the options (:func:`~ff_lightning.pipeline.stages.keyword_stages`).
    """

    def __init__(
        self,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        *,
        test_dataset: Dataset | None = None,
        options: PipelineOptions | None = None,
        stages: tuple[Stage, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        _check_datasets(train_dataset, val_dataset, test_dataset)
        if options is None:
            options = options_from_kwargs("Pipeline", kwargs)
        elif kwargs:
            raise ConfigError(
                f"give the options either as `options=` or as keywords, not both (got "
                f"`options` and {sorted(kwargs)})"
            )
        self.options = options.resolve(train_dataset)
        for name, ds in (
            ("train_dataset", train_dataset),
            ("val_dataset", val_dataset),
            ("test_dataset", test_dataset),
        ):
            if ds is not None:
                self._check_first_item(name, ds)
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.test_dataset = test_dataset
        self.eval_prefix: WorkerTransforms | None = None
        #: Transforms of the user's ``transform`` kept in the workers (the compiler's notes).
        self.notes: list[str] = []
        #: The compiled view groups of multi-view training (``None``: one view per sample).
        self.views: tuple[ViewGroup, ...] | None = None
        if stages is None and self.options.views is not None:
            # Evaluation (and the stage list below) follows the first view group.
            self.views, stages, self.eval_prefix, self.notes = view_stages(
                self.options, train_dataset
            )
        elif stages is None and self.options.transform is not None:
            stages, self.eval_prefix, self.notes = transform_stages(self.options, train_dataset)
        self.stages = stages if stages is not None else _keyword_stages(self.options)
        self.geometry = self._stage(WorkerGeometry)
        prefixes = [s for s in self.stages if isinstance(s, WorkerTransforms)]
        self.prefix: WorkerTransforms | None = prefixes[0] if prefixes else None
        self.routed = self._stage(RoutedStage)
        self.tail = self._stage(DeviceTail)
        opts, tail = self.options, self.tail
        self._own_share = FixedShare(opts.ratio)  # the share when no controller drives it
        self.router = Router(self._own_share, strategy=opts.route_strategy)
        self.stage: DeviceStage = DeviceStage(
            self.routed.policy,
            mean=tail.mean,
            std=tail.std,
            normalize=tail.normalize,
            num_classes=tail.num_classes,
            seed=opts.seed,
            device_decode=self.geometry.device_decode,
            source=train_dataset,
            ops=tail.batch_ops(),
        )
        if self.views is not None:
            from ff_lightning.pipeline.device.views import ViewsStage

            self.stage = ViewsStage(self.views, views_format=opts.views_format, seed=opts.seed)
        self._train_workers: int | None = None
        self._last_train_loader: ResumableDataLoader | None = None
        self._loader_state: dict[str, Any] | None = None  # restored, for the next train loader

    def _check_first_item(self, name: str, dataset: Any) -> None:
        """Item 0 read as the workers will read it: an unsupported item is a ConfigError here,
        in the main process, not a worker traceback at the first batch."""
        opts = self.options
        try:
            image, target = read_item(
                dataset[0], 0, image_key=opts.image_key, label_key=opts.label_key
            )
            to_uint8_chw(image, int(opts.channels), 0)  # type: ignore[arg-type]
            class_index(0, target)
        except ConfigError as err:
            raise ConfigError(f"`{name}`: {err}") from None

    def _stage(self, kind: type) -> Any:
        found = [s for s in self.stages if isinstance(s, kind)]
        if len(found) != 1:
            raise ConfigError(
                f"the stage list must hold exactly one {kind.__name__}, got {len(found)} in "
                f"{[type(s).__name__ for s in self.stages]}"
            )
        return found[0]

    # ------------------------------------------------------------------ reading
    @property
    def policy(self) -> Any:
        """The routed stage's policy."""
        return self.routed.policy

    @property
    def num_workers(self) -> int:
        return int(self.options.num_workers)  # type: ignore[arg-type]

    @property
    def ratio(self) -> float:
        """Share of each training batch routed to the device (read from its owner)."""
        return self.router.ratio

    def set_ratio(self, ratio: float) -> None:
        """Route with a constant share (no controller)."""
        self._own_share = FixedShare(ratio)
        self.router.bind(self._own_share)

    def bind(self, owner: Any) -> None:
        """Read the device share from ``owner`` (anything with a ``ratio``, e.g. a controller)
        from the next batch the sampler emits on."""
        self.router.bind(owner)

    def unbind(self) -> None:
        """Route with the pipeline's own share again (``ratio``, or the last :meth:`set_ratio`),
        whatever controller was bound before."""
        self.router.bind(self._own_share)

    def describe(self) -> str:
        """Which stage runs where, one line each (the compiled plan), and what the compiler
        kept in the workers."""
        if self.views is not None:
            lines = [line for group in self.views for line in group.describe()]
            if self.eval_prefix is None:
                size = f"{self.geometry.size}x{self.geometry.size}"
                what = f"resize and centre crop to {size}, normalised as {self.views[0].name}"
                lines.append(f"  {'evaluation':<18} {what}")
        else:
            lines = [f"  {s.where:<18} {s.describe()}" for s in self.stages]
        if self.eval_prefix is not None:
            lines.append(f"  {'evaluation':<18} {self.eval_prefix.describe()}")
        return "\n".join(["pipeline:", *lines, *(f"  note: {n}" for n in self.notes)])

    def output_dtype(self, precision_plugin: Any = None) -> torch.dtype:
        """The dtype of the images handed to the model (``output_dtype`` resolved against a
        trainer's precision plugin, if any)."""
        return output_dtype_for(str(self.options.output_dtype), precision_plugin)

    # ------------------------------------------------------------------ workers
    @property
    def train_workers(self) -> int:
        """Worker processes of the next training loader: ``num_workers`` unless
        :meth:`set_num_workers` changed it. Evaluation loaders keep ``num_workers``."""
        return self.num_workers if self._train_workers is None else self._train_workers

    def set_num_workers(self, n: int) -> None:
        """Build the next training loader with ``n`` workers. The sampler, the router and the
        augmentation parameters do not depend on it: the same ``(epoch, index)`` gives the same
        image. The loader built before keeps running until it is replaced; then its worker
        processes are shut down."""
        self._train_workers = check_int("num_workers", n, 0)

    def _release_train_loader(self, n: int) -> None:
        old = self._last_train_loader
        if old is None or old.num_workers == n:
            return
        # Persistent workers live until their loader is garbage collected; shut them down now
        # so that the CPUs are free when the loader with another worker count starts (torch has
        # no public call for this; best effort).
        shutdown = getattr(getattr(old, "_iterator", None), "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    # ------------------------------------------------------------------ loaders
    def _loader_kwargs(self, num_workers: int) -> dict[str, Any]:
        opts = self.options
        pin = opts.pin_memory if opts.pin_memory is not None else torch.cuda.is_available()
        kw: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin}
        if num_workers > 0:
            kw["worker_init_fn"] = worker_init
            kw["persistent_workers"] = opts.persistent_workers
            kw["prefetch_factor"] = opts.prefetch_factor
            kw["multiprocessing_context"] = opts.multiprocessing_context
        return kw

    def train_loader(self) -> ResumableDataLoader:
        """The routed training loader (resumable mid-epoch; see
        :mod:`ff_lightning.pipeline.loader`), with :attr:`train_workers` workers."""
        geo, opts = self.geometry, self.options
        ds: Dataset = AugmentingDataset(
            self.train_dataset,
            train=True,
            image_size=geo.size,
            policy=self.policy,
            seed=opts.seed,
            image_key=opts.image_key,
            label_key=opts.label_key,
            geometry=geo,
            prefix=self.prefix,
        )
        if self.views is not None:
            from ff_lightning.pipeline.worker.views import ViewsDataset

            ds = ViewsDataset(
                self.train_dataset,
                groups=self.views,
                seed=opts.seed,
                channels=int(opts.channels),  # type: ignore[arg-type]
                image_key=opts.image_key,
                label_key=opts.label_key,
            )
        sampler = EpochSampler(self.train_dataset, shuffle=True, seed=opts.seed)  # type: ignore[arg-type]
        batch_sampler = RoutedBatchSampler(
            sampler, opts.batch_size, opts.drop_last, router=self.router
        )
        n = self.train_workers
        self._release_train_loader(n)
        loader = ResumableDataLoader(
            ds, batch_sampler=batch_sampler, collate_fn=collate_batch, **self._loader_kwargs(n)
        )
        if self._loader_state is not None:
            # A restored position: applied before anyone asks the loader for its length.
            loader.load_state_dict(self._loader_state)
            self._loader_state = None
        self._last_train_loader = loader
        return loader

    def eval_loader(self, split: str = "val") -> DataLoader | list:
        """Resize + centre crop in the workers, normalisation on the device; ``[]`` when the
        pipeline has no dataset for ``split`` (``"val"`` or ``"test"``)."""
        dataset = {"val": self.val_dataset, "test": self.test_dataset}.get(split)
        if split not in ("val", "test"):
            raise ConfigError(f"`split` must be one of ('val', 'test'), got {split!r}")
        if dataset is None:
            return []
        geo = self.geometry
        ds = AugmentingDataset(
            dataset,
            train=False,
            image_size=geo.size,
            seed=self.options.seed,
            image_key=self.options.image_key,
            label_key=self.options.label_key,
            geometry=geo,
            prefix=self.eval_prefix,
        )
        return DataLoader(
            ds,
            batch_size=self.options.batch_size,
            shuffle=False,
            collate_fn=collate_batch,
            **self._loader_kwargs(self.num_workers),
        )

    # ------------------------------------------------------------------ transfer
    def prepare(self, batch: Any) -> Any:
        """Host side, before the copy: the data wait ends here; host-side checks."""
        return self.stage.prepare(batch)

    def finish(
        self, batch: Any, *, dtype: torch.dtype | None = None, rank: int = 0
    ) -> tuple[Any, torch.Tensor]:
        """Device side, after the copy: ``(images, targets)`` ready for the model, in ``dtype``
        (default: :meth:`output_dtype` without a trainer); with views, a training batch gives
        ``(views, targets)`` (a list of tensors, or a dict with ``views_format="dict"``).
        ``rank`` keys the batch ops' draws."""
        self.stage.rank = int(rank)
        return self.stage.finish(batch, dtype=dtype if dtype is not None else self.output_dtype())

    def transfer(
        self,
        batch: Any,
        device: torch.device | str,
        *,
        dtype: torch.dtype | None = None,
        rank: int = 0,
    ) -> tuple[Any, torch.Tensor]:
        """:meth:`prepare`, the move of the tensors to ``device``, :meth:`finish`."""
        batch = self.prepare(batch)
        batch = move_to_device(batch, torch.device(device))
        return self.finish(batch, dtype=dtype, rank=rank)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The device stage's step count and the training loader's position. The share is its
        owner's (the controller saves it)."""
        state: dict[str, Any] = {"steps": self.stage.steps}
        if self._last_train_loader is not None:
            state["loader"] = self._last_train_loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage.steps = int(state_dict.get("steps", state_dict.get("step", 0)))
        self._loader_state = state_dict.get("loader")
