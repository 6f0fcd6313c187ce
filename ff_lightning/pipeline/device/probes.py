"""Memory probes: how much device memory augmentation may use.

A probe reports GPU-wide free memory (other processes count, so NVML is preferred) and the
PyTorch caching allocator's reserved, allocated and peak bytes. :func:`make_probe` picks one
for a device: NVML + allocator stats on CUDA, ``torch.cuda.mem_get_info`` when NVML cannot be
loaded, cannot find the device, or the device is a MIG instance (logged, not raised), and a
:class:`NullProbe` (no budget) on CPU.

**Which NVML device.** CUDA numbers devices fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
and renumbers them through ``CUDA_VISIBLE_DEVICES``; NVML numbers every GPU by PCI bus. An
index therefore says nothing about NVML's device, so the probe matches the device's UUID
(``torch.cuda.get_device_properties(i).uuid``) against NVML's (``nvmlDeviceGetHandleByUUID``,
then ``nvmlDeviceGetUUID`` over all devices). Under MIG, NVML's memory figures are the parent
GPU's, which overstate an instance's budget, so a MIG instance gets ``torch.cuda.mem_get_info``.
"""

from __future__ import annotations

import logging
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "MemoryProbe",
    "MigDeviceError",
    "NullProbe",
    "NvmlMatch",
    "NvmlProbe",
    "TorchCudaProbe",
    "find_nvml_device",
    "make_probe",
]

log = logging.getLogger("ff_lightning")

DeviceProperties = Callable[[int], Any]  # torch.cuda.get_device_properties, or a test double

_NVML_DEVICE_MIG_ENABLE = 1  # pynvml.NVML_DEVICE_MIG_ENABLE


@runtime_checkable
class MemoryProbe(Protocol):
    """What the memory guard needs to know about a device (bytes; ``None``: unknown)."""

    name: str
    available: bool  # whether the probe knows the device's free memory

    def total_bytes(self) -> int | None: ...
    def free_bytes(self) -> int | None: ...  # device-wide: other processes count
    def reserved_bytes(self) -> int: ...  # held by PyTorch's caching allocator
    def allocated_bytes(self) -> int: ...  # in live tensors
    def peak_allocated_bytes(self) -> int: ...  # the allocator's peak (the guard never resets it)
    def reset_peak(self) -> None: ...  # for the user's own use; the memory guard never calls it
    def utilization_percent(self) -> float | None: ...  # GPU busy %, None when unknown


class MigDeviceError(RuntimeError):
    """The CUDA device is a MIG instance: NVML's memory figures would be the parent GPU's."""


@dataclass(frozen=True)
class NvmlMatch:
    """The NVML device of a CUDA device: its handle, NVML's UUID string, and whether it is a
    MIG instance (or a GPU with MIG enabled)."""

    handle: Any
    uuid: str
    mig: bool


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


class _NvmlUtilization:
    """``nvmlDeviceGetUtilizationRates(handle).gpu``; ``None`` without a handle, and for good
    after the first failure (MIG instances and some GPUs answer NOT_SUPPORTED every time)."""

    _nvml: Any = None
    _handle: Any = None

    def utilization_percent(self) -> float | None:
        if self._nvml is None or self._handle is None:
            return None
        try:
            return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except Exception as err:  # NVMLError_NotSupported and friends: stop asking
            log.debug(
                "ff_lightning: NVML utilisation unavailable (%s: %s)", type(err).__name__, err
            )
            self._handle = None
            return None


def _bare_uuid(value: Any) -> str | None:
    """A UUID as lower-case ``8-4-4-4-12`` hex without NVML's ``GPU-``/``MIG-`` prefix.

    Accepts torch's ``_CUuuid`` (its ``bytes``), ``bytes``, or a string with or without prefix.
    """
    if value is None:
        return None
    raw = getattr(value, "bytes", value)
    if isinstance(raw, bytes | bytearray) and len(raw) == 16:
        return str(_uuid.UUID(bytes=bytes(raw)))
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("ascii", "replace")
    text = str(raw).strip().strip("\0").lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text or None


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes | bytearray) else str(value)


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    """Whether NVML says MIG is on for ``handle`` (False when it cannot say)."""
    get = getattr(nvml, "nvmlDeviceGetMigMode", None)
    if get is None:
        return False
    try:
        current = get(handle)
    except Exception:  # NOT_SUPPORTED on GPUs without MIG
        return False
    if isinstance(current, tuple | list):
        current = current[0]  # (current, pending)
    return int(current) == _NVML_DEVICE_MIG_ENABLE


def find_nvml_device(
    nvml: Any, device_index: int, device_properties: DeviceProperties | None = None
) -> NvmlMatch:
    """The NVML device that is CUDA device ``device_index``, matched by UUID.

    Tries ``nvmlDeviceGetHandleByUUID`` with NVML's ``GPU-`` and ``MIG-`` spellings of the
    UUID, then compares ``nvmlDeviceGetUUID`` over every NVML device. NVML must be initialised.
    Raises ``LookupError`` when the UUID is unknown or no device has it.
    """
    props = (device_properties or torch.cuda.get_device_properties)(device_index)
    raw = getattr(props, "uuid", None)
    want = _bare_uuid(raw)
    if not want:
        raise LookupError(f"cuda:{device_index} reports no UUID")
    said_mig = _text(getattr(raw, "bytes", raw)).upper().startswith("MIG-")
    by_uuid = getattr(nvml, "nvmlDeviceGetHandleByUUID", None)
    if by_uuid is not None:
        for prefix in ("MIG-", "GPU-") if said_mig else ("GPU-", "MIG-"):
            try:
                handle = by_uuid(f"{prefix}{want}")
            except Exception:
                continue
            mig = prefix == "MIG-" or _mig_enabled(nvml, handle)
            return NvmlMatch(handle, f"{prefix}{want}", mig)
    count = int(nvml.nvmlDeviceGetCount())
    for i in range(count):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        have = _text(nvml.nvmlDeviceGetUUID(handle))
        if _bare_uuid(have) == want:
            mig = said_mig or have.upper().startswith("MIG-") or _mig_enabled(nvml, handle)
            return NvmlMatch(handle, have, mig)
    raise LookupError(f"no NVML device has the UUID of cuda:{device_index} ({want})")


class NvmlProbe(_NvmlUtilization, _AllocatorStats):
    """GPU-wide free/total memory from NVML plus the allocator's counters.

    Args:
        device_index: the CUDA device index as PyTorch numbers it.
        nvml: a ``pynvml``-like module (default: ``import pynvml`` from nvidia-ml-py).
        nvml_index: the device's NVML index, to bypass the UUID lookup (default: found by
            matching the device's UUID, see :func:`find_nvml_device`).
        device_properties: ``index -> properties with a .uuid`` (default:
            ``torch.cuda.get_device_properties``; tests inject their own).

    Raises whatever NVML raises when it cannot be loaded or initialised, ``LookupError`` when
    no NVML device has the device's UUID and :class:`MigDeviceError` for a MIG instance.
    """

    name = "nvml"
    available = True

    def __init__(
        self,
        device_index: int = 0,
        *,
        nvml: ModuleType | Any = None,
        nvml_index: int | None = None,
        device_properties: DeviceProperties | None = None,
    ) -> None:
        super().__init__(device_index)
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        self._nvml = nvml
        nvml.nvmlInit()
        if nvml_index is not None:
            self._handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
            self.uuid: str | None = None
            return
        match = find_nvml_device(nvml, device_index, device_properties)
        if match.mig:
            raise MigDeviceError(
                f"cuda:{device_index} is a MIG instance ({match.uuid}); NVML would report the "
                "parent GPU's memory"
            )
        self._handle = match.handle
        self.uuid = match.uuid

    def total_bytes(self) -> int | None:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)

    def free_bytes(self) -> int | None:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).free)


class TorchCudaProbe(_NvmlUtilization, _AllocatorStats):
    """Free/total memory from ``torch.cuda.mem_get_info`` (the CUDA driver; other processes
    count; a MIG instance's own memory) when NVML is not available or not right.

    Args:
        device_index: the CUDA device index as PyTorch numbers it.
        nvml, handle: an initialised ``pynvml``-like module and the device's handle, for
            :meth:`utilization_percent` only (default: none, utilisation unknown).
    """

    name = "torch.cuda"

    def __init__(self, device_index: int = 0, *, nvml: Any = None, handle: Any = None) -> None:
        super().__init__(device_index)
        self.available = torch.cuda.is_available()
        self._nvml, self._handle = nvml, handle

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

    def utilization_percent(self) -> float | None:
        return None


def make_probe(
    device: torch.device | str | int,
    *,
    nvml_module: ModuleType | Any = None,
    logger: logging.Logger | None = None,
    device_properties: DeviceProperties | None = None,
) -> tuple[MemoryProbe, str]:
    """Choose a probe for ``device`` and say which, and why.

    CUDA with a working NVML that finds the device by UUID: :class:`NvmlProbe`. A MIG
    instance: :class:`TorchCudaProbe` (logged at info level). NVML missing, failing, or not
    finding the device: :class:`TorchCudaProbe`, with the reason logged as a warning. Anything
    else: :class:`NullProbe`. ``nvml_module`` injects a ``pynvml``-like module and
    ``device_properties`` an ``index -> properties`` function (tests).
    """
    logger = logger or log
    dev = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    if dev.type != "cuda":
        return NullProbe(), f"memory probe: none on {dev.type} (no device memory budget)"
    index = dev.index
    if index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    try:
        probe: MemoryProbe = NvmlProbe(index, nvml=nvml_module, device_properties=device_properties)
        return probe, f"memory probe: NVML for cuda:{index} ({probe.uuid})"  # type: ignore[attr-defined]
    except MigDeviceError as err:
        note = f"memory probe: {err}; using torch.cuda.mem_get_info"
        logger.info(note)
        return TorchCudaProbe(index), note
    except Exception as err:  # ImportError, NVMLError_*, LookupError: never fail training
        note = (
            f"memory probe: NVML unavailable for cuda:{index} ({type(err).__name__}: {err}); "
            "falling back to torch.cuda.mem_get_info"
        )
        logger.warning(note)
        return TorchCudaProbe(index), note
