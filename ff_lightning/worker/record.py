"""Moved to :mod:`ff_lightning.pipeline.batch`; this path keeps earlier imports working."""

from ff_lightning.pipeline.batch import *  # noqa: F401,F403
from ff_lightning.pipeline.batch import __all__  # noqa: F401
