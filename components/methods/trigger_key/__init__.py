"""``trigger_key``: ownership watermarks for denoising and SR networks (Quan et al., TNNLS'21)."""

from neuralmark.components.methods.trigger_key.config import TriggerKeyConfig
from neuralmark.components.methods.trigger_key.method import TriggerKey

__all__ = ["TriggerKey", "TriggerKeyConfig"]
