"""What every task needs around a run: the device, the run directory and its protection, resume rules, and
fingerprints that decide when a finished run may be reused.

Rules (docs/training.md, "Runs, resume and reuse"):

* **Run directories.** A directory that already holds a run (``last.pt``, ``best.pt`` or ``summary.json``) is
  never written into by a new run: ``--resume`` continues it, ``--force`` replaces it (its run files are
  deleted once the new run has passed every check, other files are left alone). Run names are plain names,
  so ``<output_dir>/<name>-<time>`` stays inside ``output_dir``.
* **Resume.** Only the resumable keys (:func:`~leancnn.config.resumable_keys`: fields marked ``runtime`` or
  ``resumable`` in the schema) may differ between the checkpoint's config and the resumed one (``train.epochs`` to
  extend a run, the device, threads, workers, the eval batch size, the name);
  any other change is refused in one line that names the key. The config file of the run is rewritten only
  once the checkpoint has been restored into the new trainer.
* **Fingerprints.** Every run writes ``fingerprint.json``: the resolved config without the keys that do not
  change results (:func:`~leancnn.config.runtime_keys`) and the identity (content digest) of the data it reads.
  A command that reuses finished runs (``lodo``, the benchmark scripts) reuses one only when the fingerprint
  matches exactly; otherwise it retrains and says which keys differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ExperimentConfig, config_changes, flatten, from_dict, resumable_keys, runtime_keys, to_dict
from ..errors import LeancnnError
from ..io import atomic_write_json
from ..train.distributed import DistContext, all_gather_objects

RUN_FILES = ("config.yaml", "fingerprint.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json",
             "curves.png", "test_per_label.csv")
_RUN_MARKERS = ("last.pt", "best.pt", "summary.json")  # a directory with any of these holds a run
CHECKPOINT_NAMES = ("best.pt", "last.pt", "pruned.pt")  # a run directory's checkpoint, in this order (prune: pruned.pt)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeancnnError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def start_process(device_name: str) -> tuple[torch.device, "DistContext"]:
    """The training device and this process's place in the process group (under ``torchrun``: joined, and the
    rank's own CUDA device)."""
    from ..train.distributed import init_distributed

    device = resolve_device(device_name)
    ctx = init_distributed(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return device, ctx


def resume_state(resume: str | os.PathLike | dict | None, cfg: Any, model, device: torch.device,
                 task: str | None = None) -> dict | None:
    """The checkpoint to resume (None without one; a checkpoint already read is used as it is), after checking
    that it comes from ``task`` and may continue ``cfg`` (:func:`check_resume`), and loading its weights into
    ``model`` (the architecture must fit)."""
    if resume is None:
        return None
    from ..train.checkpoint import load_checkpoint, load_model_state

    state = resume if isinstance(resume, dict) else load_checkpoint(resume, device)
    source = f"checkpoint '{state['path']}'"
    if task is not None:
        from .protocol import task_of

        if task_of(state) != task:
            raise LeancnnError(f"{source} was written by the '{task_of(state)}' task; it cannot resume a "
                               f"'{task}' run")
    check_resume(state.get("config"), cfg, int(state.get("epoch", 0)), source)
    load_model_state(model, state, source)
    return state


def world_size_from_env() -> int:
    """The number of processes ``torchrun`` started (1 without it); readable before the process group exists."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ----------------------------------------------------------------------------------------- run directories


def check_path_arg(path: str | os.PathLike | None, what: str) -> Path | None:
    """``None`` stays None; an empty path is an error naming the option."""
    if path is None:
        return None
    if not str(path).strip():
        raise LeancnnError(f"{what}: the path is empty")
    return Path(path)


def resolve_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
    """A checkpoint file, or a run directory (its best.pt, else last.pt; a prune run's pruned.pt)."""
    p = check_path_arg(path, what)
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                return p / name
        raise LeancnnError(f"{what} '{p}' holds no {', '.join(CHECKPOINT_NAMES[:-1])} or {CHECKPOINT_NAMES[-1]}")
    if not p.is_file():
        raise LeancnnError(f"{what} '{p}' does not exist")
    return p


def checkpoint_inputs(path: str | os.PathLike | None, what: str) -> list[tuple[str, Path]]:
    """A checkpoint argument (a file, or a run directory) as inputs for :func:`leancnn.outputs.check_output`:
    a run directory; or the file and, when the folder holding it is a run (it has run files), that folder."""
    if path is None or not str(path).strip():
        return []
    p = Path(path)
    if p.is_dir():
        return [(f"{what} run directory", p)]
    items = [(f"{what} checkpoint", p)]
    if held_run_files(p.parent) or (p.parent / "config.yaml").is_file():
        items.insert(0, (f"run directory of the {what} checkpoint", p.parent))
    return items


def check_run_output(out: str | os.PathLike, config: str | os.PathLike | None = None,
                     resume: str | os.PathLike | None = None, init: str | os.PathLike | None = None,
                     data: list[tuple[str, Path]] = ()) -> Path:
    """``-o`` of a training command against what it reads (:func:`leancnn.outputs.check_output`): the config
    file, the checkpoint it resumes, the ``model.init`` weights (not read on a resume) and the data folders. A
    resumed run may continue in its own directory (``-o`` the checkpoint's run directory)."""
    from ..outputs import check_output

    inputs = [("config file", Path(config))] if config else []
    inputs += checkpoint_inputs(resume, "--resume")
    inputs += [] if resume else checkpoint_inputs(init, "model.init")
    own = None
    if resume is not None and str(resume).strip():
        own = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    return check_output(out, [*inputs, *data], "-o", own=own)


def resolve_train_config(cls: type, task: str, need: str, config: str | os.PathLike | None, overrides,
                         resume: str | os.PathLike | None) -> tuple[Any, dict | None]:
    """The config of ``leancnn <task> train`` and the checkpoint it resumes (read once; None without one). With
    ``--resume`` and no ``-c``, the checkpoint's own config with the overrides applied (the resume check compares the
    two); a checkpoint of another task is refused naming both (``need``: what the command takes, e.g. "a video run")."""
    from ..config import apply_overrides, from_dict, load_config
    from ..train.checkpoint import load_checkpoint
    from .protocol import expect_task

    state = None
    if resume is not None:
        state = load_checkpoint(check_path_arg(resume, "--resume"))
        expect_task(state, (task,), f"leancnn {task} train --resume", need)
        if not config:
            return from_dict(cls, apply_overrides(state.get("config") or {}, list(overrides))), state
    return load_config(config, list(overrides), cls=cls), state


def resolve_train_run(cls: type, task: str, need: str, config: str | os.PathLike | None, overrides,
                      resume: str | os.PathLike | None, out: str | os.PathLike | None,
                      data: list[tuple[str, Path]] = ()) -> tuple[Any, dict | None, Path | None]:
    """What ``leancnn <task> train`` starts from: the config and resumed checkpoint (:func:`resolve_train_config`)
    and ``-o`` (a resume without ``-o`` continues in the checkpoint's directory), checked against every input
    (:func:`check_run_output`; ``data``: the data folders it reads). ``out`` stays None for the default directory."""
    out_path = check_path_arg(out, "-o")
    cfg, state = resolve_train_config(cls, task, need, config, overrides, resume)
    if state is not None and out_path is None:
        out_path = Path(state["path"]).parent
    check_run_output(out_path or default_run_dir(cfg), config, resume, data=list(data))
    return cfg, state, out_path


def data_inputs(*folders: str) -> list[tuple[str, Path]]:
    """The cached data folders a task reads (``$LEANCNN_CACHE/<folder>``), as inputs for ``check_output``."""
    from ..io import cache_dir

    return [(f"data folder ({name} cache)", cache_dir() / name) for name in folders]


def run_dir_path(cfg: Any, out: str | os.PathLike | None, ctx: DistContext) -> Path:
    """``out`` or ``<output_dir>/<name>-<time>``; rank 0 decides, every rank gets the same path (nothing is
    created yet)."""
    out = check_path_arg(out, "-o") or default_run_dir(cfg)
    return Path(all_gather_objects(str(out), ctx)[0])


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>`` (``name`` is a plain name: no '/' and no leading '.')."""
    return Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def held_run_files(path: Path) -> list[str]:
    """The files of ``path`` that mark it as holding a run (checkpoints, a summary)."""
    return [f for f in _RUN_MARKERS if (path / f).exists()] if path.is_dir() else []


def check_run_dir(path: Path, force: bool = False, resume_from: str | Path | None = None) -> None:
    """Refuse to write a new run into a directory that holds one, unless ``force``. Resuming may continue the
    run whose ``last.pt`` it starts from; resuming into a directory with another ``last.pt`` needs ``force``."""
    if path.exists() and not path.is_dir():
        raise LeancnnError(f"run directory '{path}' exists and is not a directory")
    held = held_run_files(path)
    if not held or force:
        return
    if resume_from is None:
        raise LeancnnError(f"run directory '{path}' already holds a run ({', '.join(held)}); continue it with "
                           f"--resume {path / 'last.pt'}, replace it with --force, or choose another -o")
    last = path / "last.pt"
    if last.exists() and not last.samefile(resume_from):
        raise LeancnnError(f"run directory '{path}' holds its own last.pt, which resuming from '{resume_from}' "
                           "would replace; add --force to replace it, or choose another -o")


def clear_run_files(path: Path, keep: str | Path | None = None) -> list[str]:
    """Delete the run files of ``path`` (not ``keep``, not foreign files); returns their names."""
    removed = []
    for name in RUN_FILES:
        f = path / name
        if f.exists() and not (keep is not None and Path(keep).exists() and f.samefile(keep)):
            f.unlink()
            removed.append(name)
    return removed


def agree(ctx: DistContext, check: Callable[[], Any]) -> Any:
    """Run ``check`` on rank 0 only (e.g. one that reads the file system) and make every rank raise the same
    :class:`LeancnnError` or return the same value, so no rank is left waiting in a collective."""
    outcome: tuple[str, Any] = ("ok", None)
    if ctx.is_main:
        try:
            outcome = ("ok", check())
        except LeancnnError as e:
            outcome = ("error", str(e))
    kind, value = all_gather_objects(outcome, ctx)[0]
    if kind == "error":
        raise LeancnnError(value)
    return value


# ----------------------------------------------------------------------------------------- resume


def check_resume(saved_config: dict | None, cfg: ExperimentConfig, completed_epochs: int, source: str,
                 length: tuple[str, str] = ("train.epochs", "epochs")) -> None:
    """Refuse a resume whose config differs from the checkpoint's in a key that is not resumable, or
    that asks for fewer epochs than the checkpoint has already completed (``length``: the config key that says
    how long a run is, and its unit; an RL run counts ``train.frames``)."""
    if not saved_config:
        raise LeancnnError(f"{source} holds no config; it cannot be resumed")
    try:
        saved = from_dict(type(cfg), saved_config)
    except LeancnnError as e:
        raise LeancnnError(f"{source}: its config no longer validates ({e})") from None
    resumable = resumable_keys(type(cfg))
    changes = config_changes(saved, cfg, ignore=resumable)
    if changes:
        key, old, new = changes[0]
        more = f" (and {len(changes) - 1} more: {', '.join(k for k, _, _ in changes[1:])})" if len(changes) > 1 else ""
        raise LeancnnError(f"cannot resume {source} with '{key}' changed ({old!r} in the checkpoint, {new!r} now)"
                           f"{more}; on --resume only {', '.join(resumable)} may change: start a new run "
                           "to change anything else")
    key, unit = length
    wanted = cfg
    for part in key.split("."):
        wanted = getattr(wanted, part)
    if wanted < completed_epochs:
        raise LeancnnError(f"{key}={wanted} but {source} has already completed {completed_epochs} "
                           f"{unit}; a run cannot be shortened")


# ----------------------------------------------------------------------------------------- fingerprints


# Keys added after runs were first cached: left out of a fingerprint while at their default, so that the runs of
# earlier versions keep their fingerprints (and are reused).
LATER_DEFAULTS = {"model.pruned": {}, "model.init": "",
                  # register's inference section and boundary term (issue 21)
                  "loss.boundary_weight": 0.0, "loss.full_grid": False, "infer.tta": "none", "infer.refine_steps": 0, "infer.refine_similarity": "mind",
                  "infer.refine_weight": 0.5, "infer.refine_lr": 0.1}


def fingerprint(cfg: Any, data: dict[str, str]) -> dict:
    """What defines a run's results: its config (a config dataclass) without its runtime keys
    (:func:`~leancnn.config.runtime_keys`), and the digests of its data."""
    runtime = set(runtime_keys(type(cfg)))
    keyed = {k: v for k, v in flatten(to_dict(cfg)).items()
             if k not in runtime and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    blob = json.dumps({"config": keyed, "data": data}, sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:24], "config": keyed, "data": dict(data)}


def write_fingerprint(run_dir: Path, fp: dict) -> Path:
    return atomic_write_json(run_dir / "fingerprint.json", fp)


def read_fingerprint(run_dir: Path) -> dict | None:
    try:
        fp = json.loads((run_dir / "fingerprint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return fp if isinstance(fp, dict) and "fingerprint" in fp else None


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """Human-readable differences: ``"train.epochs: 1 -> 2"``, ``"data mnist: 3f2a.. -> 9b1c.."``."""
    out = [f"{k}: {a!r} -> {b!r}" for k, a, b in config_changes(old.get("config", {}), new.get("config", {}))]
    da, db = old.get("data", {}), new.get("data", {})
    out += [f"data {k}: {da.get(k)} -> {db.get(k)}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
    return out


@dataclass
class RunState:
    """What to do with a cached run directory: ``new`` (train), ``done`` (reuse), ``resume`` (continue its
    last.pt) or ``stale`` (it holds a run of another fingerprint: retrain; ``reason`` says what differs)."""

    action: str
    reason: str = ""


def restore_trainer(trainer, state: dict) -> None:
    """Restore a checkpoint into a trainer before anything is written: one that does not fit the config changes
    no file and is reported in one line."""
    try:
        trainer.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise LeancnnError(f"checkpoint '{state['path']}' cannot be resumed with this config "
                           f"({type(e).__name__}: {e})") from None


def start_run_dir(run_dir: Path, config_text: str, fp: dict, force: bool = False, keep: str | Path | None = None,
                  extending: bool = False) -> None:
    """Rank 0, after every check: create the run directory, delete the replaced run's files (``force``; ``keep``
    is the checkpoint being resumed) or, when a resume extends a finished run, its stale summary and curves;
    then write config.yaml and fingerprint.json."""
    from ..io import atomic_write_text, ensure_writable_dir

    ensure_writable_dir(run_dir)
    if force:
        clear_run_files(run_dir, keep=keep)
    elif extending:
        for stale in ("summary.json", "curves.png"):  # they describe the run before it was extended
            if (run_dir / stale).exists():
                (run_dir / stale).unlink()
    atomic_write_text(run_dir / "config.yaml", config_text)
    write_fingerprint(run_dir, fp)


def train_cached_with(train_fn: Callable[..., dict], cfg: Any, run_dir: Path, fp: dict, quiet: bool = True) -> dict:
    """The summary of ``cfg``'s run in ``run_dir``: reused when a finished run with the same fingerprint ``fp``
    is there, continued from its ``last.pt`` when it was interrupted, trained (again) by ``train_fn(cfg, out=,
    resume=, quiet=, force=)`` otherwise; a run of another fingerprint is replaced, the keys that differ
    printed. For scripts that cache runs."""
    run_dir = Path(run_dir)
    state = cached_run_state(run_dir, fp)
    if state.action == "done":
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if state.action == "stale":
        print(f"{run_dir}: retraining ({state.reason})", flush=True)
    return train_fn(cfg, out=run_dir, resume=run_dir / "last.pt" if state.action == "resume" else None, quiet=quiet,
                    force=state.action == "stale")


def cached_run_state(run_dir: Path, fp: dict) -> RunState:
    run_dir = Path(run_dir)
    held = held_run_files(run_dir)
    old = read_fingerprint(run_dir)
    if not held:
        return RunState("new")
    if old is None:
        return RunState("stale", "no fingerprint.json (written by an older leancnn)")
    if old["fingerprint"] != fp["fingerprint"]:
        diffs = fingerprint_changes(old, fp)
        return RunState("stale", "; ".join(diffs) if diffs else "fingerprint differs")
    if "summary.json" in held:
        return RunState("done")
    return RunState("resume") if "last.pt" in held else RunState("stale", "best.pt without last.pt")
