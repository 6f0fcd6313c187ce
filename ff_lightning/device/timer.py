"""Moved to :mod:`ff_lightning.pipeline.device.timer`; this path keeps earlier imports working."""

from ff_lightning.pipeline.device.timer import *  # noqa: F401,F403
from ff_lightning.pipeline.device.timer import __all__  # noqa: F401
