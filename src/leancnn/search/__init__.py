"""Hardware-aware search on Optuna (issue 22): search spaces as data, one engine, Pareto reports."""

from .space import Param, SearchSpace, categorical, integer, real

__all__ = ["Param", "SearchSpace", "categorical", "integer", "real"]
