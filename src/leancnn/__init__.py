"""leancnn: compact convolutional networks from training to deployment.

The public names load lazily (PEP 562), so that ``import leancnn`` does not load torch: the ``leancnn`` entry
point sets OpenMP's wait policy before torch starts (:mod:`leancnn.threads`)."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ExperimentConfig": ".config", "load_config": ".config",
    "ConfigError": ".errors", "LeancnnError": ".errors",
    "BiasLoss": ".losses",
    "create_model": ".models", "list_models": ".models", "register_model": ".models",
    "MixStyle": ".nn", "count_macs": ".nn", "count_params": ".nn",
}

__all__ = ["BiasLoss", "ConfigError", "MixStyle", "ExperimentConfig", "LeancnnError", "count_macs", "count_params",
           "create_model", "list_models", "load_config", "register_model", "__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'leancnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
