"""Fine-tuning: the encoder as a timm ViT classifier trained end to end (``imae finetune``).

In data-flow order: ``loader.py`` (seeded augmented batches), ``vit.py`` (the classifier built from the
encoder, layer-decay groups), ``objective.py`` (mixup/cutmix, the loss, the per-epoch evaluation of
``evaluate.py``), ``run.py`` (the job: run directory, resume, the shared loop, ``finetune.json``).
"""

from imae.finetune.run import finetune

__all__ = ["finetune"]
