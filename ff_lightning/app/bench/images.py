"""The synthetic uint8 batches the kernel benchmarks (``recipes/benchmark_*.py``) time."""

from __future__ import annotations

import torch

__all__ = ["gradient_batch"]


def gradient_batch(
    batch: int, size: int, *, seed: int = 0, low_contrast: bool = False
) -> torch.Tensor:
    """Smooth colour gradients with noise, uint8 ``[B, 3, S, S]`` on the CPU; with
    ``low_contrast`` every other image is squeezed into half the range (histogram ops then
    have work to do)."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.linspace(0, 1, size)
    yy, xx = lin[:, None], lin[None, :]
    base = torch.stack([yy * 200 + xx * 40, yy * 0 + xx * 180 + 30, (yy + xx) * 110 + 10])
    x = base + torch.rand(batch, 3, 1, 1, generator=g) * 40
    x = x + torch.randn(batch, 3, size, size, generator=g) * 8
    if low_contrast:
        x[::2] = x[::2] * 0.5 + 50
    return x.clamp(0, 255).to(torch.uint8)
