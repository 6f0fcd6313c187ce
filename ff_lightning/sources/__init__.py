"""Where samples come from: map-style datasets read from disk and the embedded synthetic set.

``build_source(kind, split, ...)`` builds one split (``synthetic``, ``imagefolder``,
``cifar10``); items are ``(PIL image or uint8 [C, H, W] tensor, int target)``.
"""

from ff_lightning.sources.datasets import build_source

__all__ = ["build_source"]
