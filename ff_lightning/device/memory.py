"""Moved to :mod:`ff_lightning.pipeline.device.memory`; this path keeps earlier imports working."""

from ff_lightning.pipeline.device.memory import *  # noqa: F401,F403
from ff_lightning.pipeline.device.memory import __all__  # noqa: F401
