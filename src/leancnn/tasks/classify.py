"""Image classification: train and evaluate a registered model on the digit domains from a typed config (the
``classify`` task; what other tasks share of it lives in :mod:`.digits` and :mod:`.classification`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from .. import report
from ..config import ExperimentConfig, apply_overrides, from_dict, load_config, to_dict
from ..data import DigitsDataset
from ..data.augment import strong_augment, weak_augment
from ..errors import LeancnnError
from ..losses import build_loss
from ..models import get_model_entry
from ..nn.layout import convert_model
from ..outputs import check_output, check_output_file
from ..train import DistContext, load_checkpoint
from ..train.distributed import launch
from ..train.engine import progress_enabled
from .classification import ClassifyTask, eval_loader, train_loader
from .digits import (
    IMAGE_SHAPE,
    _check_domains,
    build_datasets,
    build_model,
    build_unlabeled,
    check_experiment,
    config_from_checkpoint,
    configure_torch,
    data_identity,
    limit_dataset,
    load_init_weights,
    memory_format_for,
    run_fingerprint,
    test_model,
    test_rows,
    variance_and_correctness,
)
from .lifecycle import train_task
from .protocol import Prepared, TaskSpec, expect_task, load_run, register_task
from .runs import (
    check_path_arg,
    check_run_dir,
    check_run_output,
    checkpoint_inputs,
    data_inputs,
    default_run_dir,
    resolve_device,
    train_cached_with,
    world_size_from_env,
)
from .semi import SemiTask


class ClassifySpec(TaskSpec):
    """Image classification on the digit domains (with MixStyle, Bias Loss, or the semi-supervised form)."""

    name, config_cls, kind = "classify", ExperimentConfig, "classifier"
    commands = "leancnn evaluate | prune | latency run"

    def kind_of(self, state):
        model = (state.get("config") or {}).get("model") or {}
        return "pruned classifier" if isinstance(model, dict) and model.get("pruned") else "classifier"

    def check(self, cfg, world_size):
        return check_experiment(cfg, world_size)  # the model the checks built is the one trained

    def configure(self, cfg, device):
        configure_torch(cfg, device)

    def prepare(self, cfg, ctx, device, model, resuming):
        train_ds, val_ds, tests = build_datasets(cfg.data, label_seed=cfg.train.seed)
        loader = train_loader(train_ds, cfg.data.batch_size, cfg.train.seed, ctx, cfg.data.num_workers,
                              cfg.data.sampler, cfg.data.domains_per_batch)
        if len(loader) == 0:  # (the lifecycle checks it too; here before the unlabelled set is built)
            raise LeancnnError("the training set gives no batch; lower data.batch_size")
        loss = build_loss(cfg.loss)
        task, steps = ClassifyTask(loss, feature_layer=cfg.loss.feature_layer or None), None
        if cfg.semi.mode != "off":
            u_batch = cfg.semi.unlabeled_batch_size or cfg.data.batch_size
            u_loader = train_loader(build_unlabeled(cfg), u_batch, cfg.train.seed + 1, ctx, cfg.data.num_workers,
                                    key="semi.unlabeled_batch_size")
            if len(u_loader) == 0:
                raise LeancnnError("the unlabelled set gives no batch; lower semi.unlabeled_batch_size")
            task = SemiTask(loss, u_loader, threshold=cfg.semi.threshold, weight_u=cfg.semi.weight_u,
                            mixstyle_labeled=cfg.semi.mixstyle_labeled,
                            strong=strong_augment if cfg.semi.strong_augment else weak_augment)
            steps = len(u_loader)  # an epoch is one pass over the unlabelled data
        if cfg.model.init and not resuming:
            load_init_weights(model, cfg, device)
        return Prepared(model=model, task=task, train_loader=loader, steps_per_epoch=steps,
                        val_loader=eval_loader(val_ds, cfg.data.eval_batch_size, cfg.data.num_workers),
                        memory_format=memory_format_for(cfg, model, device, loader.batch_size, ctx),
                        extra={"tests": tests})

    def data_identity(self, cfg, prepared):
        return data_identity(cfg)

    def summarise(self, cfg, prepared, trainer, device, ctx, run_dir):
        return {"model": cfg.model.name, "epochs": cfg.train.epochs, "best_val_acc": trainer.best_acc,
                "test": test_model(prepared.model, prepared.extra["tests"], cfg, device)}

    def plot_curves(self, history, path, cfg):
        report.plot_curves(history, path, title=f"{cfg.name}: {cfg.model.name}")

    def print_summary(self, summary):
        print(report.format_table(test_rows(summary["test"]), ["test set", "images", "accuracy", "loss"]))

    def model_from_state(self, cfg, state):
        return build_model(cfg)

    def input_shape(self, cfg, state):
        return tuple(get_model_entry(cfg.model.name).input_size)

    def export_shape(self, cfg, state):
        return IMAGE_SHAPE  # what the run was trained and tested on (the registry's size is for timing)

    def calibration_inputs(self, cfg, state, batches):
        ds = DigitsDataset(cfg.data.domains, "train", seed=cfg.data.split_seed)
        g = torch.Generator().manual_seed(cfg.data.split_seed + 3)
        idx = torch.randperm(len(ds), generator=g)[:batches * cfg.data.batch_size].tolist()
        xs = torch.stack([ds[i][0] for i in idx])
        return list(xs.split(cfg.data.batch_size))

    def evaluate_export(self, cfg, state, model, limit=0):
        domains = cfg.data.test_domains or cfg.data.domains
        tests = {d: limit_dataset(DigitsDataset([d], "test", seed=cfg.data.split_seed), limit, cfg.data.split_seed + 2)
                 for d in domains}
        results = test_model(model, tests, cfg, torch.device("cpu"), progress_enabled(DistContext()))
        return {d: r["acc"] for d, r in results.items() if d != "all"}


SPEC = register_task(ClassifySpec())


def train(cfg: ExperimentConfig, out: str | Path | None = None, resume: str | Path | dict | None = None,
          callbacks=(), quiet: bool = False, force: bool = False) -> dict:
    """Train ``cfg`` (the lifecycle of :func:`leancnn.tasks.lifecycle.train_task`); write config.yaml,
    fingerprint.json, metrics.jsonl, last.pt/best.pt, summary.json and curves.png into the run directory ``out``
    (default ``<output_dir>/<name>-<time>``).

    Everything that can fail on bad input (config, data, checkpoint, run directory) is checked before a file
    is written. ``resume`` continues a checkpoint (a path, or one already read; only resumable keys may
    differ from its config); ``force`` replaces a run that ``out`` already holds (see :mod:`leancnn.tasks.runs`)."""
    return train_task(SPEC, cfg, out=out, resume=resume, callbacks=callbacks, quiet=quiet, force=force)


def train_cached(cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = True) -> dict:
    """The summary of ``cfg``'s run in ``run_dir``: reused when a finished run with the same fingerprint is
    there, continued from its ``last.pt`` when it was interrupted, trained (again) otherwise; a run of another
    fingerprint is replaced, and the keys that differ are printed. For scripts that cache runs."""
    return train_cached_with(train, cfg, run_dir, run_fingerprint(cfg), quiet)


def resolve_train_config(config: str | None, overrides: list[str], resume: str | None,
                         out: str | None) -> tuple[ExperimentConfig, str | Path | None, dict | None]:
    """The config and run directory of ``leancnn train``. Resuming without ``-c`` continues the checkpoint's own
    config (overrides still apply, e.g. ``train.epochs=20`` to extend); with ``-c`` the file's config must
    agree with the checkpoint's (checked by :func:`train`). A resumed run stays in the checkpoint's directory
    unless ``-o`` is given. Returns the config, the run directory and the checkpoint read (None without one)."""
    out = check_path_arg(out, "-o")
    if resume is not None:
        resume = check_path_arg(resume, "--resume")
        state = load_checkpoint(resume)
        expect_task(state, ("classify",), "leancnn train --resume", "a classifier run")
        cfg = (load_config(config, overrides) if config else
               from_dict(ExperimentConfig, apply_overrides(to_dict(config_from_checkpoint(state)), overrides)))
        return cfg, out or Path(state["path"]).parent, state
    return load_config(config, overrides), out, None


def train_command(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
                  force: bool = False, nproc: int = 1, debug: bool = False) -> int:
    """``leancnn train``: resolve the config and run directory, then train here, or in ``nproc`` processes
    with DDP. The launcher validates everything first (config, data layout over ``nproc`` processes, run
    directory), so a mistake is reported once, before any worker starts."""
    cfg, out, state = resolve_train_config(config, overrides, resume, out)
    check_run_output(out or default_run_dir(cfg), config, resume, cfg.model.init, data_inputs("digits"))
    if nproc < 1:
        raise LeancnnError(f"--nproc-per-node must be >= 1, got {nproc}")
    if nproc == 1 or world_size_from_env() > 1:  # one process, or already a torchrun worker
        train(cfg, out=out, resume=state, force=force)  # the checkpoint is read once
        return 0
    check_experiment(cfg, nproc)
    resolve_device(cfg.train.device)
    out = out or default_run_dir(cfg)
    check_run_dir(Path(out), force, state["path"] if state else None)
    argv = (["--debug"] if debug else []) + ["train", "-o", str(out)]
    argv += (["-c", str(config)] if config else []) + (["--resume", str(resume)] if resume else [])
    argv += (["--force"] if force else []) + list(overrides)
    return launch(nproc, argv)


def evaluate_checkpoint(path: str | Path, domains: list[str] | None = None, split: str = "test",
                        device: str = "auto", plot_variance: str | Path | None = None,
                        progress: bool | None = None, force: bool = False, limit: int = 0) -> dict[str, dict]:
    """Evaluate a checkpoint on ``split`` of ``domains`` (default: the domains it was trained/tested on).

    ``limit`` > 0: only that many images of each set, a fixed random subset (seeded by the run's
    ``data.split_seed``, as ``data.limit_eval`` draws its subsets): a quick check of a large set.

    ``plot_variance``: also write a PNG of per-sample feature variance (Bias Loss's diversity signal)
    against correctness (an existing file is replaced only with ``force``). ``progress``: a bar per domain on
    stderr (default: when stdout is a terminal)."""
    if progress is None:
        progress = progress_enabled(DistContext())
    if plot_variance is not None:  # a bad plot path fails now, not after the whole evaluation
        report.figure_format(plot_variance, "--plot-variance")
        check_output(plot_variance, checkpoint_inputs(path, "evaluated"), "--plot-variance")
        check_output_file(plot_variance, force, "--plot-variance")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise LeancnnError(f"--limit must be a whole number >= 0 (0: every image), got {limit!r}")
    dev = resolve_device(device)
    run = load_run(path, dev, ("classify",), "leancnn evaluate", "a classifier run")
    cfg, model = run.cfg, run.model
    convert_model(model, memory_format_for(cfg, model, dev))  # evaluation follows train.memory_format
    domains = domains or (cfg.data.test_domains or cfg.data.domains)
    _check_domains(domains, "--domains")
    tests = {d: limit_dataset(DigitsDataset([d], split, seed=cfg.data.split_seed), limit, cfg.data.split_seed + 2)
             for d in domains}
    results = test_model(model, tests, cfg, dev, progress)
    if plot_variance:
        variance, correct = variance_and_correctness(model, ConcatDataset(list(tests.values())), cfg, dev)
        report.plot_variance_correctness(variance, correct, plot_variance,
                                         title=f"{cfg.model.name} on {', '.join(domains)} ({split})")
    return results


