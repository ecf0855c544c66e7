"""Losses. ``build_loss`` maps the ``loss`` config section to a callable ``loss(logits, targets[, features])``."""

from __future__ import annotations

import torch.nn as nn

from ..config import LossConfig
from ..errors import ConfigError


def build_loss(cfg: LossConfig) -> nn.Module:
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"config key 'loss.label_smoothing' must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    raise ConfigError(f"config key 'loss.name': unknown loss {cfg.name!r}")


__all__ = ["build_loss"]
