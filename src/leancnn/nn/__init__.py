"""Reusable layers and tools that know nothing of our models or training."""

from .blocks import InvertedResidual, PooledSkip, SqueezeExcite
from .counting import count_macs, count_params
from .layers import ConvBnAct, make_divisible
from .mixstyle import (
                       MixStyle,
                       activate_mixstyle,
                       deactivate_mixstyle,
                       insert_mixstyle,
                       set_mixstyle_mode,
                       with_mixstyle,
                       without_mixstyle,
)
from .tap import WithFeatures, last_conv_name

__all__ = ["ConvBnAct", "InvertedResidual", "PooledSkip", "SqueezeExcite", "count_macs", "count_params",
           "make_divisible", "WithFeatures", "last_conv_name", "MixStyle", "activate_mixstyle",
           "deactivate_mixstyle", "insert_mixstyle", "set_mixstyle_mode", "with_mixstyle", "without_mixstyle"]
