"""Image attacks (differentiable for training, real codecs for evaluation)."""
