"""The pipeline without Lightning: the batch record, the worker half, the device stage, the loaders.

Layers, each importing only those below it:

- :mod:`.batch`: the records that travel with a batch (routed batch, route record, encoded
  share, step statistics);
- :mod:`.jpeg`: JPEG header probe and batched decode, used by both routes;
- :mod:`.routing` and :mod:`.loader`: the router, the samplers and the resumable loader
  (main process);
- :mod:`.worker`: what runs in each DataLoader worker;
- :mod:`.device`: the device stage, its memory guard, probes and timer;
- :mod:`.options`, :mod:`.stages` and :mod:`.pipeline`: the :class:`Pipeline` object built from
  one :class:`PipelineOptions` and an ordered list of stages;
- :mod:`.views`: multi-view training's view groups as users give them, and the seed of each view.

The package's names are loaded lazily: a DataLoader worker imports only the modules it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Pipeline", "PipelineOptions"]

if TYPE_CHECKING:  # pragma: no cover
    from ff_lightning.pipeline.options import PipelineOptions
    from ff_lightning.pipeline.pipeline import Pipeline


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from ff_lightning.pipeline.pipeline import Pipeline

        return Pipeline
    if name == "PipelineOptions":
        from ff_lightning.pipeline.options import PipelineOptions

        return PipelineOptions
    raise AttributeError(f"module 'ff_lightning.pipeline' has no attribute {name!r}")
