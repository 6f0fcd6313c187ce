"""Moved to :mod:`ff_lightning.pipeline.loader`; this path keeps earlier imports working."""

from ff_lightning.pipeline.loader import *  # noqa: F401,F403
from ff_lightning.pipeline.loader import __all__  # noqa: F401
