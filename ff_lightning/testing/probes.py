"""Test doubles for the device's memory probes: a probe with settable numbers and a fake NVML
module with a few GPUs (and MIG instances) for :func:`~ff_lightning.pipeline.device.probes.make_probe`."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

__all__ = ["FakeGpu", "FakeNvml", "FakeProbe"]


class FakeProbe:
    """A probe with settable numbers, for tests.

    Like the CUDA allocator, ``peak`` only rises: :meth:`touch` records working memory on top
    of ``allocated`` (what an augmentation does), and only :meth:`reset_peak` lowers it;
    ``resets`` counts those calls (the memory guard must make none).
    """

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
        utilization: float | None = None,
    ) -> None:
        self.total, self.free = total, free
        self.reserved, self.allocated, self.peak = reserved, allocated, max(peak, allocated)
        self.available = available
        self.utilization = utilization
        self.resets = 0

    def touch(self, working: int) -> None:
        """Working memory of ``working`` bytes above the current allocation, then freed."""
        self.peak = max(self.peak, self.allocated + working)

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

    def utilization_percent(self) -> float | None:
        return self.utilization


class FakeNVMLError(Exception):
    """Stands in for ``pynvml.NVMLError``."""


@dataclass
class FakeGpu:
    """One NVML device. ``uuid`` is NVML's spelling (``GPU-...`` or ``MIG-...``)."""

    uuid: str
    total: int = 80 << 30
    free: int = 30 << 30
    utilization: int | None = 40  # None: NOT_SUPPORTED
    mig_mode: int | None = None  # None: NOT_SUPPORTED; 1: enabled; 0: disabled
    by_uuid: bool = True  # False: nvmlDeviceGetHandleByUUID does not know it (MIG on old drivers)


@dataclass
class FakeNvml:
    """A ``pynvml``-like module over :class:`FakeGpu` devices, numbered in PCI bus order.

    ``fail_init`` makes ``nvmlInit`` raise (driver not loaded); ``fail`` names functions that
    raise. ``calls`` records the lookups made. :meth:`device_properties` builds the
    ``index -> properties`` function of CUDA devices that are NVML devices ``order``.
    """

    gpus: list[FakeGpu] = field(default_factory=list)
    fail_init: bool = False
    fail: tuple[str, ...] = ()
    calls: list[tuple[str, Any]] = field(default_factory=list)
    NVMLError: type[Exception] = FakeNVMLError
    NVML_DEVICE_MIG_ENABLE: int = 1

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise FakeNVMLError(f"{name}: Unknown Error")

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.calls.append(("init", None))
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        self.calls.append(("index", index))
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGpu:  # noqa: N802
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        self.calls.append(("uuid", text))
        self._check("nvmlDeviceGetHandleByUUID")
        for gpu in self.gpus:
            if gpu.by_uuid and gpu.uuid == text:
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:  # noqa: N802
        self._check("nvmlDeviceGetUUID")
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        self._check("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(
            total=handle.total, free=handle.free, used=handle.total - handle.free
        )

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> tuple[int, int]:  # noqa: N802
        if handle.mig_mode is None:
            raise FakeNVMLError("Not Supported")
        return handle.mig_mode, handle.mig_mode

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        self.calls.append(("utilization", handle.uuid))
        if handle.utilization is None:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=handle.utilization, memory=0)

    def device_properties(self, order: list[int], *, uuids: list[str] | None = None) -> Any:
        """``index -> properties`` for CUDA devices ``0..len(order)-1`` that are NVML devices
        ``order[i]``; each has a ``uuid`` spelled as torch prints it (no ``GPU-`` prefix), or
        ``uuids[i]`` verbatim when given."""

        def props(index: int) -> SimpleNamespace:
            if not 0 <= index < len(order):
                raise RuntimeError(f"Invalid device id {index}")
            if uuids is not None:
                return SimpleNamespace(uuid=uuids[index])
            nvml_uuid = self.gpus[order[index]].uuid
            return SimpleNamespace(uuid=nvml_uuid.split("-", 1)[1])

        return props
