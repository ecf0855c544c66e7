"""Architectures, each registered by name (importing this package registers them all)."""

from . import digits_cnn, impala, mobilenetv3, movinet, regnet, resnet, video2d  # noqa: F401  (registration side effects)
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]
