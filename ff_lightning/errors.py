"""Exception classes shared across ff_lightning.

Each class also derives from the matching built-in exception, so callers that already catch
``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "CorruptImageError", "DatasetNotFoundError", "FFLightningError"]


class FFLightningError(Exception):
    """Base class of every error raised on purpose by ff_lightning."""


class ConfigError(FFLightningError, ValueError):
    """An argument or configuration value is invalid."""


class DatasetNotFoundError(FFLightningError, FileNotFoundError):
    """A dataset, or a file it needs, is missing; the message says what was expected where."""


class CorruptImageError(FFLightningError, OSError):
    """An image file exists but cannot be decoded."""
