"""Moved to :mod:`ff_lightning.pipeline.worker.dataset`; this path keeps earlier imports working."""

from ff_lightning.pipeline.worker.dataset import *  # noqa: F401,F403
from ff_lightning.pipeline.worker.dataset import __all__  # noqa: F401
