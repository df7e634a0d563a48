"""i-MAE: interactive Masked Autoencoders (reference implementation).

Subpackages follow the data flow: ``data`` (data sets, caching, augmentation, pairing, mixing) ->
``checkpoints`` (reading any source, writing, converting) -> ``models`` (MAE, i-MAE) -> ``engine`` (training
loop, optimiser, logs) -> ``eval``
(separability, semantics, linear probe, kNN, fine-tune) -> ``viz`` (figures, report) -> ``cli``.
"""

__version__ = "0.1.0"
