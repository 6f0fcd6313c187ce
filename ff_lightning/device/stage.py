"""Moved to :mod:`ff_lightning.pipeline.device.stage`; this path keeps earlier imports working."""

from ff_lightning.pipeline.device.stage import *  # noqa: F401,F403
from ff_lightning.pipeline.device.stage import __all__  # noqa: F401
