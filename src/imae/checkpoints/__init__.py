"""Checkpoint files below the models: atomic writes, safe reading, run folders, ``.safetensors``, state dicts.

Imports only torch, the standard library and :mod:`imae.errors`, so that ``models/`` and ``engine/`` both
build on it. Loading any source (a run directory, a Hugging Face folder, ...) is
:func:`imae.engine.checkpoint.load`.
"""
