"""The one training engine: a loop short enough to read in one sitting.

``Trainer`` knows no model or dataset by name. It takes a model, a loss (any callable
``loss(logits, targets)``; if it accepts a ``features`` keyword it also receives the model's last feature map
from ``forward_features``), an optimiser, a per-step scheduler and data loaders. A task whose step is not
"one forward, one loss" passes ``step(trainer, x, y) -> (loss, logits)``: it runs the forward pass(es) and
hands each loss to :meth:`Trainer.backward` (e.g. one per sub-clip of a video, carrying a detached stream
state); the engine zeroes the gradients before and takes one optimiser step after. Per epoch it trains,
evaluates, appends a line to ``metrics.jsonl`` and writes ``last.pt`` (and ``best.pt`` on a new best
validation accuracy) atomically. ``fit(resume=...)`` continues a run exactly where its checkpoint left off.
Under ``torchrun`` the model is wrapped in DDP; rank 0 alone evaluates, logs and checkpoints.

``memory_format`` (e.g. ``torch.channels_last``, chosen by the task from ``train.memory_format``) converts the
model once and every batch once on its way to the device; checkpoints are saved in the default layout, so they
load into either. ``compile=True`` runs the training step through ``torch.compile``; the model that is
evaluated and saved stays the plain module.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import LeancnnError
from ..io import append_jsonl, atomic_write_text
from ..nn.layout import contiguous_state, convert_model, match_optimizer_state, model_memory_format, to_device
from ..nn.tap import WithFeatures
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .distributed import DistContext, all_gather_objects, barrier, reduce_sum
from .seed import get_rng_state, set_rng_state


def accepts_features(loss_fn: Callable) -> bool:
    """True when the loss takes a ``features`` keyword (e.g. Bias Loss)."""
    fn = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "features" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def contiguous_optimizer_state(state: dict) -> dict:
    """An optimiser state dict with its per-parameter tensors in the default layout (layout-free checkpoints)."""
    per_param = {i: contiguous_state(s) for i, s in state.get("state", {}).items()}
    return {**state, "state": per_param}


def compile_module(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``, with inductor's cache kept inside leancnn's cache directory."""
    import os

    from ..io import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    return torch.compile(module)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Datasets yield ``(x, y)`` or ``(x, y, domain, ...)``."""
    return batch[0], batch[1]


def progress_enabled(ctx: DistContext) -> bool:
    return ctx.is_main and sys.stdout.isatty()


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


@dataclass
class Trainer:
    model: nn.Module
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    val_loader: DataLoader | None
    epochs: int
    out_dir: Path
    device: torch.device
    config: dict = field(default_factory=dict)  # saved in every checkpoint
    grad_clip: float = 0.0
    amp: bool = False
    dist: DistContext = field(default_factory=DistContext)
    callbacks: list[Callable[["Trainer", dict], None]] = field(default_factory=list)  # after each epoch
    feature_layer: str | None = None  # features for the loss from this module (default: forward_features)
    memory_format: torch.memory_format | None = None  # layout of the model and every batch (None: as they come)
    compile: bool = False  # torch.compile the network the training step runs (the saved model stays plain)
    step: Callable[["Trainer", torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    unit: str = "images"  # what one sample is, for the throughput in metrics.jsonl and the epoch line

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        if self.amp and self.device.type != "cuda":
            warnings.warn("train.amp needs CUDA; training in float32 on the CPU")
            self.amp = False
        self.model.to(self.device)
        convert_model(self.model, self.memory_format)  # once; batches are converted on transfer
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(self.device)
        self.use_features = accepts_features(self.loss_fn)
        if self.use_features:
            try:
                net = WithFeatures(self.model, self.feature_layer)
            except ValueError as e:
                raise LeancnnError(f"the loss needs features: {e}") from None
        else:
            net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DDP(net, device_ids=ids)
        self.net = compile_module(net) if self.compile else net
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0  # completed epochs
        self.best_acc = -math.inf
        self.history: list[dict] = []

    # ------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        rng = all_gather_objects(get_rng_state(), self.dist)
        return {
            "model": contiguous_state(self.model.state_dict()),  # layout-free: loads into either layout
            "model_name": getattr(self.model, "model_name", None),
            "optimizer": contiguous_optimizer_state(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict() if isinstance(self.loss_fn, nn.Module) else {},
            "epoch": self.epoch,
            "best_acc": self.best_acc,
            "history": self.history,
            "rng": rng,  # one entry per rank
            "world_size": self.dist.world_size,
            "config": self.config,
        }

    def load_state_dict(self, state: dict) -> None:
        load_model_state(self.model, state, f"checkpoint '{state.get('path', '?')}'")
        self.optimizer.load_state_dict(state["optimizer"])
        match_optimizer_state(self.optimizer)  # momentum / moments in the layout of their parameters
        self.scheduler.load_state_dict(state["scheduler"])
        self._sync_lr()
        self.scaler.load_state_dict(state["scaler"])
        if isinstance(self.loss_fn, nn.Module) and state.get("loss"):
            self.loss_fn.load_state_dict(state["loss"])  # e.g. Bias Loss's running minimum
        self.epoch, self.best_acc, self.history = state["epoch"], state["best_acc"], list(state["history"])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            warnings.warn(f"checkpoint was written by {len(rng)} process(es), resuming with "
                          f"{self.dist.world_size}: random streams restart from rank-0's state")
        set_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the training device, in the model's layout (one copy)."""
        return to_device(x, self.device, self.memory_format)

    def _sync_lr(self) -> None:
        """Set each group's lr from this trainer's schedule at the restored step. A checkpoint restores the
        optimiser's last lr and the step count, but the schedule is the one built for this run: when a resume
        extends ``epochs``, the next step follows the longer schedule (a finished cosine run ends at lr 0; its
        extension does not train at that lr). For an exact resume this recomputes the same value."""
        lambdas = getattr(self.scheduler, "lr_lambdas", None)
        if lambdas is None:
            return
        step = self.scheduler.last_epoch
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, lambdas):
            group["lr"] = base * fn(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------------------------- loop

    def optimizer_step(self) -> None:
        """After backward: optional gradient clipping, the (AMP-scaled) optimiser step, the per-step schedule."""
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one loss of the current step (AMP-scaled); refuse a loss that is not finite."""
        if not torch.isfinite(loss):
            raise LeancnnError(f"loss became {loss.item()} in epoch {self.epoch + 1}; "
                               "lower optim.lr or set train.grad_clip")
        self.scaler.scale(loss).backward()

    def classify_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The default step: one forward pass, the loss (with the features when it takes them), one backward."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            if self.use_features:
                logits, features = self.net(x)
                loss = self.loss_fn(logits, y, features=features)
            else:
                logits = self.net(x)
                loss = self.loss_fn(logits, y)
        self.backward(loss)
        return loss.detach(), logits.detach()

    def train_one_epoch(self) -> dict[str, float]:
        self.net.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if hasattr(self.loss_fn, "epoch_counters"):
            self.loss_fn.epoch_counters()  # start the epoch's diagnostics from zero
        loss_sum, correct, count, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False,
                   disable=not progress_enabled(self.dist))
        step = self.step or Trainer.classify_step
        for batch in bar:
            x, y = split_batch(batch)
            x, y = self.to_device(x), y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = step(self, x, y)
            self.optimizer_step()
            n = y.numel()
            loss_sum += float(loss) * n
            correct += (logits.detach().argmax(1) == y).sum().item()
            count += n
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{correct / count:.3f}")
        seconds = time.perf_counter() - start
        loss_sum, correct, count = reduce_sum([loss_sum, correct, count], self.dist, self.device)
        record = {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
                  f"train_{self.unit}_per_s": count / seconds, "train_seconds": seconds}
        if hasattr(self.loss_fn, "epoch_counters"):  # per-epoch diagnostics of the loss (e.g. Bias Loss)
            record.update(self.loss_fn.summarise(reduce_sum(self.loss_fn.epoch_counters(), self.dist, self.device)))
        return record

    def fit(self, resume: str | Path | dict | None = None) -> list[dict]:
        """Train until ``epochs`` epochs are complete; returns the per-epoch history.

        ``resume``: a checkpoint path, or a checkpoint already read with :func:`load_checkpoint`. A trainer
        restored beforehand with :meth:`load_state_dict` (``epoch > 0``) continues too."""
        metrics_path = self.out_dir / "metrics.jsonl"
        if resume is not None:
            state = resume if isinstance(resume, dict) else load_checkpoint(resume, map_location=self.device)
            self.load_state_dict(state)
        if self.epoch > 0:
            if self.dist.is_main:  # the history in the checkpoint is the truth; drop lines of a lost epoch
                atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in self.history))
        elif self.dist.is_main and metrics_path.exists():
            metrics_path.unlink()
        while self.epoch < self.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            record = {"epoch": self.epoch + 1, "lr": lr, **self.train_one_epoch()}
            self.epoch += 1
            if self.dist.is_main and self.val_loader is not None:
                val = evaluate(self.model, self.val_loader, self.device, "val", progress_enabled(self.dist), self.amp,
                               self.memory_format)
                record.update(val_loss=val["loss"], val_acc=val["acc"])
            is_best = record.get("val_acc", -math.inf) > self.best_acc
            if is_best:
                self.best_acc = record["val_acc"]
            self.history.append(record)
            state = self.state_dict()  # collective (gathers RNG states): every rank calls it
            if self.dist.is_main:
                save_checkpoint(self.out_dir / "last.pt", state)
                if is_best:
                    save_checkpoint(self.out_dir / "best.pt", state)
                append_jsonl(metrics_path, record)
                self._print_epoch(record)
            barrier(self.dist)
            for cb in self.callbacks:
                cb(self, record)
        return self.history

    def _print_epoch(self, r: dict) -> None:
        val = f"  val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f}" if "val_acc" in r else ""
        if "bias_low_share" in r:
            val += (f"  low-diversity {100 * r['bias_low_share']:.1f}% (acc {r['bias_low_acc']:.3f} vs "
                    f"{r['bias_rest_acc']:.3f}, mean weight {r['bias_mean_weight']:.3f})")
        if "semi_mask_rate" in r:
            pseudo = r.get("semi_pseudo_acc")  # None: no unlabelled sample passed the threshold
            val += (f"  loss_x {r['loss_x']:.4f} loss_u {r['loss_u']:.4f} confident {100 * r['semi_mask_rate']:.1f}% "
                    f"(pseudo-label acc {'n/a' if pseudo is None else f'{pseudo:.3f}'})")
        print(f"epoch {r['epoch']:>3}/{self.epochs}  lr {r['lr']:.4g}  train loss {r['train_loss']:.4f} "
              f"acc {r['train_acc']:.4f}{val}  {r[f'train_{self.unit}_per_s']:.0f} {self.unit}/s", flush=True)
