"""The recipes' engine: training, planning and benchmarking jobs driven by Hydra configs.

``recipes/train.py``, ``recipes/benchmark.py`` and ``recipes/plan.py`` are thin shells around
:func:`ff_lightning.app.train.train`, :func:`ff_lightning.app.bench.run_benchmark` and
:func:`ff_lightning.app.plan.run_plan`; the models they train live in
:mod:`ff_lightning.app.models`, the stock torchvision baseline in :mod:`ff_lightning.app.stock`
and the throughput meter in :mod:`ff_lightning.app.meters`.

This package is not on the plugin's import path: nothing outside it imports it. It needs the
recipes' extras (``pip install "ff-lightning[recipes]"``: Hydra, kornia, matplotlib).
"""
