"""Moved to :mod:`ff_lightning.pipeline.device.probes`; this path keeps earlier imports working."""

from ff_lightning.pipeline.device.probes import *  # noqa: F401,F403
from ff_lightning.pipeline.device.probes import __all__  # noqa: F401
