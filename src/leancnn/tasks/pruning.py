"""What every pruning command shares (``leancnn prune``, ``leancnn search prune``): the source classifier, its
data as fixed in-memory batches, BatchNorm recalibration, accuracy, the pruned checkpoint and its fine-tuning.

A shared module of ``tasks/`` (no command of its own), so the two pruning commands do not import each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..config import ExperimentConfig, derive, from_dict, to_dict
from ..data.digits import SIZE
from ..train import load_checkpoint, save_checkpoint

INPUT = (3, SIZE, SIZE)


def load_source(path: str | Path) -> tuple[ExperimentConfig, nn.Module, Path]:
    """The classifier of a run directory or checkpoint, with its config (a video or registration run is
    refused: the Python API ``leancnn.prune.prune_model`` prunes any other model)."""
    from .protocol import load_run
    from .runs import resolve_checkpoint

    ckpt = resolve_checkpoint(path, "source")
    run = load_run(ckpt, "cpu", ("classify",), "leancnn prune", "a digit classifier run")
    return run.cfg, run.model, ckpt


def fixed_batches(ds, n_images: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_images`` of ``ds`` (a seeded random subset) as in-memory batches, read once."""
    n = min(n_images, len(ds))
    idx = np.random.default_rng(seed).permutation(len(ds))[:n].tolist()
    return [(b[0], b[1]) for b in DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """BatchNorm running statistics re-estimated on ``batches`` (cumulative average), as adaptive BN (EagleEye)
    does before judging a pruned network without fine-tuning."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    try:
        for x, _ in batches:
            model(x)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)


@torch.inference_mode()
def accuracy(model: nn.Module, batches) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def save_pruned(path: str | Path, cfg: ExperimentConfig, pruned: nn.Module, plan: dict, source: str | Path,
                name: str) -> ExperimentConfig:
    """Write ``pruned`` as an ordinary classifier checkpoint: its config records the kept channels in
    ``model.pruned``, so ``leancnn evaluate``, fine-tuning and later runs rebuild the architecture. Returns that
    config."""
    pruned_cfg = derive(cfg, {"name": name, "model.init": "",
                              "model.pruned": {g: [int(i) for i in idx] for g, idx in plan.items()}})
    save_checkpoint(path, {"model": pruned.state_dict(), "config": to_dict(pruned_cfg), "model_name": cfg.model.name,
                           "epoch": 0, "source": str(source), "task": "classify"})
    return pruned_cfg


def finetune_config(pruned_ckpt: str | Path, cfg: ExperimentConfig, epochs: int, lr: float, limit_train: int = 0
                    ) -> ExperimentConfig:
    """The source run's config, on the pruned architecture, started from the pruned weights, for ``epochs`` at
    ``lr`` (cosine, no warm-up); ``limit_train`` > 0: that many training images."""
    saved = from_dict(ExperimentConfig, load_checkpoint(pruned_ckpt)["config"])
    changes = {"model.init": str(pruned_ckpt), "name": f"{cfg.name}-finetune", "train.epochs": epochs,
               "optim.lr": lr, "schedule.warmup_epochs": 0}
    if limit_train:
        changes["data.limit_train"] = limit_train
    return derive(saved, changes)


def finetune(pruned_ckpt: str | Path, cfg: ExperimentConfig, epochs: int, lr: float, out: Path,
             limit_train: int = 0, seed: int | None = None) -> dict:
    """Fine-tune a pruned checkpoint with the one training engine (a run of its own in ``out``)."""
    from .lifecycle import train_task
    from .protocol import get_task

    fcfg = finetune_config(pruned_ckpt, cfg, epochs, lr, limit_train)
    if seed is not None:
        fcfg = derive(fcfg, {"train.seed": seed})
    return train_task(get_task("classify"), fcfg, out=out, quiet=True, force=True)


__all__ = ["INPUT", "accuracy", "finetune", "finetune_config", "fixed_batches", "load_source", "recalibrate_bn",
           "save_pruned"]
