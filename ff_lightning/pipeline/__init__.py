"""The pipeline without Lightning: the batch record, the worker half, the device stage, the loaders.

Layers, each importing only those below it:

- :mod:`.batch`: the records that travel with a batch (routed batch, route record, encoded
  share, step statistics);
- :mod:`.jpeg`: JPEG header probe and batched decode, used by both routes;
- :mod:`.routing` and :mod:`.loader`: the router, the samplers and the resumable loader
  (main process);
- :mod:`.worker`: what runs in each DataLoader worker;
- :mod:`.device`: the device stage, its memory guard, probes and timer.
"""
