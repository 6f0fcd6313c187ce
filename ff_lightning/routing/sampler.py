"""Moved to :mod:`ff_lightning.pipeline.routing`; this path keeps earlier imports working."""

from ff_lightning.pipeline.routing import *  # noqa: F401,F403
from ff_lightning.pipeline.routing import __all__  # noqa: F401
