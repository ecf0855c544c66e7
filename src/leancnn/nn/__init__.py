"""Reusable layers and tools that know nothing of our models or training."""

from .blocks import InvertedResidual, PooledSkip, SqueezeExcite
from .counting import count_macs, count_params
from .fold import fold_batchnorm
from .layers import ConvBnAct, TapCroppedConv2d, make_divisible, used_taps
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

__all__ = ["ConvBnAct", "TapCroppedConv2d", "used_taps", "fold_batchnorm", "InvertedResidual", "PooledSkip", "SqueezeExcite", "count_macs", "count_params",
           "make_divisible", "WithFeatures", "last_conv_name", "MixStyle", "activate_mixstyle",
           "deactivate_mixstyle", "insert_mixstyle", "set_mixstyle_mode", "with_mixstyle", "without_mixstyle"]
