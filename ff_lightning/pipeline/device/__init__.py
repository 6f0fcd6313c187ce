"""The device half of the pipeline: the device stage, its memory guard, probes and timer."""
