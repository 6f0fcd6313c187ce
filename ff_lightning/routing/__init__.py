"""Moved under :mod:`ff_lightning.pipeline`; the modules here re-export from there."""
