"""Datasets: the Digits-DG stand-in (four digit domains built offline) and domain-balanced sampling."""

from .digits import *  # noqa: F403
from .digits import __all__ as _digits_all
from .samplers import DomainBalancedSampler

__all__ = [*_digits_all, "DomainBalancedSampler"]
