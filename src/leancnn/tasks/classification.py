"""What every classification task shares (images in ``classify``, clips in ``video``): the engine task
:class:`ClassifyTask`, its evaluation, and the loaders with their batch-layout check.

:class:`ClassifyTask` takes ``(x, y[, ...])`` batches and a loss on logits (any callable ``loss(logits,
targets)``; if it accepts a ``features`` keyword it also receives the model's last feature map, tapped by
:class:`~leancnn.nn.tap.WithFeatures` from ``forward_features`` or from ``feature_layer``), counts top-1
accuracy, and reports the loss's own per-epoch diagnostics when it has them (Bias Loss:
``epoch_counters``/``summarise``/``describe``). A classification step that is not "one forward, one loss" is
passed as ``step(trainer, x, y) -> (loss, logits)`` (video: one loss per sub-clip, carrying a detached stream
state); it reads the loss as ``trainer.task.loss``. ``best.pt`` follows the best ``val_acc``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from .. import threads
from ..data import DomainBalancedSampler
from ..errors import LeancnnError
from ..interrupts import loader_worker_init
from ..nn.layout import model_memory_format, to_device
from ..nn.tap import WithFeatures
from ..train import DistContext, Task
from ..train.distributed import reduce_sum
from ..train.engine import progress_enabled


def accepts_features(loss_fn: Callable) -> bool:
    """True when the loss takes a ``features`` keyword (e.g. Bias Loss)."""
    fn = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "features" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Datasets yield ``(x, y)`` or ``(x, y, domain, ...)``."""
    return batch[0], batch[1]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, desc: str = "eval",
             show_progress: bool = False, amp: bool = False,
             memory_format: torch.memory_format | None = None) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 accuracy and sample count of ``model`` on ``loader``. Batches go into
    ``memory_format`` (default: the layout of the model's weights)."""
    if memory_format is None:
        memory_format = model_memory_format(model)
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show_progress):
        threads.tick()
        x, y = split_batch(batch)
        x, y = to_device(x, device, memory_format), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    if count == 0:
        raise LeancnnError(f"{desc}: the evaluation set is empty")
    return {"loss": loss_sum / count, "acc": correct / count, "n": count}


def _step_sums(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    n = y.numel()
    return {"n": float(n), "loss": float(loss) * n, "acc": float((logits.detach().argmax(1) == y).sum().item())}


class ClassifyTask(Task):
    """``(x, y[, ...])`` batches, a loss on logits, top-1 accuracy; ``best.pt`` on the best ``val_acc``."""

    def __init__(self, loss: Callable, step: Callable | None = None, unit: str = "images",
                 feature_layer: str | None = None):
        self.loss, self.step, self.unit, self.feature_layer = loss, step, unit, feature_layer or None
        self.use_features = loss is not None and accepts_features(loss)

    def wrap_model(self, trainer):
        if isinstance(self.loss, nn.Module):
            self.loss.to(trainer.device)
        if not self.use_features:
            return trainer.model
        try:
            return WithFeatures(trainer.model, self.feature_layer)
        except ValueError as e:
            raise LeancnnError(f"the loss needs features: {e}") from None

    def state_dict(self):
        return self.loss.state_dict() if isinstance(self.loss, nn.Module) else {}

    def load_state_dict(self, state):
        if isinstance(self.loss, nn.Module):
            self.loss.load_state_dict(state)

    def start_epoch(self, trainer):
        if hasattr(self.loss, "epoch_counters"):
            self.loss.epoch_counters()  # start the epoch's diagnostics from zero

    def loss_step(self, trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The default step: one forward pass, the loss (with the features when it takes them), one backward."""
        with torch.autocast(trainer.device.type, dtype=torch.float16, enabled=trainer.amp):
            if self.use_features:
                logits, features = trainer.net(x)
                loss = self.loss(logits, y, features=features)
            else:
                logits = trainer.net(x)
                loss = self.loss(logits, y)
        trainer.backward(loss)
        return loss.detach(), logits.detach()

    def forward(self, trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step on one batch already on the device: ``step`` when given, else :meth:`loss_step`."""
        return self.step(trainer, x, y) if self.step is not None else self.loss_step(trainer, x, y)

    def train_step(self, trainer, batch):
        x, y = split_batch(batch)
        x, y = trainer.to_device(x), y.to(trainer.device, non_blocking=True)
        loss, logits = self.forward(trainer, x, y)
        return _step_sums(loss, logits, y)

    def train_metrics(self, sums, trainer):
        record = super().train_metrics(sums, trainer)
        if hasattr(self.loss, "epoch_counters"):  # per-epoch diagnostics of the loss (e.g. Bias Loss)
            record.update(self.loss.summarise(reduce_sum(self.loss.epoch_counters(), trainer.dist, trainer.device)))
        return record

    def evaluate(self, trainer):
        val = evaluate(trainer.model, trainer.val_loader, trainer.device, "val", progress_enabled(trainer.dist),
                       trainer.amp, trainer.memory_format)
        return {"val_loss": val["loss"], "val_acc": val["acc"]}

    def describe(self, record, trainer):
        describe = getattr(self.loss, "describe", None)  # the loss explains its own diagnostics
        return describe(record) if describe is not None else ""


# ----------------------------------------------------------------------------------------- loaders


def domain_labels(ds: Dataset) -> torch.Tensor:
    """Per-sample domain index of a dataset with ``domain_labels`` (or a Subset of one)."""
    if isinstance(ds, Subset):
        return domain_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if not hasattr(ds, "domain_labels"):
        raise LeancnnError(f"{type(ds).__name__} has no domain labels; data.sampler=domain needs them")
    return torch.as_tensor(ds.domain_labels)


def check_batch_layout(batch_size: int, world_size: int, sampler: str = "random", domains_per_batch: int = 2,
                       key: str = "data.batch_size") -> None:
    """A global batch (config key ``key``) must split evenly over the processes, and with the domain sampler each
    process's batch over ``domains_per_batch`` domains."""
    if batch_size % world_size:
        raise LeancnnError(f"config key '{key}' ({batch_size}) is not divisible by the {world_size} processes")
    local = batch_size // world_size
    if sampler == "domain" and (domains_per_batch < 1 or local % domains_per_batch):
        raise LeancnnError(f"data.sampler=domain: the per-process batch {local} must be a multiple of "
                           f"data.domains_per_batch={domains_per_batch}")


def train_loader(ds: Dataset, batch_size: int, seed: int, ctx: DistContext, num_workers: int = 0,
                 sampler: str = "random", domains_per_batch: int = 2, key: str = "data.batch_size") -> DataLoader:
    """Shuffled by a generator seeded with (seed, epoch) and sharded over DDP ranks; ``batch_size`` is global.

    ``sampler="domain"``: every local batch is ``domains_per_batch`` domains × k samples laid out contiguously
    (:class:`DomainBalancedSampler`, dealt out by rank), with as many steps per epoch as the plain sampler."""
    check_batch_layout(batch_size, ctx.world_size, sampler, domains_per_batch, key)
    local = batch_size // ctx.world_size
    if sampler == "domain":
        try:
            chosen = DomainBalancedSampler(domain_labels(ds), domains_per_batch, local // domains_per_batch,
                                           seed=seed, rank=ctx.rank, world_size=ctx.world_size,
                                           length=max(1, len(ds) // batch_size) * ctx.world_size)
        except ValueError as e:
            raise LeancnnError(f"data.sampler=domain: {e}") from None
        drop_last = True  # the sampler yields whole batches only
    else:
        chosen = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        drop_last = len(chosen) > local  # never a last batch of 1 (BatchNorm), unless the set is tiny
    return DataLoader(ds, batch_size=local, sampler=chosen, drop_last=drop_last, num_workers=num_workers,
                      persistent_workers=num_workers > 0, worker_init_fn=loader_worker_init)


def eval_loader(ds: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      worker_init_fn=loader_worker_init)
