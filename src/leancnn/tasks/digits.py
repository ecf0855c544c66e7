"""The digit classifiers that several tasks share (``classify`` trains them, ``prune`` fine-tunes them, ``lodo``
compares them, ``demo`` shows them): their datasets and held-out sets, the model a config builds, the checks of
a classification config, the test over domains, the layout choice, and the identity of their data."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from .. import threads
from ..config import DataConfig, ExperimentConfig, from_dict
from ..data import DOMAINS, DigitsDataset, domain_digest
from ..data.digits import NUM_CLASSES, SIZE
from ..errors import LeancnnError
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
from ..train import DistContext, load_checkpoint, load_model_state
from ..train.distributed import all_gather_objects
from .classification import check_batch_layout, eval_loader, evaluate
from .runs import fingerprint

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


def limit_dataset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A fixed random subset of ``n`` samples (all of them when ``n`` is 0 or too large)."""
    if n <= 0 or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].sort().values.tolist())


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
    train = limit_dataset(train, cfg.limit_train, seed)
    val = limit_dataset(DigitsDataset(cfg.domains, "val", seed=seed), cfg.limit_eval, seed + 1)
    if cfg.test_domains:
        tests = {d: DigitsDataset([d], cfg.test_split, seed=seed) for d in cfg.test_domains}
    else:
        tests = {d: DigitsDataset([d], "test", seed=seed) for d in cfg.domains}
    tests = {d: limit_dataset(ds, cfg.limit_eval, seed + 2) for d, ds in tests.items()}
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
    return limit_dataset(ds, data.limit_train, data.split_seed + 3)


# ----------------------------------------------------------------------------------------- runs


def build_model(cfg: ExperimentConfig):
    """The registered model; with ``model.mixstyle.after`` MixStyle applied after those modules."""
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    if cfg.model.pruned:  # a pruned model: the registered architecture cut to the recorded widths
        from ..prune import apply_plan

        with torch.enable_grad():  # the dependency graph is traced through autograd
            model = apply_plan(model, torch.zeros(1, 3, SIZE, SIZE), cfg.model.pruned)
    if apply_mixstyle(model, cfg.model.mixstyle, cfg.train.seed) and cfg.semi.mode != "off":
        deactivate_mixstyle(model)  # the semi-supervised trainer switches MixStyle on where it mixes
    return model


def apply_mixstyle(model: torch.nn.Module, ms, seed: int) -> bool:
    """MixStyle inserted after the modules ``ms.after`` names (a ``MixStyleConfig``); whether any was. A name that
    is not a module of the model is one config error naming ``model.mixstyle.after``."""
    if not ms.after:
        return False
    try:
        insert_mixstyle(model, ms.after, p=ms.p, alpha=ms.alpha, mix=ms.mix, seed=seed)
    except ValueError as e:
        raise LeancnnError(f"config key 'model.mixstyle.after': {e}") from None
    return True


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


def test_rows(results: dict[str, dict]) -> list[list]:
    """Table rows of :func:`test_model`'s results; the per-domain mean has no image count ("-")."""
    labels = {"mean": "mean (per domain)", "all": "all (pooled)"}
    return [[labels.get(d, d), "-" if r["n"] is None else r["n"], f"{100 * r['acc']:.2f}%",
             f"{r['loss']:.4f}"] for d, r in results.items()]


def config_from_checkpoint(state: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, state.get("config") or {})


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

