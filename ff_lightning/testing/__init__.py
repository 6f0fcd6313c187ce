"""Test doubles and simulators: not used by the pipeline itself.

- :class:`~ff_lightning.testing.probes.FakeProbe`: a memory probe with settable numbers;
- :mod:`~ff_lightning.testing.fake_cuda`: ``FakeCuda``, device code on fake ``cuda`` tensors
  without a GPU (host reads and device mixes raise; device ops and copies counted);
- :mod:`~ff_lightning.testing.simulator`: a discrete-event simulation of the loader/device
  pipeline that drives the controller without a Trainer.
"""

from ff_lightning.testing.probes import FakeProbe

__all__ = ["FakeProbe"]
