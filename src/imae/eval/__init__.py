"""Evaluation of frozen encoders: features, separability, semantics, linear probe, kNN, fine-tuning."""
