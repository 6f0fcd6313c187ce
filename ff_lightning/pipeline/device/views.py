"""The device half of multi-view training: each view group's device share augmented through
the memory guard, every view normalised, and the views laid out as the model expects.

:class:`ViewsStage` is a :class:`~ff_lightning.pipeline.device.stage.DeviceStage` (the same
``prepare``/``finish``/``close_step``, timer, guard and step count, which the front ends drive
unchanged) whose ``finish`` also takes a multi-view training batch: its ``images`` hold one
uint8 ``[n_g * B, C, S_g, S_g]`` tensor per view group and its route a
:class:`~ff_lightning.pipeline.batch.ViewsRoute`. Per group, in order: the group's device share
is augmented with the group's routed stage (the same kernels the workers ran on the rest),
chunked by a memory guard; the group is normalised to the training dtype with its own
statistics and erased if its transform asks. Evaluation batches are normalised as the first
group's (the evaluation geometry is the first group's).

The model receives ``(views, targets)``: ``views`` a list of ``[B, C, S_v, S_v]`` tensors in
view order (``views_format="list"``), or a dict with one ``[n * B, C, S, S]`` tensor per group
name, its views one after the other along the batch as DINOv2's collate stacks them
(``views_format="dict"``; groups that share a name are joined in order).

Memory: each group has a guard of its own, made from the stage's guard (same probe, reserve
and logger), because a guard learns the working memory per sample, and a 96 px view needs
about a fifth of a 224 px one. Groups run one after the other, so each reads the free memory
left by those before it (their outputs included).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import normalization
from ff_lightning.pipeline.batch import ViewsRoute
from ff_lightning.pipeline.device.stage import DeviceStage
from ff_lightning.pipeline.stages import DeviceTail, ViewGroup
from ff_lightning.pipeline.views import view_seed

__all__ = ["ViewsStage"]


class ViewsStage(DeviceStage):
    """Augments each view group's device share, normalises every view, lays the views out.

    Args:
        groups: the compiled view groups (:func:`~ff_lightning.pipeline.stages.view_stages`).
        views_format: ``"list"`` or ``"dict"`` (see the module docstring).
        seed: seed of the erasing's randomness (with the step count, the rank and the group).
        guard: the memory guard (``None``: one without a budget, as in ``DeviceStage``).
    """

    def __init__(
        self,
        groups: Sequence[ViewGroup],
        *,
        views_format: str = "list",
        seed: int = 0,
        guard: Any = None,
    ) -> None:
        first = groups[0].tail
        super().__init__(
            groups[0].routed.policy,
            mean=first.mean,
            std=first.std,
            normalize=first.normalize,
            seed=seed,
            guard=guard,
            ops=[],  # evaluation batches: normalised only
        )
        self.groups = tuple(groups)
        self.views_format = views_format
        self._group_ops = [
            [op for kind, op in g.tail.batch_ops() if kind == "erase"] for g in groups
        ]
        self._view_guards: tuple[Any, dict[int, Any]] | None = None  # (stage guard, per group)

    # ------------------------------------------------------------------ guards
    def group_guard(self, g: int) -> Any:
        """The memory guard of group ``g`` (group 0: the stage's own)."""
        guard = self.guard
        if g == 0:
            return guard
        if self._view_guards is None or self._view_guards[0] is not guard:
            self._view_guards = (guard, {})  # a new stage guard (attached by a front end)
        own = self._view_guards[1]
        if g not in own:
            from ff_lightning.pipeline.device.memory import MemoryGuard

            own[g] = MemoryGuard(
                guard.probe,
                reserve_mb=guard.reserve_bytes / (1 << 20),
                logger=guard.logger,
                oom_errors=guard.oom_errors,
                estimate_factor=guard.estimate_factor,
            )
        return own[g]

    def augment_guards(self) -> list[Any]:
        """The stage's guard and those of the further view groups made for it."""
        guards = super().augment_guards()
        if self._view_guards is not None and self._view_guards[0] is self._guard:
            guards += list(self._view_guards[1].values())
        return guards

    @property
    def ratio_cap(self) -> float | None:
        """The lowest device share any group's guard suggested after running out of memory."""
        caps = [super().ratio_cap]
        if self._view_guards is not None and self._view_guards[0] is self._guard:
            caps += [gd.ratio_cap for gd in self._view_guards[1].values()]
        caps = [c for c in caps if c is not None]
        return min(caps) if caps else None

    # ------------------------------------------------------------------ steps
    def finish(self, batch: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> Any:
        """Device side, after the copy: ``(views, targets)`` for a multi-view training batch
        (an evaluation batch: ``(images, targets)``, as :class:`DeviceStage`)."""
        route = batch.get("route")
        if not isinstance(route, ViewsRoute):
            return super().finish(batch, dtype=dtype)
        if self.ready_at is not None and self.last is route.stats:
            # Wall time of the transfer (the enqueue time for pinned non-blocking copies).
            route.stats.h2d_s = time.perf_counter() - self.ready_at
        targets: Tensor = batch["targets"]
        b = int(targets.shape[0])
        out = []
        for g, (group, images, groute) in enumerate(
            zip(self.groups, batch["images"], route.groups, strict=True)
        ):
            images = self.augment(
                images, groute, policy=group.routed.policy, guard=self.group_guard(g)
            )
            x = _normalize(images, group.tail, dtype)
            if self._group_ops[g]:
                x = self._erase(x if x is not images else x.clone(), g, route)
            out.append(x)
        self.steps += 1
        return self._layout(out, b), targets

    def _erase(self, x: Tensor, g: int, route: ViewsRoute) -> Tensor:
        # Keyed like the routed parameters: view v of a sample is erased from
        # (view_seed(seed, v), epoch, index), whatever its batch, position or route.
        b = len(route.indices)
        for j, view in enumerate(self.groups[g].views):
            xs = x[j * b : (j + 1) * b]
            keys = (view_seed(self.seed, view), route.epoch, route.indices)
            for op in self._group_ops[g]:
                res = op(xs, keys=keys, inplace=True)  # `x` is this stage's own tensor
                if res is not xs:  # an accelerator's result is a new tensor
                    xs.copy_(res)
        return x

    def _layout(self, out: list[Tensor], b: int) -> Any:
        if self.views_format == "dict":
            names: dict[str, list[Tensor]] = {}
            for group, x in zip(self.groups, out, strict=True):
                names.setdefault(group.name, []).append(x)
            return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in names.items()}
        # Views of a group are consecutive slices of its tensor: no copies.
        return [view for x in out for view in x.split(b)]


def _normalize(images: Tensor, tail: DeviceTail, dtype: torch.dtype) -> Tensor:
    """A group's images in ``dtype``: normalised with its statistics, scaled to ``[0, 1]``, or
    cast when the workers handed over floats already."""
    if images.is_floating_point():
        return images.to(dtype)
    c = int(images.shape[1])
    if not tail.normalize:
        return normalization.normalize(images, (0.0,) * c, (1.0,) * c, dtype=dtype)
    return normalization.normalize(images, tail.mean, tail.std, dtype=dtype)
