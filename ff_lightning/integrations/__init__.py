"""Adapters for training loops other than Lightning's ``Trainer``.

- :class:`~ff_lightning.integrations.accelerate.FusionAccelerate`: a plain PyTorch loop or a
  Hugging Face Accelerate loop (``pip install ff-lightning[accelerate]``; works without
  Accelerate too).

Importing this package does not import ``accelerate``.
"""

from ff_lightning.integrations.accelerate import FusionAccelerate

__all__ = ["FusionAccelerate"]
