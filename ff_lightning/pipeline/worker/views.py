"""The worker half of multi-view training: one decode per sample, every view cropped from it,
the photometric work of each view group split between the workers and the device.

For a training batch (a :class:`~ff_lightning.pipeline.batch.RoutedBatch` from the sampler) of
``B`` samples, in each DataLoader worker:

1. every sample is read and decoded once;
2. for each view group ``g`` with ``n_g`` views, view ``v`` of every sample is cropped (and
   flipped) from that decode with the group's geometry and the view's seed, into one uint8
   ``[n_g * B, C, S_g, S_g]`` tensor (view-major: view ``j`` of sample ``i`` at ``j * B + i``);
   the group's routed parameters are drawn for each view from ``(view seed, epoch, index)``
   and joined in the same order;
3. the device share of each group is ``round(r * n_g * B)`` of its images, the costliest on the
   CPU first (``route_strategy="random"``: sample by sample); the rest are augmented with ONE
   batched ``apply_batch`` per group.

Each view is built exactly as the single-view pipeline builds a sample (the same geometry,
parameter draws and kernels, with the view's seed), so view ``v`` equals what
``Pipeline(train, transform=<the group's transform>, seed=view_seed(seed, v))`` gives.

The batch's :class:`~ff_lightning.pipeline.batch.StepStats` counts the routed work in samples'
worth (see there): each image weighs its pixels over the pixels of all views of a sample.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from ff_lightning.pipeline.batch import BatchRoute, RawBatch, RoutedBatch, StepStats, ViewsRoute
from ff_lightning.pipeline.views import view_seed
from ff_lightning.pipeline.worker.items import load_sample
from ff_lightning.pipeline.worker.steps import apply_cpu_share, geometry_batch

if TYPE_CHECKING:  # pragma: no cover
    from ff_lightning.pipeline.stages import ViewGroup

__all__ = ["ViewsDataset", "view_weights"]


def view_weights(groups: Sequence[ViewGroup]) -> list[float]:
    """Per group, the work of one of its images in samples' worth: its pixels over the pixels
    of all the views of a sample (the weights of all views of a sample add up to 1)."""
    total = sum(g.count * g.size * g.size for g in groups)
    return [g.size * g.size / total for g in groups]


class ViewsDataset(Dataset):
    """Wraps a map-style dataset; runs the worker half of multi-view training one batch at a
    time (the DataLoader's ``collate_fn`` is
    :func:`~ff_lightning.pipeline.worker.dataset.collate_batch`, a pass-through).

    Args:
        source: map-style dataset of ``(image, target)``.
        groups: the compiled view groups (:func:`~ff_lightning.pipeline.stages.view_stages`).
        seed: the pipeline's seed (view ``v`` draws from ``view_seed(seed, v)``).
        channels: channels of the decoded images.
        image_key, label_key: the keys of dict items.
    """

    def __init__(
        self,
        source: Dataset,
        *,
        groups: Sequence[ViewGroup],
        seed: int = 0,
        channels: int = 3,
        image_key: str | None = None,
        label_key: str | None = None,
    ) -> None:
        self.source = source
        self.groups = tuple(groups)
        self.seed = int(seed)
        self.seeds = [view_seed(self.seed, v) for g in self.groups for v in g.views]
        self.weights = view_weights(self.groups)
        self.channels = int(channels)
        self.image_key, self.label_key = image_key, label_key

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def _load(self, index: int) -> tuple[Any, int]:
        return load_sample(
            self.source, index, self.channels, image_key=self.image_key, label_key=self.label_key
        )

    def __getitem__(self, key: RoutedBatch | int) -> dict[str, Any]:
        return self.__getitems__(key if isinstance(key, RoutedBatch) else [key])

    def __getitems__(self, keys: RoutedBatch | list[int]) -> dict[str, Any]:
        if not isinstance(keys, RoutedBatch):
            # A plain batch of indices (e.g. a user's own sampler): all on the CPU route, epoch 0.
            keys = RoutedBatch(tuple(int(k) for k in keys), 0, 0.0, 0)
        return self._train_batch(keys)

    def _crops(self, group: ViewGroup, loaded: list[Any], indices: torch.Tensor, epoch: int) -> Any:
        """The group's views of every sample, view-major, and their parameters (same order)."""
        b = len(loaded)
        out: torch.Tensor | None = None
        parts = []
        for j, v in enumerate(group.views):
            seed = self.seeds[v]
            view = geometry_batch(
                loaded, indices, epoch, geometry=group.geometry, prefix=group.prefix, seed=seed
            )
            if out is None:
                # One buffer for the group, filled view by view: at most one view's crops are
                # held besides it (no concatenation of all the views).
                out = torch.empty((group.count * b, *view.shape[1:]), dtype=view.dtype)
            out[j * b : (j + 1) * b] = view
            del view
            parts.append(group.routed.policy.sample(indices, epoch, seed))
        params = parts[0] if len(parts) == 1 else type(parts[0]).cat(parts)
        return out, params

    def _device_positions(
        self, group: ViewGroup, rb: RoutedBatch, params: Any, b: int
    ) -> torch.Tensor:
        """Sorted positions of the group's device share: ``round(r * n_g * B)`` images."""
        n = group.count * b
        k = int(round(rb.ratio * n))
        if rb.strategy == "costliest":
            cost = group.routed.policy.estimate_cost(params)
        else:
            # Sample by sample (all views of the first samples of the shuffled batch): the
            # position of view j of sample i in sample-major order, first ones first.
            pos = torch.arange(n)
            cost = -((pos % b) * group.count + pos // b).to(torch.float64)
        return RoutedBatch(tuple(range(n)), rb.epoch, rb.ratio, k).device_positions(cost)

    def _train_batch(self, rb: RoutedBatch) -> dict[str, Any]:
        # thread_time: CPU seconds of this thread only (see AugmentingDataset).
        t0 = time.thread_time()
        loaded = [self._load(i) for i in rb.indices]  # one decode per sample, for all views
        indices = torch.tensor(rb.indices, dtype=torch.long)
        targets = torch.tensor([t for _, t in loaded], dtype=torch.long)
        images = [im for im, _ in loaded]
        b = len(images)
        prep_s, aug_s = time.thread_time() - t0, 0.0  # decode, then the crops below
        routes: list[BatchRoute] = []
        out: list[torch.Tensor] = []
        stats = StepStats(batch_size=b, ratio=rb.ratio)
        device_work = 0.0
        for group, weight in zip(self.groups, self.weights, strict=True):
            t1 = time.thread_time()
            crops, params = self._crops(group, images, indices, rb.epoch)
            t2 = time.thread_time()
            # Parameters depend on (view seed, epoch, index) only: drawn before the route is
            # known, so the route cannot change them.
            device_index = self._device_positions(group, rb, params, b)
            crops = apply_cpu_share(group.routed.policy, crops, params, device_index)
            t3 = time.thread_time()
            prep_s += t2 - t1
            aug_s += t3 - t2
            k = int(device_index.numel())
            device_work += k * weight
            routes.append(
                BatchRoute(
                    indices.repeat(group.count),
                    rb.epoch,
                    device_index,
                    params[device_index] if k else None,
                    stats,
                )
            )
            out.append(crops)
        del images, loaded
        # The route-independent work (decode, crops) and the CPU share's augmentation.
        stats.prep_s = prep_s
        stats.cpu_aug_s = aug_s
        stats.n_device = min(device_work, float(b))
        stats.n_cpu = max(b - stats.n_device, 0.0)
        return RawBatch(
            images=out, targets=targets, route=ViewsRoute(indices, rb.epoch, routes, stats)
        )
