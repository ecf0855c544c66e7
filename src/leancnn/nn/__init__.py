"""Reusable layers and tools that know nothing of our models or training."""

from .counting import count_macs, count_params
from .layers import ConvBnAct, make_divisible

__all__ = ["ConvBnAct", "count_macs", "count_params", "make_divisible"]
