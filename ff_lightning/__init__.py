"""ff_lightning: CPU-GPU cooperative data augmentation for PyTorch Lightning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FusionDataModule", "FusionFlow", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from ff_lightning.frontends.callback import FusionFlow
    from ff_lightning.frontends.datamodule import FusionDataModule


def __getattr__(name: str) -> Any:
    # Lazy exports keep `import ff_lightning.augment` light (no Lightning import in workers).
    if name == "FusionDataModule":
        from ff_lightning.frontends.datamodule import FusionDataModule

        return FusionDataModule
    if name == "FusionFlow":
        from ff_lightning.frontends.callback import FusionFlow

        return FusionFlow
    raise AttributeError(f"module 'ff_lightning' has no attribute {name!r}")
