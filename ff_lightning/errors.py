"""Exception classes shared across ff_lightning.

Each class also derives from the matching built-in exception, so callers that already catch
``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CorruptImageError",
    "DatasetNotFoundError",
    "FFLightningError",
    "one_line",
]


class FFLightningError(Exception):
    """Base class of every error raised on purpose by ff_lightning."""


class ConfigError(FFLightningError, ValueError):
    """An argument or configuration value is invalid."""


class DatasetNotFoundError(FFLightningError, FileNotFoundError):
    """A dataset, or a file it needs, is missing; the message says what was expected where."""


class CorruptImageError(FFLightningError, OSError):
    """An image file exists but cannot be decoded."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, for the recipes' ``error: ...``.

    An exception raised in a DataLoader worker reaches the main process re-raised with the
    worker's whole traceback in its message ("Caught X in DataLoader worker process 0 ...
    Original Traceback ..."); the last line of that traceback is the original message.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        name = type(err).__name__
        for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                last = last[len(prefix) :]
                break
        text = last
    return " ".join(text.split("\n"))
