"""Both Lightning namespaces: ``lightning.pytorch`` and the standalone ``pytorch_lightning``.

The two packages ship the same Trainer under two names, and each Trainer checks hooks against
its own base classes. ``FusionDataModule`` and ``FusionFlow`` derive from the base classes of
both (when ``pytorch_lightning`` is installed), so either Trainer accepts them and calls their
hooks; hooks we do not define resolve to ``lightning.pytorch``'s defaults, which work under
both. Whether a user's module overrides a hook is decided here, for either namespace.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import lightning.pytorch as lp

__all__ = ["CALLBACK_BASES", "DATAMODULE_BASES", "NAMESPACES", "overrides"]

NAMESPACES: tuple[str, ...] = ("lightning.pytorch",)
DATAMODULE_BASES: tuple[type, ...] = (lp.LightningDataModule,)
CALLBACK_BASES: tuple[type, ...] = (lp.Callback,)

if importlib.util.find_spec("pytorch_lightning") is not None:  # pragma: no branch
    try:
        import pytorch_lightning as pl
    except Exception:  # a broken install must not break the lightning.pytorch route
        pl = None
    if pl is not None:
        NAMESPACES = (*NAMESPACES, "pytorch_lightning")
        DATAMODULE_BASES = (*DATAMODULE_BASES, pl.LightningDataModule)
        CALLBACK_BASES = (*CALLBACK_BASES, pl.Callback)

_FRAMEWORK_PREFIXES = ("lightning.", "pytorch_lightning.")


def overrides(obj: Any, name: str) -> bool:
    """Whether ``obj``'s class (a LightningModule of either namespace) defines hook ``name``
    itself, rather than inheriting Lightning's default."""
    for cls in type(obj).__mro__:
        if name in cls.__dict__:
            return not cls.__module__.startswith(_FRAMEWORK_PREFIXES)
    return False
