"""Front ends: the Lightning DataModule and callback, and the Accelerate adapter.

Importing this package imports neither Lightning nor Accelerate; import the modules.
"""
