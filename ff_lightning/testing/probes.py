"""Test doubles for the device's memory probes."""

from __future__ import annotations

__all__ = ["FakeProbe"]


class FakeProbe:
    """A probe with settable numbers, for tests. ``reset_peak`` sets the peak to the current
    allocation; tests raise ``peak`` inside the augmentation to simulate working memory."""

    name = "fake"

    def __init__(
        self,
        *,
        total: int | None = 16 << 30,
        free: int | None = 8 << 30,
        reserved: int = 0,
        allocated: int = 0,
        peak: int = 0,
        available: bool = True,
    ) -> None:
        self.total, self.free = total, free
        self.reserved, self.allocated, self.peak = reserved, allocated, peak
        self.available = available
        self.resets = 0

    def total_bytes(self) -> int | None:
        return self.total

    def free_bytes(self) -> int | None:
        return self.free

    def reserved_bytes(self) -> int:
        return self.reserved

    def allocated_bytes(self) -> int:
        return self.allocated

    def peak_allocated_bytes(self) -> int:
        return self.peak

    def reset_peak(self) -> None:
        self.peak = self.allocated
        self.resets += 1
