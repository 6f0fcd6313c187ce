"""Host-to-device copies that do not synchronise the CUDA stream, and the device caches' list."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["HostPack", "clear_device_caches", "device_cache", "device_cache_dict", "h2d"]

_CACHES: list[Callable[[], None]] = []


def device_cache(clear: Callable[[], None]) -> Callable[[], None]:
    """Register ``clear``, which empties a module-level cache of device tensors, so that
    :func:`clear_device_caches` reaches it. Returns ``clear``."""
    _CACHES.append(clear)
    return clear


def device_cache_dict() -> dict:
    """A new dict for device tensors, registered with :func:`device_cache`."""
    cache: dict = {}
    device_cache(cache.clear)
    return cache


def clear_device_caches() -> None:
    """Empty every registered cache of device tensors (index tables, constants, ramps).

    Tensors stay cached by device name; code that swaps what a device name means (the fake
    CUDA devices of :mod:`ff_lightning.testing.fake_cuda`, in tests) calls this first and
    after, so that no tensor of one crosses to the other.
    """
    for clear in _CACHES:
        clear()


def h2d(t: Tensor, device: torch.device | str) -> Tensor:
    """Move a (small) host tensor to ``device`` without blocking on the stream.

    A plain ``cpu_tensor.to("cuda")`` copies from pageable memory, which waits for all work
    queued on the stream (the previous step's backward included). Pinning first makes the copy
    asynchronous; the caching host allocator keeps the pinned buffer alive until it is done.
    """
    device = torch.device(device)
    if t.device == device or device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class HostPack:
    """Small host tensors of mixed dtypes that travel to a device in ONE copy.

    ``add`` returns a slot (``None`` stays ``None``); ``to(device)`` returns the tensors on
    ``device`` by slot: on the host they are returned as they are, elsewhere their bytes are
    packed (8-byte aligned) into one uint8 buffer, copied with :func:`h2d` and viewed back
    on the device, so a whole op slot's indices and parameters cost one pinned copy.
    """

    def __init__(self) -> None:
        self._tensors: list[Tensor | None] = []

    def add(self, t: Tensor | None) -> int:
        self._tensors.append(t)
        return len(self._tensors) - 1

    def to(self, device: torch.device | str) -> list[Tensor | None]:
        device = torch.device(device)
        if device.type == "cpu":
            return list(self._tensors)
        parts: list[Tensor] = []
        layout: list[tuple[int, int, torch.dtype, tuple[int, ...]] | None] = []
        offset = 0
        for t in self._tensors:
            if t is None:
                layout.append(None)
                continue
            raw = t.contiguous().view(-1).view(torch.uint8)
            n = raw.numel()
            pad = -n % 8
            parts.append(raw)
            if pad:
                parts.append(torch.zeros(pad, dtype=torch.uint8))
            layout.append((offset, n, t.dtype, tuple(t.shape)))
            offset += n + pad
        if not parts:
            return [None] * len(layout)
        buf = h2d(torch.cat(parts), device)
        return [
            None if e is None else buf[e[0] : e[0] + e[1]].view(e[2]).view(e[3]) for e in layout
        ]
