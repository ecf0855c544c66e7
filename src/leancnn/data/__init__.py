"""Datasets: the Digits-DG stand-in (four digit domains built offline) and domain-balanced and P x K identity sampling."""

from .digits import *  # noqa: F403
from .digits import __all__ as _digits_all
from .samplers import DomainBalancedSampler, PKSampler

__all__ = [*_digits_all, "DomainBalancedSampler", "PKSampler"]
