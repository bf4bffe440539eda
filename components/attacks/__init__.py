"""Attacks: on images (differentiable for training, real codecs for evaluation, adversarial)
and on models (``surrogate``: the attacker trains a copy of a protected model on its outputs;
``model``: pruning, fine-tuning, distillation, overwriting, by name in ``model_registry``)."""
