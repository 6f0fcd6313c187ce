"""Pure core of the CPU/device split: the offload controller, memory probes and guard."""

from ff_lightning.fusion.controller import MODES, Controller, CostModel, Decision, StepStats
from ff_lightning.fusion.memory import MemoryGuard
from ff_lightning.fusion.probes import (
    FakeProbe,
    MemoryProbe,
    NullProbe,
    NvmlProbe,
    TorchCudaProbe,
    make_probe,
)

__all__ = [
    "MODES",
    "Controller",
    "CostModel",
    "Decision",
    "FakeProbe",
    "MemoryGuard",
    "MemoryProbe",
    "NullProbe",
    "NvmlProbe",
    "StepStats",
    "TorchCudaProbe",
    "make_probe",
]
