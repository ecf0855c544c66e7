"""Image classification: train and evaluate a registered model on the digit domains from a typed config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset

from .. import report, threads
from ..config import DataConfig, ExperimentConfig, apply_overrides, dump_config, from_dict, load_config, to_dict
from ..data import DOMAINS, DigitsDataset, DomainBalancedSampler, domain_digest
from ..data.augment import strong_augment, weak_augment
from ..data.digits import NUM_CLASSES, SIZE
from ..errors import LeancnnError
from ..interrupts import loader_worker_init
from ..io import atomic_write_json
from ..losses import build_loss, feature_variance
from ..models import create_model
from ..nn.layout import (
    convert_model,
    format_name,
    model_memory_format,
    resolve_memory_format,
    to_device,
    warn_layout_breaks,
)
from ..nn.mixstyle import deactivate_mixstyle, insert_mixstyle
from ..nn.tap import WithFeatures
from ..outputs import check_output, check_output_file
from ..train import (
    DistContext,
    Trainer,
    build_optimizer,
    build_scheduler,
    cleanup_distributed,
    evaluate,
    load_checkpoint,
    load_model_state,
    seed_everything,
)
from ..train.distributed import all_gather_objects, launch
from ..train.engine import progress_enabled
from ..train.semi import SemiTrainer
from .runs import (
    CLASSIFIER_KINDS,
    agree,
    check_path_arg,
    check_run_dir,
    check_run_output,
    checkpoint_inputs,
    data_inputs,
    default_run_dir,
    expect_kind,
    fingerprint,
    resolve_device,
    restore_trainer,
    resume_state,
    start_process,
    start_run_dir,
    train_cached_with,
    world_size_from_env,
)

IMAGE_SHAPE = (3, SIZE, SIZE)  # every digit domain: 3x32x32


def configure_torch(cfg: ExperimentConfig, device: torch.device) -> None:
    threads.apply(cfg.train.threads)  # auto: the machine's free cores, followed as the run goes
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = cfg.train.deterministic
        torch.backends.cudnn.benchmark = not cfg.train.deterministic


# ----------------------------------------------------------------------------------------- data


def _check_domains(names: list[str], key: str) -> None:
    if not names and key == "data.domains":
        raise LeancnnError("config key 'data.domains' must name at least one domain")
    for n in names:
        if n not in DOMAINS:
            raise LeancnnError(f"unknown dataset '{n}' in config key '{key}'; available: {', '.join(DOMAINS)}")


def _limit(ds: Dataset, n: int, seed: int) -> Dataset:
    """A fixed random subset of ``n`` samples (all of them when ``n`` is 0 or too large)."""
    if n <= 0 or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].sort().values.tolist())


def domain_labels(ds: Dataset) -> torch.Tensor:
    """Per-sample domain index of a :class:`DigitsDataset` (or a Subset of one)."""
    if isinstance(ds, Subset):
        return domain_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if not hasattr(ds, "domain_labels"):
        raise LeancnnError(f"{type(ds).__name__} has no domain labels; data.sampler=domain needs them")
    return torch.as_tensor(ds.domain_labels)


def labeled_split(ds: DigitsDataset, per_class: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of ``per_class`` labelled images per (domain, class), drawn with ``seed``, and of the rest."""
    g = torch.Generator().manual_seed(seed)
    labeled = []
    for d in range(len(ds.domains)):
        for c in range(ds.num_classes):
            idx = torch.nonzero((ds.domain_labels == d) & (ds.targets == c)).flatten()
            if len(idx) < per_class:
                raise LeancnnError(f"data.labels_per_class={per_class} but domain '{ds.domains[d]}' has only "
                                   f"{len(idx)} training images of class {c}")
            labeled += idx[torch.randperm(len(idx), generator=g)[:per_class]].tolist()
    keep = set(labeled)
    return sorted(labeled), [i for i in range(len(ds)) if i not in keep]


def build_datasets(cfg: DataConfig, label_seed: int = 0
                   ) -> tuple[Dataset, Dataset, dict[str, Dataset]]:
    """Train and val sets of ``cfg.domains``; test sets per domain (held-out ``test_domains``: the
    ``test_split`` of each, by default the whole domain). With ``labels_per_class`` the training set is the
    labelled subset drawn with ``label_seed`` (see :func:`build_unlabeled` for the rest)."""
    _check_domains(cfg.domains, "data.domains")
    _check_domains(cfg.test_domains, "data.test_domains")
    seed = cfg.split_seed
    train = DigitsDataset(cfg.domains, "train", seed=seed, augment=cfg.augment)
    if cfg.labels_per_class > 0:
        train = Subset(train, labeled_split(train, cfg.labels_per_class, label_seed)[0])
    train = _limit(train, cfg.limit_train, seed)
    val = _limit(DigitsDataset(cfg.domains, "val", seed=seed), cfg.limit_eval, seed + 1)
    if cfg.test_domains:
        tests = {d: DigitsDataset([d], cfg.test_split, seed=seed) for d in cfg.test_domains}
    else:
        tests = {d: DigitsDataset([d], "test", seed=seed) for d in cfg.domains}
    tests = {d: _limit(ds, cfg.limit_eval, seed + 2) for d, ds in tests.items()}
    return train, val, tests


def held_out_wording(domain: str, n: int, data: DataConfig) -> str:
    """What a test of ``n`` images on held-out ``domain`` under ``data`` covered, in words for reports: "the
    whole held-out domain mnistm (5,000 images)" only when neither ``data.test_split=test`` nor
    ``data.limit_eval`` cut it. ``n`` is the image count actually measured (``summary["test"][domain]["n"]``)."""
    from ..data import load_domain, split_indices

    labels = load_domain(domain)[1]
    if data.test_split == "test":
        full, where = len(split_indices(labels, data.split_seed)["test"]), "the test split of the held-out domain"
    else:
        full, where = len(labels), "the held-out domain"
    if n >= full:
        whole = "the whole held-out domain" if data.test_split == "all" else where
        return f"{whole} {domain} ({n:,} images)"
    cut = f" (data.limit_eval={data.limit_eval})" if data.limit_eval > 0 else ""
    return f"{n:,} of the {full:,} images of {where} {domain}, drawn at random{cut}"


def build_unlabeled(cfg: ExperimentConfig) -> Dataset:
    """The unlabelled set of ``semi.mode``: ``ssdg`` = the source training images not kept as labelled;
    ``uda`` = the train split of ``semi.unlabeled_domains`` (default ``data.test_domains``)."""
    data = cfg.data
    if cfg.semi.mode == "ssdg":
        if data.labels_per_class <= 0:
            raise LeancnnError("semi.mode=ssdg needs data.labels_per_class > 0 (the labelled images per class "
                               "and domain; the rest of the training split is the unlabelled data)")
        full = DigitsDataset(data.domains, "train", seed=data.split_seed)
        ds = Subset(full, labeled_split(full, data.labels_per_class, cfg.train.seed)[1])
    else:
        names = cfg.semi.unlabeled_domains or data.test_domains
        if not names:
            raise LeancnnError("semi.mode=uda needs unlabelled target domains: set semi.unlabeled_domains "
                               "or data.test_domains")
        _check_domains(names, "semi.unlabeled_domains")
        ds = DigitsDataset(names, "train", seed=data.split_seed)
    return _limit(ds, data.limit_train, data.split_seed + 3)


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


# ----------------------------------------------------------------------------------------- runs


def run_dir_path(cfg: ExperimentConfig, out: str | Path | None, ctx: DistContext) -> Path:
    """``out`` or ``<output_dir>/<name>-<time>``; rank 0 decides, every rank gets the same path (nothing is
    created yet)."""
    out = check_path_arg(out, "-o") or default_run_dir(cfg)
    return Path(all_gather_objects(str(out), ctx)[0])


def build_model(cfg: ExperimentConfig):
    """The registered model; with ``model.mixstyle.after`` MixStyle applied after those modules."""
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    if cfg.model.pruned:  # a pruned model: the registered architecture cut to the recorded widths
        from ..prune import apply_plan

        with torch.enable_grad():  # the dependency graph is traced through autograd
            model = apply_plan(model, torch.zeros(1, 3, SIZE, SIZE), cfg.model.pruned)
    ms = cfg.model.mixstyle
    if ms.after:
        try:
            insert_mixstyle(model, ms.after, p=ms.p, alpha=ms.alpha, mix=ms.mix, seed=cfg.train.seed)
        except ValueError as e:
            raise LeancnnError(f"config key 'model.mixstyle.after': {e}") from None
        if cfg.semi.mode != "off":  # the semi-supervised trainer switches MixStyle on where it mixes
            deactivate_mixstyle(model)
    return model


def check_experiment(cfg: ExperimentConfig, world_size: int = 1):
    """Every check of a classification run that needs no data read and nothing written: domain names, classes
    against the data, module names against the built model, the loss's options, batch layout over
    ``world_size`` processes. Raises one :class:`LeancnnError` naming the key; returns the model it built."""
    data = cfg.data
    _check_domains(data.domains, "data.domains")
    _check_domains(data.test_domains, "data.test_domains")
    _check_domains(cfg.semi.unlabeled_domains, "semi.unlabeled_domains")
    if cfg.model.num_classes < NUM_CLASSES:
        raise LeancnnError(f"config key 'model.num_classes' is {cfg.model.num_classes} but the digit data has "
                           f"{NUM_CLASSES} classes (labels 0-{NUM_CLASSES - 1}); set it to >= {NUM_CLASSES}")
    check_batch_layout(data.batch_size, world_size, data.sampler, data.domains_per_batch)
    if cfg.semi.mode != "off":
        check_batch_layout(cfg.semi.unlabeled_batch_size or data.batch_size, world_size,
                           key="semi.unlabeled_batch_size")
    try:
        model = build_model(cfg)
    except TypeError as e:  # a builder argument that does not exist (model.kwargs)
        raise LeancnnError(f"config key 'model.kwargs': {e}") from None
    try:
        build_loss(cfg.loss)
    except ValueError as e:
        raise LeancnnError(f"config section 'loss': {e}") from None
    if cfg.loss.feature_layer:
        try:
            WithFeatures(model, cfg.loss.feature_layer).remove()
        except ValueError as e:
            raise LeancnnError(f"config key 'loss.feature_layer': {e}") from None
    return model


def test_model(model, tests: dict[str, Dataset], cfg: ExperimentConfig, device: torch.device,
               progress: bool = False) -> dict[str, dict]:
    """Loss, accuracy and image count per test domain (``progress``: a bar per domain). With more than one
    domain, two more entries: ``"mean"``, the unweighted mean over domains of accuracy and loss (``n`` is
    None: it counts domains, not images), and ``"all"``, accuracy and loss pooled over all images."""
    results = {d: evaluate(model, eval_loader(ds, cfg.data.eval_batch_size), device, f"test {d}", progress)
               for d, ds in tests.items()}
    if len(results) > 1:
        per = list(results.values())
        n = sum(r["n"] for r in per)
        results["mean"] = {"acc": sum(r["acc"] for r in per) / len(per),
                           "loss": sum(r["loss"] for r in per) / len(per), "n": None}
        results["all"] = {"acc": sum(round(r["acc"] * r["n"]) for r in per) / n,  # correct / images
                          "loss": sum(r["loss"] * r["n"] for r in per) / n, "n": n}
    return results


def memory_format_for(cfg: ExperimentConfig, model, device: torch.device, batch: int = 2,
                      ctx: DistContext | None = None) -> torch.memory_format:
    """``train.memory_format`` resolved for this model and device (on CUDA ``auto`` times both layouts on a
    batch of the data's shape; under DDP rank 0's choice holds for every rank, so all train in one layout); a
    channels-last choice is checked once on a tiny batch and the layers that lose the layout are named in a
    warning."""
    example = torch.zeros(max(2, batch), *IMAGE_SHAPE)
    fmt = resolve_memory_format(cfg.train.memory_format, model, device, example)
    if ctx is not None and ctx.enabled:
        names = {format_name(f): f for f in (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)}
        fmt = names[all_gather_objects(format_name(fmt), ctx)[0]]
    if fmt in (torch.channels_last, torch.channels_last_3d):
        warn_layout_breaks(convert_model(model.to(device), fmt), example[:2].to(device))
    return fmt


def data_identity(cfg: ExperimentConfig) -> dict[str, str]:
    """Content digests of every domain a run reads (part of its fingerprint)."""
    names = [*cfg.data.domains, *cfg.data.test_domains, *cfg.semi.unlabeled_domains]
    out = {f"digits/{n}": domain_digest(n) for n in dict.fromkeys(names)}
    if cfg.model.init:  # the initial weights are part of what a run computes from
        out["init"] = weights_digest(cfg.model.init)
    return out


def weights_digest(path: str | Path) -> str:
    """Digest of the model weights of a checkpoint (or run directory: best.pt, else last.pt)."""
    from ..train.checkpoint import state_digest
    from .runs import resolve_checkpoint

    return state_digest(load_checkpoint(resolve_checkpoint(path, "model.init"))["model"])


def load_init_weights(model, cfg: ExperimentConfig, device: torch.device) -> None:
    """``model.init``: start from another run's weights (they must fit the architecture, pruned or not)."""
    from .runs import resolve_checkpoint

    path = resolve_checkpoint(cfg.model.init, "model.init")
    load_model_state(model, load_checkpoint(path, device), f"model.init checkpoint '{path}'")


def run_fingerprint(cfg: ExperimentConfig) -> dict:
    return fingerprint(cfg, data_identity(cfg))


def train(cfg: ExperimentConfig, out: str | Path | None = None, resume: str | Path | None = None,
          callbacks=(), quiet: bool = False, force: bool = False) -> dict:
    """Train ``cfg``; write config.yaml, fingerprint.json, metrics.jsonl, last.pt/best.pt, summary.json and
    curves.png into the run directory ``out`` (default ``<output_dir>/<name>-<time>``).

    Everything that can fail on bad input (config, data, checkpoint, run directory) is checked before a file
    is written. ``resume`` continues a checkpoint (only ``RESUMABLE_KEYS`` may differ from its config);
    ``force`` replaces a run that ``out`` already holds (see :mod:`leancnn.tasks.runs`)."""
    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    model = check_experiment(cfg, world_size_from_env())  # the model the checks built is the one trained
    device, ctx = start_process(cfg.train.device)
    try:
        configure_torch(cfg, device)
        seed_everything(cfg.train.seed + ctx.rank)  # per-rank streams for augmentation and dropout
        train_ds, val_ds, tests = build_datasets(cfg.data, label_seed=cfg.train.seed)
        loader = train_loader(train_ds, cfg.data.batch_size, cfg.train.seed, ctx, cfg.data.num_workers,
                              cfg.data.sampler, cfg.data.domains_per_batch)
        if len(loader) == 0:
            raise LeancnnError("the training set gives no batch; lower data.batch_size")
        u_loader = None
        if cfg.semi.mode != "off":
            u_batch = cfg.semi.unlabeled_batch_size or cfg.data.batch_size
            u_loader = train_loader(build_unlabeled(cfg), u_batch, cfg.train.seed + 1, ctx, cfg.data.num_workers,
                                    key="semi.unlabeled_batch_size")
            if len(u_loader) == 0:
                raise LeancnnError("the unlabelled set gives no batch; lower semi.unlabeled_batch_size")
        optimizer = build_optimizer(model, cfg.optim)
        steps = len(u_loader) if u_loader is not None else len(loader)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.epochs, steps)
        loss = build_loss(cfg.loss)
        if cfg.model.init and resume is None:
            load_init_weights(model, cfg, device)
        state = resume_state(resume, cfg, model, device)
        run_dir = run_dir_path(cfg, out, ctx)
        agree(ctx, lambda: check_run_dir(run_dir, force, state["path"] if state else None))
        args = (model, loss, optimizer, scheduler, loader,
                eval_loader(val_ds, cfg.data.eval_batch_size, cfg.data.num_workers),
                cfg.train.epochs, run_dir, device, to_dict(cfg), cfg.train.grad_clip, cfg.train.amp,
                ctx, list(callbacks), cfg.loss.feature_layer or None,
                memory_format_for(cfg, model, device, loader.batch_size, ctx), cfg.train.compile)
        if u_loader is None:
            trainer = Trainer(*args)
        else:
            trainer = SemiTrainer(*args, unlabeled_loader=u_loader, threshold=cfg.semi.threshold,
                                  weight_u=cfg.semi.weight_u, mixstyle_labeled=cfg.semi.mixstyle_labeled,
                                  strong=strong_augment if cfg.semi.strong_augment else weak_augment)
        if state is not None:
            restore_trainer(trainer, state)  # before anything is written
        fp = run_fingerprint(cfg) if ctx.is_main else None
        if ctx.is_main:
            start_run_dir(run_dir, dump_config(cfg), fp, force, state["path"] if state else None,
                          extending=state is not None and trainer.epoch < cfg.train.epochs)
        history = trainer.fit()
        summary = {}
        if ctx.is_main:
            best = run_dir / ("best.pt" if (run_dir / "best.pt").exists() else "last.pt")
            load_model_state(model, load_checkpoint(best, device), str(best))
            summary = {"run_dir": str(run_dir), "model": cfg.model.name, "epochs": cfg.train.epochs,
                       "best_val_acc": trainer.best_acc, "checkpoint": str(best),
                       "test": test_model(model, tests, cfg, device), "history": history,
                       "fingerprint": fp["fingerprint"], "threads": threads.record()}
            atomic_write_json(run_dir / "summary.json", summary)
            report.plot_curves(history, run_dir / "curves.png", title=f"{cfg.name}: {cfg.model.name}")
            if not quiet:
                print(report.format_table(test_rows(summary["test"]), ["test set", "images", "accuracy", "loss"]))
                print(f"run written to {run_dir}")
        return summary
    finally:
        cleanup_distributed()


def train_cached(cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = True) -> dict:
    """The summary of ``cfg``'s run in ``run_dir``: reused when a finished run with the same fingerprint is
    there, continued from its ``last.pt`` when it was interrupted, trained (again) otherwise; a run of another
    fingerprint is replaced, and the keys that differ are printed. For scripts that cache runs."""
    return train_cached_with(train, cfg, run_dir, run_fingerprint(cfg), quiet)


def test_rows(results: dict[str, dict]) -> list[list]:
    """Table rows of :func:`test_model`'s results; the per-domain mean has no image count ("-")."""
    labels = {"mean": "mean (per domain)", "all": "all (pooled)"}
    return [[labels.get(d, d), "-" if r["n"] is None else r["n"], f"{100 * r['acc']:.2f}%",
             f"{r['loss']:.4f}"] for d, r in results.items()]


def config_from_checkpoint(state: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, state.get("config") or {})


def resolve_train_config(config: str | None, overrides: list[str], resume: str | None,
                         out: str | None) -> tuple[ExperimentConfig, str | Path | None]:
    """The config and run directory of ``leancnn train``. Resuming without ``-c`` continues the checkpoint's own
    config (overrides still apply, e.g. ``train.epochs=20`` to extend); with ``-c`` the file's config must
    agree with the checkpoint's (checked by :func:`train`). A resumed run stays in the checkpoint's directory
    unless ``-o`` is given."""
    out = check_path_arg(out, "-o")
    if resume is not None:
        resume = check_path_arg(resume, "--resume")
        state = load_checkpoint(resume)
        expect_kind(state, CLASSIFIER_KINDS, "leancnn train --resume", "a classifier run")
        cfg = (load_config(config, overrides) if config else
               from_dict(ExperimentConfig, apply_overrides(to_dict(config_from_checkpoint(state)), overrides)))
        return cfg, out or Path(state["path"]).parent
    return load_config(config, overrides), out


def train_command(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
                  force: bool = False, nproc: int = 1, debug: bool = False) -> int:
    """``leancnn train``: resolve the config and run directory, then train here, or in ``nproc`` processes
    with DDP. The launcher validates everything first (config, data layout over ``nproc`` processes, run
    directory), so a mistake is reported once, before any worker starts."""
    cfg, out = resolve_train_config(config, overrides, resume, out)
    check_run_output(out or default_run_dir(cfg), config, resume, cfg.model.init, data_inputs("digits"))
    if nproc < 1:
        raise LeancnnError(f"--nproc-per-node must be >= 1, got {nproc}")
    if nproc == 1 or world_size_from_env() > 1:  # one process, or already a torchrun worker
        train(cfg, out=out, resume=resume, force=force)
        return 0
    check_experiment(cfg, nproc)
    resolve_device(cfg.train.device)
    out = out or default_run_dir(cfg)
    check_run_dir(Path(out), force, load_checkpoint(resume)["path"] if resume else None)
    argv = (["--debug"] if debug else []) + ["train", "-o", str(out)]
    argv += (["-c", str(config)] if config else []) + (["--resume", str(resume)] if resume else [])
    argv += (["--force"] if force else []) + list(overrides)
    return launch(nproc, argv)


def evaluate_checkpoint(path: str | Path, domains: list[str] | None = None, split: str = "test",
                        device: str = "auto", plot_variance: str | Path | None = None,
                        progress: bool | None = None, force: bool = False) -> dict[str, dict]:
    """Evaluate a checkpoint on ``split`` of ``domains`` (default: the domains it was trained/tested on).

    ``plot_variance``: also write a PNG of per-sample feature variance (Bias Loss's diversity signal)
    against correctness (an existing file is replaced only with ``force``). ``progress``: a bar per domain on
    stderr (default: when stdout is a terminal)."""
    if progress is None:
        progress = progress_enabled(DistContext())
    if plot_variance is not None:  # a bad plot path fails now, not after the whole evaluation
        report.figure_format(plot_variance, "--plot-variance")
        check_output(plot_variance, checkpoint_inputs(path, "evaluated"), "--plot-variance")
        check_output_file(plot_variance, force, "--plot-variance")
    dev = resolve_device(device)
    state = load_checkpoint(path, dev)
    expect_kind(state, CLASSIFIER_KINDS, "leancnn evaluate", "a classifier run")
    cfg = config_from_checkpoint(state)
    model = build_model(cfg)
    load_model_state(model, state, f"checkpoint '{state['path']}'")
    model.to(dev)
    convert_model(model, memory_format_for(cfg, model, dev))  # evaluation follows train.memory_format
    domains = domains or (cfg.data.test_domains or cfg.data.domains)
    _check_domains(domains, "--domains")
    tests = {d: DigitsDataset([d], split, seed=cfg.data.split_seed) for d in domains}
    results = test_model(model, tests, cfg, dev, progress)
    if plot_variance:
        variance, correct = variance_and_correctness(model, ConcatDataset(list(tests.values())), cfg, dev)
        report.plot_variance_correctness(variance, correct, plot_variance,
                                         title=f"{cfg.model.name} on {', '.join(domains)} ({split})")
    return results


@torch.no_grad()
def variance_and_correctness(model, ds: Dataset, cfg: ExperimentConfig, device: torch.device):
    """Per-sample variance of the loss's feature map (float64 numpy) and whether the prediction is right."""
    import numpy as np

    tap = WithFeatures(model, cfg.loss.feature_layer or None)
    model.eval()
    variances, correct = [], []
    try:
        for batch in eval_loader(ds, cfg.data.eval_batch_size):
            logits, features = tap(to_device(batch[0], device, model_memory_format(model)))
            variances.append(feature_variance(features).double().cpu())
            correct.append((logits.argmax(1).cpu() == batch[1]))
    finally:
        tap.remove()
    return torch.cat(variances).numpy(), torch.cat(correct).numpy().astype(np.bool_)

