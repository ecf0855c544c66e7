"""Model registry: every architecture is registered by name with its default input size and its kind.

A ``"classifier"`` (images or clips -> class logits) is built as ``builder(num_classes=..., **kw)`` and takes one
input of ``input_size``; a ``"registration"`` network (a moving and a fixed volume -> a displacement field) has no
classes (``num_classes`` None) and takes two inputs of ``input_size`` each (``ModelEntry.num_inputs``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import LeancnnError

KINDS = ("classifier", "registration")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, ...]  # default per-sample input: (C, H, W), a clip (C, T, H, W), a volume (C, X, Y, Z)
    num_classes: int | None  # default number of classes (None: a registration network)
    description: str
    kind: str = "classifier"  # one of KINDS

    @property
    def num_inputs(self) -> int:
        """Input tensors of ``input_size`` the model's forward takes: 2 (moving, fixed) for registration, else 1."""
        return 2 if self.kind == "registration" else 1


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | None = None, *, input_size=(3, 32, 32), num_classes: int | None = 10,
                   description: str = "", kind: str = "classifier"):
    """Decorator: ``@register_model()`` on a builder ``fn(num_classes=..., **kw) -> nn.Module`` (a classifier), or
    ``@register_model(kind="registration", num_classes=None, input_size=(1, X, Y, Z))`` on ``fn(**kw)``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (num_classes is None) != (kind == "registration"):
        raise ValueError(f"a {kind} takes {'no num_classes (None)' if num_classes is not None else 'num_classes'}, "
                         f"got num_classes={num_classes!r}")

    def deco(fn: Callable[..., nn.Module]):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' is already registered")
        doc = description or next(iter((inspect.getdoc(fn) or "").splitlines()), "")
        _REGISTRY[key] = ModelEntry(key, fn, tuple(input_size), num_classes, doc, kind)
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
    if entry.kind == "registration" and num_classes is not None:
        raise LeancnnError(f"model '{name}' is a registration network: it takes no num_classes")
    params = inspect.signature(entry.builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kwargs if k not in params]
        if bad:
            allowed = [k for k in params if k != "num_classes"]
            raise LeancnnError(f"model '{name}' does not take argument(s) {', '.join(bad)}; "
                               f"allowed: {', '.join(allowed) or 'none'}")
    if entry.kind == "registration":
        model = entry.builder(**kwargs)
    else:
        model = entry.builder(num_classes=entry.num_classes if num_classes is None else num_classes, **kwargs)
    model.model_name = name  # recorded in checkpoints so a mismatched architecture is caught by name
    return model
