"""Host-to-device copies that do not synchronise the CUDA stream."""

from __future__ import annotations

import torch
from torch import Tensor


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
