"""Moved to :mod:`ff_lightning.pipeline.worker.geometry`; this path keeps earlier imports working."""

from ff_lightning.pipeline.worker.geometry import *  # noqa: F401,F403
from ff_lightning.pipeline.worker.geometry import __all__  # noqa: F401
