"""Optimisers and learning-rate schedules (per-step, with linear warm-up)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import OptimConfig, ScheduleConfig
from ..errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-d tensors). ``lr_scales`` maps a module name
    (e.g. ``"global_net.head"``) to a multiplier of ``lr`` for the parameters under it, in groups of their own."""
    scales = dict(lr_scales or {})
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((s for prefix, s in scales.items() if name == prefix or name.startswith(prefix + ".")), 1.0)
        buckets.setdefault((scale, p.ndim <= 1), []).append(p)
    groups = []
    for scale in sorted({s for s, _ in buckets}, key=lambda s: s != 1.0):  # the plain group first (its lr is base)
        for no_decay in (False, True):
            params = buckets.get((scale, no_decay), [])
            if not params and scale != 1.0:
                continue
            group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
            if scale != 1.0:
                group["lr"] = lr * scale
            groups.append(group)
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr_scales: dict[str, float] | None = None
                    ) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`param_groups`; ``lr_scales`` gives some modules a multiple of ``optim.lr``."""
    if cfg.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' must be > 0, got {cfg.lr}")
    groups = param_groups(model, cfg.weight_decay, cfg.lr, lr_scales)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if len(cfg.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' needs two numbers, got {cfg.betas}")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int, base_lr: float) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg.min_lr / base_lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int,
                    steps_per_epoch: int) -> LambdaLR:
    """A per-step schedule: call ``scheduler.step()`` after every optimiser step."""
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > epochs:
        raise ConfigError(f"config key 'schedule.warmup_epochs' must be in [0, train.epochs], got {cfg.warmup_epochs}")
    if cfg.name == "multistep" and not cfg.milestones:
        raise ConfigError("config key 'schedule.milestones' must list at least one epoch for the multistep schedule")
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, epochs, steps_per_epoch, base_lr))
