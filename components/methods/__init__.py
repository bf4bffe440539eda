"""Watermarking methods behind one interface; see ``base`` and ``registry``."""

from neuralmark.components.methods.base import (
    Callbacks,
    InputError,
    MethodConfig,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
)
from neuralmark.components.methods.registry import (
    available,
    build,
    load_bundle,
    make_config,
    register,
)

__all__ = [
    "Callbacks", "InputError", "MethodConfig", "Status", "Verdict", "WatermarkKey",
    "WatermarkMethod", "available", "build", "load_bundle", "make_config", "register",
]
