"""Model registry: every architecture is registered by name with its default input size."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import LeancnnError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, ...]  # default per-sample input (C, H, W)
    num_classes: int  # default number of classes
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | None = None, *, input_size=(3, 32, 32), num_classes: int = 10, description: str = ""):
    """Decorator: ``@register_model()`` on a builder ``fn(num_classes=..., **kw) -> nn.Module``."""

    def deco(fn: Callable[..., nn.Module]):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' is already registered")
        doc = description or next(iter((inspect.getdoc(fn) or "").splitlines()), "")
        _REGISTRY[key] = ModelEntry(key, fn, tuple(input_size), num_classes, doc)
        return fn

    return deco


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters by substring."""
    return sorted(n for n in _REGISTRY if pattern is None or pattern in n)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LeancnnError(f"unknown model '{name}'; available: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model. Unknown names and unknown keyword arguments are clear errors."""
    entry = get_model_entry(name)
    params = inspect.signature(entry.builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kwargs if k not in params]
        if bad:
            allowed = [k for k in params if k != "num_classes"]
            raise LeancnnError(f"model '{name}' does not take argument(s) {', '.join(bad)}; "
                               f"allowed: {', '.join(allowed) or 'none'}")
    model = entry.builder(num_classes=entry.num_classes if num_classes is None else num_classes, **kwargs)
    model.model_name = name  # recorded in checkpoints so a mismatched architecture is caught by name
    return model
