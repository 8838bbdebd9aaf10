"""Backends: load a model once and hand out views. See :mod:`dlm_sway.backends.registry`."""
