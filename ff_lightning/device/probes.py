"""Memory probes: how much device memory augmentation may use.

A probe reports GPU-wide free memory (other processes count, so NVML is preferred) and the
PyTorch caching allocator's reserved, allocated and peak bytes. :func:`make_probe` picks one
for a device: NVML + allocator stats on CUDA, ``torch.cuda.mem_get_info`` when NVML cannot be
loaded (logged, not raised), and a :class:`NullProbe` (no budget) on CPU.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "MemoryProbe",
    "NullProbe",
    "NvmlProbe",
    "TorchCudaProbe",
    "make_probe",
]

log = logging.getLogger("ff_lightning")


@runtime_checkable
class MemoryProbe(Protocol):
    """What the memory guard needs to know about a device (bytes; ``None``: unknown)."""

    name: str
    available: bool  # whether the probe knows the device's free memory

    def total_bytes(self) -> int | None: ...
    def free_bytes(self) -> int | None: ...  # device-wide: other processes count
    def reserved_bytes(self) -> int: ...  # held by PyTorch's caching allocator
    def allocated_bytes(self) -> int: ...  # in live tensors
    def peak_allocated_bytes(self) -> int: ...  # since the last reset_peak()
    def reset_peak(self) -> None: ...


class _AllocatorStats:
    """The PyTorch caching allocator's counters for one CUDA device (0 without CUDA)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def _on(self) -> bool:
        return torch.cuda.is_available() and torch.cuda.is_initialized()

    def reserved_bytes(self) -> int:
        return int(torch.cuda.memory_reserved(self.index)) if self._on() else 0

    def allocated_bytes(self) -> int:
        return int(torch.cuda.memory_allocated(self.index)) if self._on() else 0

    def peak_allocated_bytes(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.index)) if self._on() else 0

    def reset_peak(self) -> None:
        if self._on():
            torch.cuda.reset_peak_memory_stats(self.index)


class NvmlProbe(_AllocatorStats):
    """GPU-wide free/total memory from NVML plus the allocator's counters.

    Args:
        device_index: the CUDA device index as PyTorch numbers it.
        nvml: a ``pynvml``-like module (default: ``import pynvml`` from nvidia-ml-py).
        nvml_index: the device's NVML index; NVML ignores ``CUDA_VISIBLE_DEVICES``, so it can
            differ from ``device_index`` (default: mapped as ``torch.cuda`` maps it).

    Raises whatever NVML raises when it cannot be loaded or initialised.
    """

    name = "nvml"
    available = True

    def __init__(
        self, device_index: int = 0, *, nvml: ModuleType | Any = None, nvml_index: int | None = None
    ) -> None:
        super().__init__(device_index)
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        self._nvml = nvml
        nvml.nvmlInit()
        idx = _nvml_index(device_index) if nvml_index is None else nvml_index
        self._handle = nvml.nvmlDeviceGetHandleByIndex(idx)

    def total_bytes(self) -> int | None:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)

    def free_bytes(self) -> int | None:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).free)


class TorchCudaProbe(_AllocatorStats):
    """Free/total memory from ``torch.cuda.mem_get_info`` (the CUDA driver; other processes
    count) when NVML is not available."""

    name = "torch.cuda"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__(device_index)
        self.available = torch.cuda.is_available()

    def total_bytes(self) -> int | None:
        return int(torch.cuda.mem_get_info(self.index)[1]) if self.available else None

    def free_bytes(self) -> int | None:
        return int(torch.cuda.mem_get_info(self.index)[0]) if self.available else None


class NullProbe:
    """No memory budget (CPU): free memory unknown, counters zero."""

    name = "none"
    available = False

    def total_bytes(self) -> int | None:
        return None

    def free_bytes(self) -> int | None:
        return None

    def reserved_bytes(self) -> int:
        return 0

    def allocated_bytes(self) -> int:
        return 0

    def peak_allocated_bytes(self) -> int:
        return 0

    def reset_peak(self) -> None:
        pass


def _nvml_index(device_index: int) -> int:
    """The NVML index of a PyTorch CUDA device (NVML ignores ``CUDA_VISIBLE_DEVICES``)."""
    try:
        return int(torch.cuda._get_nvml_device_index(device_index))  # handles UUIDs too
    except Exception:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            if device_index < len(ids) and ids[device_index].isdigit():
                return int(ids[device_index])
        return device_index


def make_probe(
    device: torch.device | str | int,
    *,
    nvml_module: ModuleType | Any = None,
    logger: logging.Logger | None = None,
) -> tuple[MemoryProbe, str]:
    """Choose a probe for ``device`` and say which, and why.

    CUDA with a working NVML: :class:`NvmlProbe`. CUDA without (NVML missing, or its init
    fails): :class:`TorchCudaProbe`, with the reason logged as a warning. Anything else:
    :class:`NullProbe`. ``nvml_module`` injects a ``pynvml``-like module (tests).
    """
    logger = logger or log
    dev = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    if dev.type != "cuda":
        return NullProbe(), f"memory probe: none on {dev.type} (no device memory budget)"
    index = dev.index
    if index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    try:
        probe: MemoryProbe = NvmlProbe(index, nvml=nvml_module)
        return probe, f"memory probe: NVML for cuda:{index}"
    except Exception as err:  # ImportError, NVMLError_*: fall back, never fail training
        note = (
            f"memory probe: NVML unavailable for cuda:{index} ({type(err).__name__}: {err}); "
            "falling back to torch.cuda.mem_get_info"
        )
        logger.warning(note)
        return TorchCudaProbe(index), note
