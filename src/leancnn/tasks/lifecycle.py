"""The one run lifecycle: :func:`train_task` trains any :class:`~leancnn.tasks.protocol.TaskSpec`.

Seed → the task's checks (nothing read, nothing written) → process start (DDP under ``torchrun``) → the task's
settings and the per-rank seed → :meth:`TaskSpec.prepare` (model, data, loaders, engine task) → optimiser and
schedule → the checkpoint to resume (read once; it must come from the same task and may change only resumable
keys) → the run directory (refused when it holds another run, unless ``force``) → the :class:`Trainer`
(restored before anything is written) → config.yaml + fingerprint.json → fit → the best weights reloaded →
summary.json (common entries + the task's) → curves. Every rule about run directories, resume and reuse is
in :mod:`leancnn.tasks.runs`.
"""

from __future__ import annotations

from pathlib import Path

from .. import threads
from ..config import dump_config, to_dict
from ..errors import LeancnnError
from ..io import atomic_write_json
from ..train import Trainer, build_optimizer, build_scheduler, cleanup_distributed, load_checkpoint, seed_everything
from ..train.checkpoint import load_model_state
from .protocol import TaskSpec
from .runs import (
    agree,
    check_run_dir,
    fingerprint,
    restore_trainer,
    resume_state,
    run_dir_path,
    start_process,
    start_run_dir,
    world_size_from_env,
)


def train_task(spec: TaskSpec, cfg, out: str | Path | None = None, resume: str | Path | dict | None = None,
               callbacks=(), quiet: bool = False, force: bool = False) -> dict:
    """Train ``cfg`` as task ``spec``; write config.yaml, fingerprint.json, metrics.jsonl, last.pt/best.pt,
    summary.json and curves.png into the run directory ``out`` (default ``<output_dir>/<name>-<time>``).

    ``resume``: a checkpoint path, or a checkpoint already read (its ``path`` entry names the file); only
    resumable keys may differ from its config. ``force`` replaces a run that ``out`` already holds. Returns the
    summary (an empty dict on ranks other than 0)."""
    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    checked = spec.check(cfg, world_size_from_env())
    device, ctx = start_process(cfg.train.device)
    try:
        spec.configure(cfg, device)
        seed_everything(cfg.train.seed + ctx.rank)  # per-rank streams for augmentation and dropout
        prep = spec.prepare(cfg, ctx, device, checked, resuming=resume is not None)
        if len(prep.train_loader) == 0:
            raise LeancnnError("the training set gives no batch; lower data.batch_size")
        steps = prep.steps_per_epoch or len(prep.train_loader)
        optimizer = build_optimizer(prep.model, cfg.optim, prep.lr_scales)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.epochs, steps)
        state = resume_state(resume, cfg, prep.model, device, spec.name)
        kept = state["path"] if state else None
        run_dir = run_dir_path(cfg, out, ctx)
        agree(ctx, lambda: check_run_dir(run_dir, force, kept))
        trainer = Trainer(model=prep.model, task=prep.task, optimizer=optimizer, scheduler=scheduler,
                          train_loader=prep.train_loader, val_loader=prep.val_loader, epochs=cfg.train.epochs,
                          out_dir=run_dir, device=device, config=to_dict(cfg), grad_clip=cfg.train.grad_clip,
                          amp=cfg.train.amp, dist=ctx, callbacks=list(callbacks), memory_format=prep.memory_format,
                          compile=cfg.train.compile, meta=prep.meta, run_task=spec.name)
        if state is not None:
            restore_trainer(trainer, state)  # before anything is written
        fp = fingerprint(cfg, spec.data_identity(cfg, prep)) if ctx.is_main else None
        if ctx.is_main:
            start_run_dir(run_dir, dump_config(cfg), fp, force, kept,
                          extending=state is not None and trainer.epoch < cfg.train.epochs)
            if not quiet:
                spec.announce(cfg, prep)
        history = trainer.fit()
        summary: dict = {}
        if ctx.is_main:
            best = run_dir / ("best.pt" if (run_dir / "best.pt").exists() else "last.pt")
            load_model_state(prep.model, load_checkpoint(best, device), str(best))
            summary = {"run_dir": str(run_dir), "task": spec.name,
                       **spec.summarise(cfg, prep, trainer, device, ctx, run_dir),
                       "checkpoint": str(best), "history": history, "fingerprint": fp["fingerprint"],
                       "threads": threads.record()}
            atomic_write_json(run_dir / "summary.json", summary)
            spec.plot_curves(history, run_dir / "curves.png", cfg)
            if not quiet:
                spec.print_summary(summary)
                print(f"run written to {run_dir}")
        return summary
    finally:
        cleanup_distributed()
