"""The kernel table: one implementation per (operation, device type, backend), chosen per call.

A kernel registers once, next to its code, as torchvision's v2 functional registers one
kernel per input type::

    from ff_lightning.augment.dispatch import register_kernel

    register_kernel("GaussianBlur", "any", "torch", blur)          # every device, torch ops
    register_kernel("GaussianBlur", "cpu", "native", blur_native)  # host loops, where loaded

    @register_kernel("Equalize.table", "cpu", "native")             # or as a decorator
    def equalize_table_native(stats): ...

A call then resolves the table once for its images' device (:func:`kernels_for`) and every
caller dispatches through the result instead of reading flags inside kernels::

    kernels = kernels_for(images.device)
    kernels["GaussianBlur"](images, ...)     # the best kernel available here

**Backends.** ``"native"``: the C loops of :mod:`ff_lightning.augment._native`, on host tensors,
when the library loaded (:func:`~ff_lightning.augment._native.lib`); a kernel registered with
``float_loops=True`` also needs :func:`~ff_lightning.augment._native.fused` (its float
arithmetic equals torch's only there). ``"torch"``: torch ops, on any device. Device type
``"any"`` is the fallback for devices without a kernel of their own. For each operation the
first available backend in :data:`PREFERENCE` order wins, on the device's own type first, then
on ``"any"``. :func:`~ff_lightning.augment._native.disabled` and ``FF_LIGHTNING_NATIVE=0`` take
effect at the next resolution (the cache is keyed by what is available).

Registering a kernel for a new operation (a new transform) needs nothing else here: name the
operation, the device type and the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ff_lightning.augment import _native

__all__ = [
    "BACKENDS",
    "PREFERENCE",
    "Kernel",
    "Kernels",
    "kernels_for",
    "register_kernel",
    "registered",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The backends a kernel may register under.
BACKENDS: tuple[str, ...] = ("native", "torch")
#: Backends tried per device type, best first (other device types: torch only).
PREFERENCE: dict[str, tuple[str, ...]] = {"cpu": ("native", "torch")}


@dataclass(frozen=True)
class Kernel:
    """One registered implementation: ``fn`` for ``op`` on ``device_type`` with ``backend``;
    ``float_loops``: a native kernel whose float arithmetic needs ``_native.fused()``."""

    op: str
    device_type: str
    backend: str
    fn: Callable[..., Any]
    float_loops: bool = False


_TABLE: dict[tuple[str, str, str], Kernel] = {}
_RESOLVED: dict[tuple[str, bool, bool], Kernels] = {}


def register_kernel(
    op: str,
    device_type: str,
    backend: str,
    fn: Callable[..., Any] | None = None,
    *,
    float_loops: bool = False,
) -> Any:
    """Register ``fn`` as ``op``'s kernel on ``device_type`` (``"cpu"``, ``"cuda"``, ... or
    ``"any"``) with ``backend`` (one of :data:`BACKENDS`). Without ``fn``: a decorator.

    A second registration of the same triple replaces the first (a test, or a faster kernel).
    """
    if not isinstance(op, str) or not op:
        raise ValueError(f"`op` must be a non-empty string, got {op!r}")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if backend == "native" and device_type != "cpu":
        raise ValueError(f"`device_type` of a native kernel must be 'cpu', got {device_type!r}")

    def add(f: F) -> F:
        _TABLE[(op, device_type, backend)] = Kernel(op, device_type, backend, f, float_loops)
        _RESOLVED.clear()  # resolutions made before this registration are stale
        return f

    return add if fn is None else add(fn)


def registered(op: str | None = None) -> list[Kernel]:
    """The registered kernels (of ``op``), in registration order."""
    return [k for k in _TABLE.values() if op is None or k.op == op]


class Kernels:
    """The kernel of every operation for one device type and what is available there
    (resolved by :func:`kernels_for`, shared by every call with the same key)."""

    def __init__(self, device_type: str, native: bool, fused: bool) -> None:
        self.device_type = device_type
        #: the call's backend: ``"native"`` where host loops are loaded, else ``"torch"``
        self.backend = "native" if native else "torch"
        self._native, self._fused = native, fused
        self._chosen: dict[str, Kernel | None] = {}

    def _usable(self, k: Kernel) -> bool:
        if k.backend == "native":
            return self._native and (self._fused or not k.float_loops)
        return True

    def choose(self, op: str) -> Kernel | None:
        """The kernel ``op`` runs with here (``None``: none registered)."""
        if op not in self._chosen:
            found = None
            for backend in PREFERENCE.get(self.device_type, ("torch",)):
                for dev in (self.device_type, "any"):
                    k = _TABLE.get((op, dev, backend))
                    if k is not None and self._usable(k):
                        found = k
                        break
                if found is not None:
                    break
            self._chosen[op] = found
        return self._chosen[op]

    def get(self, op: str) -> Callable[..., Any] | None:
        k = self.choose(op)
        return None if k is None else k.fn

    def __getitem__(self, op: str) -> Callable[..., Any]:
        k = self.choose(op)
        if k is None:
            have = sorted({key[0] for key in _TABLE})
            raise KeyError(
                f"no kernel for {op!r} on {self.device_type!r} (registered operations: {have})"
            )
        return k.fn

    def is_native(self, op: str) -> bool:
        """Whether ``op`` runs with a native kernel here."""
        k = self.choose(op)
        return k is not None and k.backend == "native"

    def __repr__(self) -> str:
        return f"Kernels({self.device_type}, backend={self.backend}, fused={self._fused})"


def kernels_for(device: torch.device | str) -> Kernels:
    """The kernels for ``device``: chosen once per device type and availability of the
    native loops (cached; a registration clears the cache)."""
    device_type = torch.device(device).type
    native = device_type == "cpu" and _native.lib() is not None
    fused = native and _native.fused()
    key = (device_type, native, fused)
    table = _RESOLVED.get(key)
    if table is None:
        table = _RESOLVED[key] = Kernels(device_type, native, fused)
    return table
