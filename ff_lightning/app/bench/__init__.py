"""``recipes/benchmark.py``'s engine: the same training job once per mode, side by side.

- :mod:`.modes`: the benchmark's modes and the DataModule each one trains from;
- :mod:`.progress`: the rich progress bar over runs and steps;
- :mod:`.report`: ``benchmark.json``'s ratios, the environment record, table and chart;
- :mod:`.runner`: the interleaved rounds (:func:`run_benchmark`).
"""

from ff_lightning.app.bench.modes import parse_mode
from ff_lightning.app.bench.report import environment, summarise
from ff_lightning.app.bench.runner import run_benchmark, run_one

__all__ = ["environment", "parse_mode", "run_benchmark", "run_one", "summarise"]
