"""Moved: :class:`~ff_lightning.pipeline.batch.EncodedBatch` to the batch record,
:func:`~ff_lightning.pipeline.jpeg.jpeg_header` to :mod:`ff_lightning.pipeline.jpeg`; this path
keeps earlier imports working."""

from ff_lightning.pipeline.batch import EncodedBatch
from ff_lightning.pipeline.jpeg import JpegHeader, jpeg_header

__all__ = ["EncodedBatch", "JpegHeader", "jpeg_header"]
