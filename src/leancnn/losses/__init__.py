"""Losses. ``build_loss`` maps the ``loss`` config section to a callable ``loss(logits, targets[, features])``."""

from __future__ import annotations

import torch.nn as nn

from ..config import LossConfig
from ..errors import ConfigError
from .bias import BiasLoss, feature_variance


def build_loss(cfg: LossConfig) -> nn.Module:
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"config key 'loss.label_smoothing' must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    try:
        return BiasLoss(cfg.alpha, cfg.beta, cfg.normalisation, cfg.weight_form, cfg.label_smoothing,
                        low_threshold=cfg.low_threshold)
    except ValueError as e:
        raise ConfigError(f"config section 'loss': {e}") from None


__all__ = ["BiasLoss", "build_loss", "feature_variance"]
