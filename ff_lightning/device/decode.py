"""Moved to :mod:`ff_lightning.pipeline.device.decode`; this path keeps earlier imports working."""

from ff_lightning.pipeline.device.decode import *  # noqa: F401,F403
from ff_lightning.pipeline.device.decode import __all__  # noqa: F401
