"""The one training engine: a loop short enough to read in one sitting, that knows no task.

``Trainer`` knows no model, dataset, loss or task by name. What one step does and how a model is evaluated come
from a :class:`Task`: ``train_step(trainer, batch)`` runs the forward pass(es), hands each loss to
:meth:`Trainer.backward` and returns additive sums (``n`` samples, ``loss`` summed over them, any other metric
summed likewise); ``evaluate(trainer)`` returns the validation metrics. The engine zeroes the gradients before
each step and takes one optimiser step after; per epoch it sums the task's sums over DDP ranks, turns them into
``train_<metric>`` means, evaluates, appends the record to ``metrics.jsonl``, prints whatever metrics the record
holds, and writes ``last.pt`` (and ``best.pt`` on a new best of the task's ``best_metric``, e.g. ``val_acc`` or
``val_dice``) atomically. ``fit(resume=...)`` continues a run exactly where its checkpoint left off. Under
``torchrun`` the model is wrapped in DDP; rank 0 alone evaluates, logs and checkpoints.

The seams a task widens instead of copying the loop: :meth:`Task.wrap_model` (the network the step runs, e.g.
the model with a feature tap; the engine then wraps it in DDP and ``torch.compile``), :meth:`Task.state_dict` /
:meth:`Task.load_state_dict` (a task's own resumable state, e.g. a loss's running statistics, saved in every
checkpoint), ``batches``/``num_batches`` (what an epoch iterates), ``start_epoch``, ``train_metrics``,
``describe`` (extra text on the epoch line). The tasks themselves live in :mod:`leancnn.tasks`
(classification and its semi-supervised form, video clips, registration pairs).

``memory_format`` (e.g. ``torch.channels_last``, chosen by the task from ``train.memory_format``) converts the
model once and every batch once on its way to the device; checkpoints are saved in the default layout, so they
load into either. ``compile=True`` runs the training step through ``torch.compile``; the model that is
evaluated and saved stays the plain module. ``run_task`` (the name of the task that trains, e.g. ``"classify"``)
is recorded in every checkpoint as ``"task"``, so a run can be rebuilt from its checkpoint alone.
"""

from __future__ import annotations

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
from tqdm.auto import tqdm

from .. import threads
from ..errors import LeancnnError
from ..io import append_jsonl, atomic_write_text
from ..nn.layout import contiguous_state, convert_model, match_optimizer_state, to_device
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .distributed import DistContext, all_gather_objects, barrier, reduce_sum
from .seed import get_rng_state, set_rng_state


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


def progress_enabled(ctx: DistContext) -> bool:
    return ctx.is_main and sys.stdout.isatty()


class Task:
    """What the engine asks of a task. Subclass it and override what differs."""

    unit: str = "samples"  # what one sample is, for the throughput in metrics.jsonl and the epoch line
    best_metric: str | None = "val_acc"  # the record key that selects best.pt (None: no best.pt)
    best_mode: str = "max"  # or "min"

    def setup(self, trainer: "Trainer") -> None:
        """Once, when the trainer is built (after :meth:`wrap_model`; ``trainer.net`` exists)."""

    def wrap_model(self, trainer: "Trainer") -> nn.Module:
        """The network the training step runs, before the engine wraps it in DDP / ``torch.compile`` (default:
        ``trainer.model``, already on the device and in its memory format). Move the task's own modules (e.g.
        a loss with buffers) to ``trainer.device`` here."""
        return trainer.model

    def state_dict(self) -> dict:
        """The task's own resumable state (e.g. a loss's running statistics), saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (an empty dict from a checkpoint that has none)."""

    def batches(self, trainer: "Trainer") -> Iterable:
        """The epoch's training batches (default: the training loader)."""
        return trainer.train_loader

    def num_batches(self, trainer: "Trainer") -> int | None:
        try:
            return len(trainer.train_loader)
        except TypeError:
            return None

    def start_epoch(self, trainer: "Trainer") -> None:
        """Before the epoch's first batch."""

    def train_step(self, trainer: "Trainer", batch: Any) -> dict[str, float]:
        """One step: forward, :meth:`Trainer.backward` for each loss. Returns additive sums over the batch:
        ``n`` (samples), ``loss`` (summed over them) and any other metric, summed the same way; ``samples``
        optionally counts the samples processed for the throughput when it differs from ``n``."""
        raise NotImplementedError

    def train_metrics(self, sums: dict[str, float], trainer: "Trainer") -> dict[str, Any]:
        """The epoch's training entries from the sums over all steps and ranks (default: ``train_<k>`` means)."""
        n = max(sums.get("n", 0.0), 1.0)
        return {f"train_{k}": v / n for k, v in sums.items() if k not in ("n", "samples")}

    def evaluate(self, trainer: "Trainer") -> dict[str, Any]:
        """Validation entries (``val_<metric>``), rank 0 only; called when the trainer has a validation loader."""
        return {}

    def describe(self, record: dict, trainer: "Trainer") -> str:
        """Extra text for the epoch line (the engine prints the metrics themselves: override to say more)."""
        return ""


def format_metric(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


@dataclass(kw_only=True)
class Trainer:
    """The loop around a :class:`Task` (keyword arguments only: ``Trainer(model=..., task=..., ...)``)."""

    model: nn.Module
    task: Task  # what a step and an evaluation are
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Any  # what the task's ``batches`` iterate (default: a DataLoader)
    val_loader: Any = None  # evaluation runs when this is not None (the task decides what it is)
    epochs: int
    out_dir: Path
    device: torch.device
    config: dict = field(default_factory=dict)  # saved in every checkpoint
    grad_clip: float = 0.0
    amp: bool = False
    dist: DistContext = field(default_factory=DistContext)
    callbacks: list[Callable[["Trainer", dict], None]] = field(default_factory=list)  # after each epoch
    memory_format: torch.memory_format | None = None  # layout of the model and every batch (None: as they come)
    compile: bool = False  # torch.compile the network the training step runs (the saved model stays plain)
    meta: dict = field(default_factory=dict)  # saved in every checkpoint as "meta" (e.g. a network's input grid)
    run_task: str | None = None  # saved in every checkpoint as "task": the task that wrote it

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        if not isinstance(self.task, Task):
            raise TypeError(f"Trainer needs a Task, got {type(self.task).__name__}")
        self.unit = self.task.unit
        if self.task.best_mode not in ("max", "min"):
            raise ValueError(f"task.best_mode must be 'max' or 'min', got {self.task.best_mode!r}")
        if self.amp and self.device.type != "cuda":
            warnings.warn("train.amp needs CUDA; training in float32 on the CPU")
            self.amp = False
        self.model.to(self.device)
        convert_model(self.model, self.memory_format)  # once; batches are converted on transfer
        net = self.task.wrap_model(self)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DDP(net, device_ids=ids)
        self.net = compile_module(net) if self.compile else net
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0  # completed epochs
        self.best = -math.inf if self.task.best_mode == "max" else math.inf  # of task.best_metric
        self.history: list[dict] = []
        self.task.setup(self)

    @property
    def best_acc(self) -> float:
        """The best value of the task's ``best_metric`` so far (the name predates other tasks)."""
        return self.best

    # ------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        rng = all_gather_objects(get_rng_state(), self.dist)
        return {
            "model": contiguous_state(self.model.state_dict()),  # layout-free: loads into either layout
            "model_name": getattr(self.model, "model_name", None),
            "optimizer": contiguous_optimizer_state(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.task.state_dict(),  # the task's own state (the key predates tasks: a loss's state)
            "epoch": self.epoch,
            "best": self.best,
            "best_metric": self.task.best_metric,
            "best_acc": self.best,  # the key older checkpoints have
            "history": self.history,
            "rng": rng,  # one entry per rank
            "world_size": self.dist.world_size,
            "config": self.config,
            "meta": self.meta,
            "task": self.run_task,
        }

    def load_state_dict(self, state: dict) -> None:
        load_model_state(self.model, state, f"checkpoint '{state.get('path', '?')}'")
        self.optimizer.load_state_dict(state["optimizer"])
        match_optimizer_state(self.optimizer)  # momentum / moments in the layout of their parameters
        self.scheduler.load_state_dict(state["scheduler"])
        self._sync_lr()
        self.scaler.load_state_dict(state["scaler"])
        if state.get("loss"):
            self.task.load_state_dict(state["loss"])  # e.g. Bias Loss's running minimum
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.best = state["best"] if "best" in state else state["best_acc"]
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

    def train_one_epoch(self) -> dict[str, Any]:
        """One pass over the task's batches: zero the gradients, the task's step, one optimiser step."""
        self.net.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.task.start_epoch(self)
        sums: dict[str, float] = {}
        start = time.perf_counter()
        bar = tqdm(self.task.batches(self), desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False,
                   total=self.task.num_batches(self), disable=not progress_enabled(self.dist))
        for batch in bar:
            threads.tick()  # under threads=auto: follow the machine's load (cheap between re-checks)
            self.optimizer.zero_grad(set_to_none=True)
            step_sums = self.task.train_step(self, batch)
            self.optimizer_step()
            for k, v in step_sums.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n = max(sums.get("n", 0.0), 1.0)
            bar.set_postfix({k: f"{v / n:.4f}" for k, v in list(sums.items())[:4] if k not in ("n", "samples")})
        seconds = time.perf_counter() - start
        keys = sorted(sums)
        sums = dict(zip(keys, reduce_sum([sums[k] for k in keys], self.dist, self.device)))
        record = self.task.train_metrics(sums, self)
        samples = sums.get("samples", sums.get("n", 0.0))
        record.update({f"train_{self.unit}_per_s": samples / seconds, "train_seconds": seconds})
        gov = threads.current()
        if gov is not None:  # the thread count at the epoch's end (the run's summary has every change)
            record["threads"] = gov.threads
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
                record.update(self.task.evaluate(self))
            is_best = self._improves(record)
            if is_best:
                self.best = record[self.task.best_metric]
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

    def _improves(self, record: dict) -> bool:
        value = record.get(self.task.best_metric) if self.task.best_metric else None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return value > self.best if self.task.best_mode == "max" else value < self.best

    def _print_epoch(self, r: dict) -> None:
        """``epoch 3/10  lr 0.1  train loss 0.4 acc 0.9  val loss 0.5 acc 0.8  <task's extra>  120 images/s``:
        every ``train_*`` and ``val_*`` metric of the record, in the order the task returned them."""
        rate = f"train_{self.unit}_per_s"
        parts = [f"epoch {r['epoch']:>3}/{self.epochs}", f"lr {r['lr']:.4g}"]
        for prefix in ("train", "val"):
            items = [f"{k[len(prefix) + 1:]} {format_metric(v)}" for k, v in r.items()
                     if k.startswith(prefix + "_") and k not in (rate, "train_seconds")]
            if items:
                parts.append(f"{prefix} " + " ".join(items))
        extra = self.task.describe(r, self)
        if extra:
            parts.append(extra)
        parts.append(f"{r[rate]:.0f} {self.unit}/s" + (f" ({r['threads']} thr)" if "threads" in r else ""))
        print("  ".join(parts), flush=True)
