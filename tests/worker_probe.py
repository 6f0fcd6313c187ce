"""A dataset that reports, through its targets, what the process reading it has imported.

It lives in a module of its own that imports only torch, so that a spawned DataLoader worker
which unpickles it imports nothing else on its behalf.
"""

from __future__ import annotations

import sys

import torch


class ImportProbe(torch.utils.data.Dataset):
    """Items whose target is the number of loaded modules under the given prefixes."""

    def __init__(self, prefixes: tuple[str, ...], n: int = 8) -> None:
        self.prefixes, self.n = prefixes, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        loaded = [m for m in sys.modules if m.startswith(self.prefixes)]
        return torch.full((3, 8, 8), i, dtype=torch.uint8), len(loaded)
