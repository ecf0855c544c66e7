"""The task protocol: what a trainable task describes once, the registry of tasks, and :func:`load_run`, which
rebuilds a run (task, config, model) from its checkpoint alone.

A task is a :class:`TaskSpec`: its ``name`` (recorded in every checkpoint as ``"task"``), its config class, the
checks that need no data, :meth:`TaskSpec.prepare` (model, data, loaders and the engine :class:`~leancnn.train.Task`
of one run, as a :class:`Prepared`), the identity of its data for fingerprints, its summary, curves and printed
table, and how a checkpoint's model is rebuilt. :func:`leancnn.tasks.lifecycle.train_task` trains any of them
(seed, checks, DDP, resume, run directory, fit, best, summary, curves); ``docs/architecture.md`` shows a task in
one file. Tasks register themselves with :func:`register_task`; the built-in ones are imported on first use.

Checkpoints written before the ``task`` field existed are read by the shape of their config (the rule of
:func:`legacy_task`); one whose config does not tell is refused in one line that says how to add the field.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from .. import report
from ..config import from_dict
from ..errors import LeancnnError
from ..train import Task, load_checkpoint, load_model_state


@dataclass(kw_only=True)
class Prepared:
    """What a task builds for one run; the lifecycle does the rest (optimiser, schedule, resume, trainer)."""

    model: nn.Module
    task: Task  # the engine task: step and evaluation
    train_loader: Any
    val_loader: Any = None  # evaluation runs when not None
    steps_per_epoch: int | None = None  # for the schedule (default: len(train_loader))
    lr_scales: dict[str, float] | None = None  # modules trained at a multiple of optim.lr
    memory_format: torch.memory_format | None = None
    meta: dict = field(default_factory=dict)  # saved in every checkpoint as "meta"
    extra: dict = field(default_factory=dict)  # what the task's summary needs later (test sets, splits...)


class TaskSpec:
    """A trainable task, described once. Override what differs; :meth:`prepare` is required."""

    name: str = ""  # recorded in every checkpoint as "task"
    config_cls: type = object
    kind: str = ""  # what a run of this task is called in messages ("classifier", "video", "registration")
    commands: str = ""  # where a run of this task goes (for messages that refuse it elsewhere)

    def kind_of(self, state: dict) -> str:
        """The kind of this checkpoint's run, for messages (e.g. a pruned classifier)."""
        return self.kind or self.name

    def check(self, cfg, world_size: int) -> Any:
        """Every check that needs no data read and nothing written (raise :class:`LeancnnError` naming the
        key); returns what :meth:`prepare` may reuse (e.g. the model it built)."""
        return None

    def configure(self, cfg, device: torch.device) -> None:
        """Process settings before the data is built (threads, backend flags)."""
        from .. import threads

        threads.apply(cfg.train.threads)  # auto: the machine's free cores, followed as the run goes

    def prepare(self, cfg, ctx, device: torch.device, checked: Any, resuming: bool) -> Prepared:
        """Model, data, loaders and the engine task of one run (after the per-rank seed)."""
        raise NotImplementedError

    def data_identity(self, cfg, prepared: Prepared) -> dict[str, str]:
        """Content digests of the data the run reads (part of its fingerprint); rank 0 only."""
        return {}

    def announce(self, cfg, prepared: Prepared) -> None:
        """A line before training starts (not when quiet)."""

    def summarise(self, cfg, prepared: Prepared, trainer, device: torch.device, ctx, run_dir: Path) -> dict:
        """The task's entries of summary.json (rank 0, with the best weights loaded; may write more files)."""
        return {"epochs": cfg.train.epochs, "best": trainer.best}

    def plot_curves(self, history: Sequence[dict], path: Path, cfg) -> None:
        """curves.png (default: every metric of the history, one panel each)."""
        report.plot_history(history, path, title=f"{cfg.name}: {self.name}")

    def print_summary(self, summary: dict) -> None:
        """The short table printed at the end of a run (not when quiet)."""

    def config_from_state(self, state: dict):
        """The run's config from its checkpoint."""
        try:
            return from_dict(self.config_cls, state.get("config") or {})
        except LeancnnError as e:
            raise LeancnnError(f"checkpoint '{state.get('path', '?')}' is not a {self.kind or self.name} run "
                               f"({e})") from None

    def model_from_state(self, cfg, state: dict) -> nn.Module:
        """The run's network, unweighted (its checkpoint's ``meta`` may be needed, e.g. a grid)."""
        raise NotImplementedError

    def input_shape(self, cfg, state: dict) -> tuple[int, ...] | None:
        """One sample's input shape for the run's network (what export and latency feed it), when it has one
        (``state``: the checkpoint, whose ``meta`` may record it, e.g. a grid); ``None``: the run cannot be timed."""
        return None

    def export_shape(self, cfg, state: dict) -> tuple[int, ...] | None:
        """One sample's input shape as the run's data has it (what ``leancnn export`` writes and checks by default;
        a stream step: one frame, ``(C, 1, H, W)``); default :meth:`input_shape`. ``None``: nothing to export."""
        return self.input_shape(cfg, state)

    def export_network(self, cfg, state: dict, model: nn.Module) -> nn.Module:
        """What ``leancnn export`` writes of the run's network (default the network; a module with an
        ``export_output`` attribute names its output, e.g. ``"embedding"``)."""
        return model

    def calibration_inputs(self, cfg, state: dict, batches: int) -> list | None:
        """Up to ``batches`` batches of the run's training inputs, as the network sees them at evaluation (no
        augmentation), a fixed draw: what int8 quantization calibrates on. ``None``: this task has none."""
        return None

    def evaluate_export(self, cfg, state: dict, model: nn.Module, limit: int = 0) -> dict[str, float] | None:
        """The run's test accuracies (``{set: accuracy in [0, 1]}``) of ``model``: the run's network, or an
        exported program behind a module (:class:`leancnn.export.pte.ExecutorchModule`); ``limit`` > 0: a fixed
        subset of that many samples per set. ``None``: the task has no accuracy to compare."""
        return None


# ----------------------------------------------------------------------------------------- registry

_TASKS: dict[str, TaskSpec] = {}
_BUILTIN = {"classify": "leancnn.tasks.classify", "video": "leancnn.tasks.video", "register": "leancnn.tasks.register",
            "retrieve": "leancnn.tasks.retrieve", "rl": "leancnn.tasks.rl"}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make a task known by its name (to :func:`get_task` and :func:`load_run`); returns it."""
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError("a task needs a name")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _TASKS:
        raise LeancnnError(f"unknown task '{name}'; known: {', '.join(list_tasks())}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    return sorted({*_TASKS, *_BUILTIN})


# ----------------------------------------------------------------------------------------- checkpoints


def legacy_task(config: dict | None) -> str | None:
    """The task of a checkpoint written before checkpoints named it, by the shape of its config: ``register``
    (``model.kind``, ``data.root``), ``video`` (``data.frames``), ``classify`` (``data.domains``,
    ``model.mixstyle``); None when the config does not tell."""
    if not isinstance(config, dict) or not config:
        return None
    model, data = config.get("model"), config.get("data")
    model, data = model if isinstance(model, dict) else {}, data if isinstance(data, dict) else {}
    if "kind" in model or "root" in data:
        return "register"
    if "frames" in data or data.get("name") == "moving_digits":
        return "video"
    if "domains" in data or "mixstyle" in model or data.get("name") == "digits":
        return "classify"
    return None


def task_of(state: dict) -> str:
    """The name of the task that wrote a checkpoint: its ``task`` field, or for an older checkpoint the
    :func:`legacy_task` rule; one clear line when neither tells."""
    name = state.get("task") or legacy_task(state.get("config"))
    if not name:
        path = state.get("path", "PATH")
        raise LeancnnError(f"checkpoint '{path}' has no 'task' field and its config does not say which task wrote "
                           f"it; add it with: python -c \"import torch; p='{path}'; "
                           f"s=torch.load(p, weights_only=False); s['task']='classify'; torch.save(s, p)\" "
                           f"(task: one of {', '.join(list_tasks())})")
    return name


def expect_task(state: dict, wanted: Sequence[str], command: str, need: str) -> TaskSpec:
    """The checkpoint's task, refusing one of another task than ``command`` takes (``wanted`` task names,
    described as ``need``, e.g. "a classifier run") in one line naming both and where the given run goes."""
    spec = get_task(task_of(state))
    if spec.name not in wanted:
        kind = spec.kind_of(state)
        raise LeancnnError(f"'{state.get('path', 'the checkpoint')}' is a {kind} run, but `{command}` needs {need}; "
                           f"a {kind} run is for {spec.commands}")
    return spec


@dataclass
class Run:
    """A run rebuilt from its checkpoint: the task that wrote it, its config, its model (weights loaded, on the
    device, in eval mode) and the checkpoint itself (``state``; ``state["path"]`` is the file read)."""

    task: TaskSpec
    cfg: Any
    model: nn.Module
    state: dict

    @property
    def path(self) -> Path:
        return Path(self.state["path"])


def load_run(path: str | Path, device: torch.device | str = "cpu", tasks: Sequence[str] | None = None,
             command: str = "leancnn", need: str = "a run") -> Run:
    """Rebuild a run from a checkpoint file or run directory (best.pt, else last.pt; a prune run's pruned.pt),
    reading the file once. ``tasks``: the task names the caller takes (another is refused naming both)."""
    from .runs import resolve_checkpoint

    state = path if isinstance(path, dict) else load_checkpoint(resolve_checkpoint(path), device)
    spec = expect_task(state, tasks, command, need) if tasks else get_task(task_of(state))
    cfg = spec.config_from_state(state)
    model = spec.model_from_state(cfg, state)
    load_model_state(model, state, f"checkpoint '{state['path']}'")
    return Run(spec, cfg, model.to(device).eval(), state)
