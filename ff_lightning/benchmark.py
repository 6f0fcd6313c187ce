"""Side-by-side training-throughput benchmark of the FusionFlow modes (``recipes/benchmark.py``).

The engine lives in :mod:`ff_lightning.bench`; this module keeps the names callers import.
"""

from __future__ import annotations

from ff_lightning.bench.clock import StepClock
from ff_lightning.bench.modes import CeilingDataModule, parse_mode
from ff_lightning.bench.report import environment, summarise
from ff_lightning.bench.runner import run_benchmark, run_one

_parse_mode = parse_mode  # the name the first tests imported

__all__ = [
    "CeilingDataModule",
    "StepClock",
    "environment",
    "parse_mode",
    "run_benchmark",
    "run_one",
    "summarise",
]
