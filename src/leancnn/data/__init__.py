"""Datasets: the Digits-DG stand-in (four digit domains built offline)."""

from .digits import *  # noqa: F403
from .digits import __all__  # noqa: F401
