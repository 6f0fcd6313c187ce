"""The cost model and the estimator that fits it from window summaries.

Cost model (design.md, "The controller"): with ``W`` workers, per-sample CPU augmentation cost
``c``, per-sample device cost ``g``, batch size ``B`` and compute time ``T``, the loader needs
``L(r) = L0 + (1-r)·B·c/W`` per batch (``L0``: work the workers do whatever the route, such
as decoding) and the device needs ``D(r) = T + r·B·g``. Throughput is ``B / max(L, D)``; the
best ``r`` is near ``L = D``.

The workers' stamped CPU seconds bound what the loader can sustain (a full prefetch buffer
hides a slower loader for many steps). Stamps are calibrated against windows where the loader
was clearly the bottleneck, so overstated stamps or fewer cores than workers do not mislead
the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ff_lightning.control.window import WindowSummary, finite

__all__ = ["CostModel", "Estimator"]

_CLEARLY_LOADER_BOUND = 0.2  # wait share above which step time ~ loader time per batch
_Q_NOISE = 0.15  # stamps explaining the loader time to within this are taken as exact


@dataclass
class CostModel:
    """``L(r) = scale·(L0 + (1-r)·B·c/W)`` and ``D(r) = T + r·B·g``; serial when ``W = 0``.

    ``L0`` (``loader_fixed_s``) is the route-independent loader time per batch (decode, crop)
    and ``scale`` (``loader_scale``) calibrates the workers' stamped CPU seconds against the
    loader time measured when it was the bottleneck (fewer cores than workers, IPC, ...).
    """

    batch_size: float
    num_workers: float
    cpu_cost: float
    device_cost: float
    compute_s: float
    loader_fixed_s: float = 0.0
    loader_scale: float = 1.0
    device_cost_assumed: bool = False

    def loader_s(self, r: float) -> float:
        w = max(self.num_workers, 1.0)
        share = (1.0 - r) * self.batch_size * self.cpu_cost / w
        return self.loader_scale * (self.loader_fixed_s + share)

    def device_s(self, r: float) -> float:
        return self.compute_s + r * self.batch_size * self.device_cost

    def step_s(self, r: float) -> float:
        if self.num_workers < 1:  # loading runs in the main process: no overlap
            return self.loader_s(r) + self.device_s(r)
        return max(self.loader_s(r), self.device_s(r))

    def throughput(self, r: float) -> float:
        s = self.step_s(r)
        return self.batch_size / s if s > 0 else math.inf

    def with_workers(self, n: float) -> CostModel:
        """The same costs with ``n`` workers: the workers' route-independent time per batch
        (``L0``, work that ``W`` workers share) scales with ``W / n`` as the share's does."""
        w = self.num_workers
        fixed = self.loader_fixed_s * w / n if w >= 1 and n >= 1 else self.loader_fixed_s
        return replace(self, num_workers=float(n), loader_fixed_s=fixed)

    def crossing(self, lo: float = 0.0, hi: float = 1.0) -> float:
        """The ratio in ``[lo, hi]`` where loader and device times meet (the best ``r``)."""
        if self.num_workers < 1:  # serial: all-or-nothing, whichever route is cheaper
            return hi if self.device_cost < self.loader_scale * self.cpu_cost else lo
        k = self.loader_scale
        bc = self.batch_size * self.cpu_cost / self.num_workers
        bg = self.batch_size * self.device_cost
        if k * bc + bg <= 0:
            return lo
        r = (k * (self.loader_fixed_s + bc) - self.compute_s) / (k * bc + bg)
        return min(max(r, lo), hi)


@dataclass
class Estimator:
    """The cost estimates, one field per quantity (``None`` until estimated).

    Attributes:
        batch_size, num_workers, compute_s: ``B``, ``W`` and ``T``, as last measured.
        cpu_cost: ``c``, from the workers' stamps or inferred from loader-bound waits.
        device_cost: ``g``, as last measured (``None`` until something was routed).
        device_cost_assumed: whether ``g`` is a prior rather than a measurement.
        prep_s: the stamped route-independent loader time per batch (``L0``).
        loader_fixed_s: ``L0`` inferred from loader-bound windows when not stamped (the
            smallest seen until :meth:`forget_loader`).
        loader_q: measured loader time over the time the stamps explain, on loader-bound
            windows (the smallest seen until :meth:`forget_loader`).
    """

    batch_size: float | None = None
    num_workers: float | None = None
    compute_s: float | None = None
    cpu_cost: float | None = None
    device_cost: float | None = None
    device_cost_assumed: bool = False
    prep_s: float | None = None
    loader_fixed_s: float | None = None
    loader_q: float | None = None

    def update(self, s: WindowSummary, ratio: float) -> None:
        """Refresh the estimates ``c, g, T, L0`` from a window summary measured at ``ratio``
        (the routed ratio the summary reports takes precedence)."""
        for key in ("batch_size", "num_workers", "compute_s"):
            if finite(getattr(s, key)):
                setattr(self, key, getattr(s, key))
        B, W = self.batch_size, self.num_workers or 0.0
        r = s.routed_ratio if finite(s.routed_ratio) else ratio
        # In steady state a loader-bound step lasts as long as the loader needs per batch;
        # only trust that when clearly loader-bound (near the crossing point noise makes the
        # step last max(L, D), longer than either).
        clearly = s.wait_s > _CLEARLY_LOADER_BOUND * s.step_s
        loader_s = s.step_s if clearly and W >= 1 else None
        if W < 1 and finite(s.wait_s):
            loader_s = s.wait_s  # no workers: the wait *is* the loading time
        c = s.cpu_cost if finite(s.cpu_cost) else None
        floor = s.loader_floor_s
        if loader_s is not None and W >= 1 and finite(floor) and floor > 0:
            # Stamped worker seconds vs the loader time they should explain. Noise only ever
            # inflates the measured side: keep the smallest ratio seen (until a regime change).
            self.loader_q = min(loader_s / floor, _or(self.loader_q, math.inf))
        if c is not None:
            self.cpu_cost = c
            if finite(s.loader_fixed_s):
                self.prep_s = s.loader_fixed_s  # stamped by the workers
            elif loader_s is not None and B:
                # Route-independent loader time, inferred (smallest seen, as above).
                share = (1.0 - r) * B * c / max(W, 1.0)
                fixed = max(loader_s - share, 0.0)
                self.loader_fixed_s = min(fixed, _or(self.loader_fixed_s, math.inf))
        elif loader_s is not None and B and r < 1.0:
            fixed = _or(self.loader_fixed_s, 0.0)
            self.cpu_cost = max(loader_s - fixed, 0.0) * max(W, 1.0) / ((1.0 - r) * B)
        if finite(s.device_cost):
            self.device_cost = s.device_cost
            self.device_cost_assumed = False

    def model(self) -> CostModel | None:
        """The cost model the estimates give, or ``None`` while ``B``, ``c`` or ``T`` is
        unknown."""
        if self.batch_size is None or self.cpu_cost is None or self.compute_s is None:
            return None
        g = self.device_cost
        assumed = g is None or self.device_cost_assumed
        if g is None:
            # Not measured yet (nothing routed): assume one sample costs the device what it
            # costs one CPU core. Conservative on a GPU (the first move is small, and measures
            # the real cost), about right for the CPU "device" route.
            g = self.cpu_cost
        q = _or(self.loader_q, 1.0)
        if 1.0 < q <= 1.0 + _Q_NOISE:
            q = 1.0  # within what noise adds to a loader-bound step (max of two noisy times)
        if self.prep_s is not None:  # fully stamped: calibrate the stamps on loader time
            fixed, scale = self.prep_s, q
        else:  # an inferred fixed part absorbs a slower loader; only scale overstated stamps
            fixed, scale = _or(self.loader_fixed_s, 0.0), min(q, 1.0)
        return CostModel(
            batch_size=self.batch_size,
            num_workers=_or(self.num_workers, 0.0),
            cpu_cost=self.cpu_cost,
            device_cost=g,
            compute_s=self.compute_s,
            loader_fixed_s=fixed,
            loader_scale=scale,
            device_cost_assumed=assumed,
        )

    def forget_loader(self) -> bool:
        """Drop the smallest-seen loader estimates (a regime change: re-learn them); returns
        whether there was anything to drop."""
        had = self.loader_fixed_s is not None or self.loader_q is not None
        self.loader_fixed_s = self.loader_q = None
        return had

    def loader_limited(self, s: WindowSummary, x: float) -> float:
        """Cap a measured throughput ``x`` at what the workers can sustain.

        Right after a move toward the CPU the prefetch buffer is still full and hides a slower
        loader for many steps (near the crossing point for ~prefetch*W / (1 - D/L) steps); the
        workers' stamped seconds see through it. Stamps that overstate (calibrated on
        loader-bound windows) are scaled down; the cap never rises above the stamps.
        """
        floor, b = s.loader_floor_s, s.batch_size
        if not (finite(floor) and floor > 0 and finite(b)):
            return x
        floor *= min(_or(self.loader_q, 1.0), 1.0)
        return min(x, b / floor)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Estimator:
        """Restore :meth:`state_dict`, or a version-1 ``"estimates"`` dict (only the keys
        estimated so far)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


def _or(x: float | None, default: float) -> float:
    return default if x is None else x
