"""Routing, in the main process: the sampler tags each sample of a batch ``cpu`` or ``device``."""
