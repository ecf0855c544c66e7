"""``leancnn retrieve train | evaluate``: instance retrieval (re-identification) across visual domains (issue 23).

The data are the digit identities of :mod:`leancnn.data.retrieval` (one identity = one handwritten sample, views =
cameras, styles = domains). A run trains on the identities of the ``train`` split rendered in ``data.train_styles``
and is tested, as cross-dataset re-ID is, on **identities never seen in training** rendered in a **style that is not
a training style** (``data.test_style``): view 0 of every test identity is its query, its other views are the
gallery (with every other test identity as distractors); same-identity same-view samples are removed from a query's
ranking (:func:`leancnn.losses.retrieval.evaluate_ranking`). The same test identities in the first training style
are scored too (``source``), so the report shows what the style shift costs.

Training is the standard re-ID recipe (torchreid): an identity classifier on the backbone's pooled features with
label smoothing (``loss.label_smoothing``), plus the batch-hard triplet loss on the same features
(``loss.triplet_weight``; 0 = softmax only) on P x K batches (``data.sampler: pk``). MixStyle is inserted by module
name as for classification (``model.mixstyle.after=[layer1,layer2]``); ``mix: crossdomain`` treats the view (camera)
as the domain, as the paper's re-ID code does, and needs ``data.sampler: domain`` with the softmax loss alone.
Validation each epoch: retrieval on the ``val`` identities in the training style (``val_mAP`` selects best.pt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .. import report
from ..config import SEED_MAX, MixStyleConfig, OptimConfig, ScheduleConfig, TrainConfig, check_warmup, rule
from ..data.digits import MEAN, SIZE, STD
from ..data.retrieval import build_identities, identity_split
from ..data.samplers import PKSampler
from ..errors import ConfigError, LeancnnError
from ..losses.retrieval import TripletLoss, evaluate_ranking, pairwise_distance
from ..models import create_model
from ..train import Task
from .classification import eval_loader, train_loader
from .digits import apply_mixstyle
from .protocol import Prepared, TaskSpec, register_task

# ------------------------------------------------------------------------------------------------ schema


@dataclass
class RetrieveDataConfig:
    ids: int = rule(1200, ge=10, le=5000)  # identities drawn from the 5,000 (split 60 / 10 / 30 % train / val / test)
    views: int = rule(3, ge=2, le=12)  # views (cameras) per identity
    train_styles: list[Literal["ink", "photo", "colour", "warm", "cool"]] = rule(factory=lambda: ["colour"], min_len=1, unique=True)
    test_style: Literal["ink", "photo", "colour", "warm", "cool"] = "photo"  # never a training style
    split_seed: int = rule(0, ge=0, lt=SEED_MAX)  # which identities go to train / val / test
    seed: int = rule(0, ge=0, lt=SEED_MAX)  # the rendering (views' jitter, photo crops, colours)
    sampler: Literal["pk", "random", "domain"] = "pk"
    p: int = rule(16, ge=2)  # pk: identities per batch
    k: int = rule(4, ge=2)  # pk: samples per identity
    batch_size: int = rule(64, ge=2)  # random / domain samplers (pk: p x k)
    eval_batch_size: int = rule(256, ge=1, runtime=True)
    num_workers: int = rule(0, ge=0, runtime=True)

    def _check(self) -> None:
        if self.test_style in self.train_styles:
            raise ConfigError(f"config key 'data.test_style' ({self.test_style}) is a training style "
                              f"({self.train_styles}); the test domain must be unseen")


@dataclass
class RetrieveModelConfig:
    name: str = rule("resnet20", nonempty=True)
    kwargs: dict[str, Any] = field(default_factory=dict)
    mixstyle: MixStyleConfig = field(default_factory=MixStyleConfig)


@dataclass
class RetrieveLossConfig:
    label_smoothing: float = rule(0.1, ge=0.0, lt=1.0)
    triplet_weight: float = rule(1.0, ge=0.0)  # 0: identity classification alone
    margin: float = rule(0.3, ge=0.0)


@dataclass
class RetrieveOptimConfig(OptimConfig):
    lr: float = rule(0.05, gt=0.0)


@dataclass
class RetrieveTrainConfig(TrainConfig):
    epochs: int = rule(20, ge=1, resumable=True)


@dataclass
class RetrieveConfig:
    """``leancnn retrieve train``: re-identification of digit identities across styles (docs/mixstyle.md)."""

    name: str = rule("retrieve", name=True, runtime=True)
    output_dir: str = rule("runs", nonempty=True, runtime=True)
    model: RetrieveModelConfig = field(default_factory=RetrieveModelConfig)
    data: RetrieveDataConfig = field(default_factory=RetrieveDataConfig)
    loss: RetrieveLossConfig = field(default_factory=RetrieveLossConfig)
    optim: RetrieveOptimConfig = field(default_factory=RetrieveOptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: RetrieveTrainConfig = field(default_factory=RetrieveTrainConfig)
    metric: Literal["euclidean", "cosine"] = "cosine"

    def _check(self) -> None:
        check_warmup(self.schedule, self.train)
        ms = self.model.mixstyle
        if ms.after and ms.mix == "crossdomain" and self.data.sampler != "domain":
            raise ConfigError("config key 'model.mixstyle.mix' is crossdomain: it mixes the halves of a batch of two "
                              "views, so it needs data.sampler=domain")
        if self.data.sampler != "pk" and self.loss.triplet_weight > 0:
            raise ConfigError(f"config key 'loss.triplet_weight' is {self.loss.triplet_weight:g}: the triplet loss "
                              f"needs P x K batches (data.sampler=pk, not {self.data.sampler}); or set it to 0")


# ------------------------------------------------------------------------------------------------ data


class IdentityImages(Dataset):
    """Rendered identities as normalised tensors: ``(image, label, view)`` with ``label`` the identity's index in
    ``classes`` (training) and the view as the domain label (for the domain sampler)."""

    def __init__(self, parts: list[dict], classes: dict[int, int] | None = None):
        images = np.concatenate([p["images"] for p in parts])
        self.pids = np.concatenate([p["pids"] for p in parts])
        self.camids = np.concatenate([p["camids"] for p in parts])
        self.domain_labels = torch.as_tensor(self.camids)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        self.x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        self.classes = classes
        self.labels = torch.as_tensor([classes[p] for p in self.pids] if classes else self.pids)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i], int(self.camids[i])


def data_sets(d: RetrieveDataConfig) -> dict[str, Any]:
    split = identity_split(d.ids, seed=d.split_seed)
    classes = {int(p): i for i, p in enumerate(split["train"])}
    train = IdentityImages([build_identities(split["train"], s, d.views, d.seed) for s in d.train_styles], classes)
    val = IdentityImages([build_identities(split["val"], d.train_styles[0], d.views, d.seed + 1)])
    return {"split": split, "classes": classes, "train": train, "val": val}


def test_sets(d: RetrieveDataConfig) -> dict[str, IdentityImages]:
    ids = identity_split(d.ids, seed=d.split_seed)["test"]
    return {"target": IdentityImages([build_identities(ids, d.test_style, d.views, d.seed + 2)]),
            "source": IdentityImages([build_identities(ids, d.train_styles[0], d.views, d.seed + 2)])}


def data_identity(cfg: RetrieveConfig) -> dict[str, str]:
    from ..data.digits import domain_digest

    return {"mnist": domain_digest("mnist")}


# ------------------------------------------------------------------------------------------------ model and task


def pooled(f: torch.Tensor) -> torch.Tensor:
    """The embedding of a feature map: globally average-pooled (features already pooled are flattened)."""
    return F.adaptive_avg_pool2d(f, 1).flatten(1) if f.ndim == 4 else f.flatten(1)


def embed_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding: the backbone's features, globally average-pooled."""
    return pooled(model.forward_features(x))


@torch.no_grad()
def embed(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    model.eval()
    feats, pids, cams = [], [], []
    for x, y, c in loader:
        feats.append(embed_pool(model, x.to(device)).float().cpu())
        pids.append(np.asarray(y))
        cams.append(np.asarray(c))
    return torch.cat(feats), np.concatenate(pids), np.concatenate(cams)


def retrieval_scores(model: nn.Module, ds: IdentityImages, device: torch.device, metric: str,
                     batch_size: int = 256) -> dict:
    """Query = view 0 of every identity, gallery = its other views (and every other identity's)."""
    f, pids, cams = embed(model, eval_loader(ds, batch_size), device)
    q = cams == 0
    dist = pairwise_distance(f[torch.from_numpy(q)], f[torch.from_numpy(~q)], metric)
    return evaluate_ranking(dist, pids[q], pids[~q], cams[q], cams[~q], max_rank=10)


class RetrievalTask(Task):
    """Identity classification (label smoothing) + batch-hard triplet on the pooled features; val mAP."""

    unit = "images"
    best_metric = "val_mAP"

    def __init__(self, cfg: RetrieveConfig, val: IdentityImages):
        self.cfg, self.val = cfg, val
        self.ce = nn.CrossEntropyLoss(label_smoothing=cfg.loss.label_smoothing)
        self.triplet = TripletLoss(cfg.loss.margin) if cfg.loss.triplet_weight > 0 else None

    def train_step(self, trainer, batch):
        x, y, _ = batch
        x, y = trainer.to_device(x), y.to(trainer.device)
        net = trainer.net
        base = net.module if hasattr(net, "module") else net
        with torch.autocast(trainer.device.type, dtype=torch.float16, enabled=trainer.amp):
            f = base.forward_features(x)
            logits = base.forward_head(f)
            ce = self.ce(logits, y)
            loss = ce
            tri = torch.zeros((), device=x.device)
            if self.triplet is not None:
                tri = self.triplet(pooled(f), y)
                loss = ce + self.cfg.loss.triplet_weight * tri
        trainer.backward(loss)
        n = len(y)
        return {"n": float(n), "loss": float(loss.detach()) * n, "ce": float(ce.detach()) * n,
                "triplet": float(tri.detach()) * n, "acc": float((logits.argmax(1) == y).sum())}

    def evaluate(self, trainer):
        r = retrieval_scores(trainer.model, self.val, trainer.device, self.cfg.metric,
                             self.cfg.data.eval_batch_size)
        trainer.model.train()
        return {"val_mAP": r["mAP"], "val_rank1": r["rank1"]}


def build_retrieval_model(cfg: RetrieveConfig, n_ids: int) -> nn.Module:
    model = create_model(cfg.model.name, num_classes=n_ids, **cfg.model.kwargs)
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise LeancnnError(f"config key 'model.name': {cfg.model.name} has no forward_features / forward_head; "
                           "retrieval embeds the backbone's features")
    apply_mixstyle(model, cfg.model.mixstyle, cfg.train.seed)
    return model


def n_train_ids(cfg: RetrieveConfig) -> int:
    return len(identity_split(cfg.data.ids, seed=cfg.data.split_seed)["train"])


class RetrieveSpec(TaskSpec):
    name, config_cls, kind = "retrieve", RetrieveConfig, "retrieval"
    commands = "leancnn retrieve evaluate"

    def check(self, cfg, world_size):
        if cfg.data.sampler == "pk" and cfg.data.p * cfg.data.k % world_size:
            raise LeancnnError(f"data.p x data.k ({cfg.data.p * cfg.data.k}) must divide among {world_size} processes")
        model = build_retrieval_model(cfg, n_train_ids(cfg))
        with torch.no_grad():
            embed_pool(model.eval(), torch.zeros(2, 3, SIZE, SIZE))
        return model

    def prepare(self, cfg, ctx, device, model, resuming):
        sets = data_sets(cfg.data)
        d = cfg.data
        if d.sampler == "pk":
            sampler = PKSampler(sets["train"].labels, d.p, d.k, seed=cfg.train.seed, rank=ctx.rank,
                                world_size=ctx.world_size)
            loader = DataLoader(sets["train"], batch_size=sampler.batch_size // ctx.world_size, sampler=sampler,
                                num_workers=d.num_workers)
        else:
            loader = train_loader(sets["train"], d.batch_size, cfg.train.seed, ctx, d.num_workers,
                                  sampler="domain" if d.sampler == "domain" else "random")
        return Prepared(model=model, task=RetrievalTask(cfg, sets["val"]), train_loader=loader,
                        val_loader=sets["val"], meta={"n_ids": len(sets["classes"])})

    def data_identity(self, cfg, prepared):
        return data_identity(cfg)

    def summarise(self, cfg, prepared, trainer, device, ctx, run_dir):
        tests = {k: retrieval_scores(prepared.model, ds, device, cfg.metric, cfg.data.eval_batch_size)
                 for k, ds in test_sets(cfg.data).items()}
        return {"model": cfg.model.name, "epochs": cfg.train.epochs, "best_val_mAP": trainer.best, "test": tests}

    def print_summary(self, summary):
        print(report.format_table(result_rows(summary["test"]), ["test", "rank-1", "rank-5", "rank-10", "mAP"]))

    def model_from_state(self, cfg, state):
        model = build_retrieval_model(cfg, (state.get("meta") or {}).get("n_ids") or n_train_ids(cfg))
        return model

    def input_shape(self, cfg, state):
        return (3, SIZE, SIZE)

    def export_network(self, cfg, state, model):
        return Embedder(model)  # what retrieval deploys: the embedding, not the training identities' logits


class Embedder(nn.Module):
    """A retrieval network's embedding (:func:`embed_pool`) as its forward: what ``leancnn export`` writes."""

    export_output = "embedding"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.model_name = getattr(model, "model_name", type(model).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed_pool(self.model, x)


SPEC = register_task(RetrieveSpec())


def result_rows(tests: dict) -> list[list]:
    return [[k, f"{100 * r['rank1']:.1f}%", f"{100 * r['rank5']:.1f}%", f"{100 * r['rank10']:.1f}%",
             f"{100 * r['mAP']:.1f}%"] for k, r in tests.items()]


def train_retrieve(cfg: RetrieveConfig, out: str | Path | None = None, resume=None, quiet: bool = False,
                   force: bool = False) -> dict:
    from .lifecycle import train_task

    return train_task(SPEC, cfg, out=out, resume=resume, quiet=quiet, force=force)


def evaluate_checkpoint(path: str | Path, device: str = "cpu") -> dict:
    from .protocol import load_run

    run = load_run(path, device, ("retrieve",), "leancnn retrieve evaluate", "a retrieval run")
    dev = torch.device(device)
    run.model.to(dev)
    return {k: retrieval_scores(run.model, ds, dev, run.cfg.metric, run.cfg.data.eval_batch_size)
            for k, ds in test_sets(run.cfg.data).items()}


__all__ = ["RetrieveConfig", "RetrievalTask", "build_retrieval_model", "evaluate_checkpoint", "retrieval_scores",
           "train_retrieve"]


def train_command(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
                  force: bool = False) -> int:
    """``leancnn retrieve train`` (under ``torchrun`` every process runs this; the lifecycle does DDP)."""
    from .runs import data_inputs, resolve_train_run

    cfg, state, out_path = resolve_train_run(RetrieveConfig, "retrieve", "a retrieval run", config, overrides, resume,
                                             out, data=data_inputs("digits"))
    train_retrieve(cfg, out=out_path, resume=state, force=force)
    return 0
