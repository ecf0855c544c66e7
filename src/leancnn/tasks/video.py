"""Video classification with MoViNets: train on the moving-digits actions with the one training engine, evaluate
(also on time-reversed clips), temporal ensembles, stream a video frame by frame, export the stream step.

The run's schema is :class:`VideoConfig` (below). Training goes through the shared lifecycle
(:func:`leancnn.tasks.lifecycle.train_task`) and the one engine like every task. Whole-clip training
(``train.sub_clip: 0``) is one causal forward pass per clip. Sub-clip training (``train.sub_clip: n``) feeds a clip
``n`` frames at a time through ``model(frames, state=state)``, backpropagates each sub-clip's loss (the running
logits after it, divided by the number of sub-clips) and carries the state *detached* to the next sub-clip:
truncated backpropagation with memory of one sub-clip, as the PyTorch port trains (the TF recipes train whole
clips). One optimiser step per batch either way. Checkpoints, exact resume, DDP and run fingerprints are the
engine's and ``tasks/runs.py``'s, shared with image classification.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .. import report, threads
from ..config import (
    SEED_MAX,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    check_warmup,
    from_dict,
    load_config,
    rule,
    to_dict,
)
from ..data import video as vdata
from ..errors import ConfigError, LeancnnError
from ..models import create_model, get_model_entry
from ..models.movinet import MoViNet, detach_state
from ..nn import count_macs
from ..outputs import check_output, check_output_file
from ..train import DistContext, Trainer
from ..train.engine import progress_enabled
from .classification import ClassifyTask, check_batch_layout, eval_loader, train_loader
from .lifecycle import train_task
from .protocol import Prepared, TaskSpec, load_run, register_task
from .runs import (
    check_path_arg,
    check_run_dir,
    check_run_output,
    checkpoint_inputs,
    data_inputs,
    resolve_checkpoint,
    resolve_device,
    resolve_train_config,
    train_cached_with,
    world_size_from_env,
)
from .runs import fingerprint as config_fingerprint

# ----------------------------------------------------------------------------------------- schema


@dataclass
class VideoDataConfig:
    """The moving-digits action videos (``data/video.py``); ``frame_step``/``frame_offset`` subsample time (a
    half-frame-rate ensemble member: step 2, offset 0 or 1)."""

    name: Literal["moving_digits"] = "moving_digits"
    frames: int = rule(16, ge=4, le=512)  # the ranges of data/video.py's MovingDigitsSpec (a test keeps them equal)
    height: int = rule(32, ge=16, le=512)
    width: int = rule(32, ge=16, le=512)
    train: int = rule(2000, ge=10, le=1_000_000)  # videos per split (balanced over the 10 actions)
    val: int = rule(400, ge=10, le=1_000_000)
    test: int = rule(600, ge=10, le=1_000_000)
    seed: int = rule(0, ge=0, lt=SEED_MAX)  # the dataset's seed (which digits, which motions)
    augment: bool = True  # flips (with the labels they swap), shifts, brightness/contrast; the same for every frame
    frame_step: int = rule(1, ge=1)  # keep every n-th frame
    frame_offset: int = rule(0, ge=0)  # starting at this frame
    batch_size: int = rule(16, ge=1)  # global batch: divided between DDP ranks
    eval_batch_size: int = rule(64, ge=1, runtime=True)
    num_workers: int = rule(0, ge=0, runtime=True)

    def _check(self) -> None:
        if self.frame_offset >= self.frame_step:
            raise ConfigError(f"config key 'data.frame_offset' ({self.frame_offset}) must be smaller than "
                              f"'data.frame_step' ({self.frame_step})")


@dataclass
class VideoModelConfig:
    name: str = rule("movinet_a0_stream", nonempty=True)
    num_classes: int = rule(10, ge=1)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the model builder
    # BatchNorm momentum (PyTorch's convention: the weight of the new batch); 0 keeps the model's own. MoViNet's is
    # TF's 0.99 decay = 0.01, right for 85k steps; in a few hundred steps the running statistics stay near their
    # initial values and evaluation collapses, so short runs set 0.1.
    bn_momentum: float = rule(0.0, ge=0.0, le=1.0)


@dataclass
class VideoOptimConfig(OptimConfig):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = rule(3e-3, gt=0.0)
    weight_decay: float = rule(0.05, ge=0.0)


@dataclass
class VideoScheduleConfig(ScheduleConfig):
    warmup_epochs: float = rule(1.0, ge=0.0)


@dataclass
class VideoTrainConfig(TrainConfig):
    epochs: int = rule(8, ge=1, resumable=True)
    # frames per sub-clip: 0 trains on the whole clip in one causal pass; n > 0 feeds the clip n frames at a time,
    # carrying the stream state detached between sub-clips (memory of one sub-clip; stream models only)
    sub_clip: int = rule(0, ge=0)
    label_smoothing: float = rule(0.0, ge=0.0, lt=1.0)


@dataclass
class VideoConfig:
    """``leancnn video train``: a video classifier on the moving-digits actions (docs/movinet.md)."""

    name: str = rule("video", name=True, runtime=True)
    output_dir: str = rule("runs", nonempty=True, runtime=True)
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    optim: VideoOptimConfig = field(default_factory=VideoOptimConfig)
    schedule: VideoScheduleConfig = field(default_factory=VideoScheduleConfig)
    train: VideoTrainConfig = field(default_factory=VideoTrainConfig)

    def _check(self) -> None:
        check_warmup(self.schedule, self.train)
        used = -(-(self.data.frames - self.data.frame_offset) // self.data.frame_step)
        if self.train.sub_clip > used:
            raise ConfigError(f"config key 'train.sub_clip' ({self.train.sub_clip}) exceeds the {used} frames a "
                              "clip has after data.frame_step/frame_offset")


# ----------------------------------------------------------------------------------------- data


def data_spec(cfg: VideoDataConfig) -> vdata.MovingDigitsSpec:
    return vdata.MovingDigitsSpec(frames=cfg.frames, height=cfg.height, width=cfg.width, train=cfg.train,
                                  val=cfg.val, test=cfg.test, seed=cfg.seed)


class FrameSubset(Dataset):
    """Every ``step``-th frame of each clip, from frame ``offset`` (a half-frame-rate view: step 2)."""

    def __init__(self, ds: Dataset, step: int = 1, offset: int = 0):
        self.ds, self.step, self.offset = ds, step, offset

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)

    def __getitem__(self, i):
        clip, label = self.ds[i]
        return clip[:, self.offset::self.step], label


def video_dataset(cfg: VideoDataConfig, split: str, augment: bool = False, reverse: bool = False,
                  offset: int | None = None, seed: int = 0) -> Dataset:
    ds = vdata.MovingDigitsDataset(data_spec(cfg), split, reverse=reverse, augment=augment, generator_seed=seed)
    offset = cfg.frame_offset if offset is None else offset
    return ds if cfg.frame_step == 1 and offset == 0 else FrameSubset(ds, cfg.frame_step, offset)


def data_identity(cfg: VideoConfig) -> dict[str, str]:
    """A digest of the clips a run reads (part of its fingerprint)."""
    h = hashlib.sha256()
    spec = data_spec(cfg.data)
    for split in ("train", "val", "test"):
        clips, labels = vdata.load_moving_digits(spec, split)
        h.update(np.ascontiguousarray(clips).tobytes())
        h.update(np.ascontiguousarray(labels).tobytes())
    return {"moving_digits": h.hexdigest()[:24]}


def _set_epoch_hook(loader: DataLoader) -> DataLoader:
    """The engine sets the sampler's epoch; the dataset's augmentation follows it too (same clips, same
    augmentation on a resume, in every worker)."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch") and hasattr(loader.dataset, "set_epoch"):
        original = sampler.set_epoch

        def set_epoch(epoch: int) -> None:
            original(epoch)
            loader.dataset.set_epoch(epoch)

        sampler.set_epoch = set_epoch
    return loader


# ----------------------------------------------------------------------------------------- model and step


def is_stream_model(model: nn.Module) -> bool:
    from ..models.movinet import FusedStreamMovinet

    return isinstance(model, FusedStreamMovinet) or (isinstance(model, MoViNet) and model.stream)


def check_video_experiment(cfg: VideoConfig, world_size: int = 1) -> nn.Module:
    """Every check of a video run that reads no data and writes nothing; returns the model it built."""
    entry = get_model_entry(cfg.model.name)
    if entry.kind != "classifier":
        raise LeancnnError(f"config key 'model.name': '{cfg.model.name}' is a {entry.kind} network; video needs a "
                           "clip model such as movinet_a0_stream or frameavg_r20")
    if len(entry.input_size) != 4:
        raise LeancnnError(f"config key 'model.name': '{cfg.model.name}' is an image model (input "
                           f"{'x'.join(map(str, entry.input_size))}); video needs a clip model such as "
                           "movinet_a0_stream or frameavg_r20")
    if cfg.model.num_classes < len(vdata.ACTIONS):
        raise LeancnnError(f"config key 'model.num_classes' is {cfg.model.num_classes} but the moving-digits data "
                           f"has {len(vdata.ACTIONS)} classes; set it to >= {len(vdata.ACTIONS)}")
    check_batch_layout(cfg.data.batch_size, world_size)
    try:
        model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    except TypeError as e:
        raise LeancnnError(f"config key 'model.kwargs': {e}") from None
    if cfg.model.bn_momentum > 0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.model.bn_momentum
    if cfg.train.sub_clip and not is_stream_model(model):
        raise LeancnnError(f"config key 'train.sub_clip' is {cfg.train.sub_clip} but '{cfg.model.name}' has no "
                           "stream state: sub-clip training needs a stream model (movinet_aX_stream); set 0")
    return model


def sub_clip_step(frames: int) -> Callable:
    """The step of sub-clip training (a :class:`ClassifyTask` ``step``): ``frames`` frames at a time, the state
    carried detached, the task's loss averaged over the sub-clips."""

    def step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunks = x.split(frames, dim=2)
        state = trainer.model.init_state(x.shape[0], x.shape[3], x.shape[4])
        total = torch.zeros((), device=x.device)
        for chunk in chunks:
            with torch.autocast(trainer.device.type, dtype=torch.float16, enabled=trainer.amp):
                logits, state = trainer.net(chunk, state=state)
                loss = trainer.task.loss(logits, y) / len(chunks)
            trainer.backward(loss)
            state = detach_state(state)
            total += loss.detach()
        return total, logits.detach()

    return step


def video_memory_format(cfg: VideoConfig) -> torch.memory_format | None:
    """``train.memory_format`` for clips: ``channels_last`` means channels-last-3d; ``auto`` keeps the default
    layout (3-D depthwise convolutions have no faster channels-last kernel on the CPU; docs/movinet.md)."""
    return torch.channels_last_3d if cfg.train.memory_format == "channels_last" else None


# ----------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, progress: bool = False, desc: str = "eval"):
    """Logits (float32, CPU) and labels of every clip in ``loader``."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    logits, labels = [], []
    for clip, label in tqdm(loader, desc=desc, leave=False, disable=not progress):
        logits.append(model(clip.to(device)).float().cpu())
        labels.append(label)
    model.train(was_training)
    if not logits:
        raise LeancnnError(f"{desc}: the evaluation set is empty")
    return torch.cat(logits), torch.cat(labels)


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, loss, count, per-action accuracy and the share of errors that are the time-reversed action."""
    pred = logits.argmax(1)
    wrong = pred != labels
    reversed_of = torch.tensor([vdata.REVERSED[int(c)] for c in labels])
    per_class = {a: float((pred[labels == c] == c).float().mean()) for c, a in enumerate(vdata.ACTIONS)
                 if (labels == c).any()}
    return {"acc": float((~wrong).float().mean()), "loss": float(F.cross_entropy(logits, labels)),
            "n": int(labels.numel()), "per_class": per_class,
            "reversed_share_of_errors": float((pred[wrong] == reversed_of[wrong]).float().mean()) if wrong.any()
            else 0.0}


def evaluate_video_model(model: nn.Module, cfg: VideoConfig, device: torch.device, split: str = "test",
                         progress: bool = False) -> dict:
    """Accuracy on ``split`` in the frames' order and reversed (the label stays the original action)."""
    out = {}
    for name, reverse in (("forward", False), ("reversed", True)):
        loader = eval_loader(video_dataset(cfg.data, split, reverse=reverse), cfg.data.eval_batch_size)
        out[name] = score(*predict(model, loader, device, progress, f"{split} {name}"))
    return out


def load_video_model(path: str | Path, device: torch.device, command: str = "leancnn video",
                     need: str = "a video run") -> tuple[nn.Module, VideoConfig, dict]:
    """The model, config and checkpoint of a video run; a run of another kind is refused naming both kinds."""
    run = load_run(path, device, ("video",), command, need)
    return run.model, run.cfg, run.state


def evaluate_checkpoint(path: str | Path, split: str = "test", device: str = "auto",
                        progress: bool | None = None) -> dict:
    dev = resolve_device(device)
    model, cfg, _ = load_video_model(resolve_checkpoint(path), dev, "leancnn video evaluate")
    if progress is None:
        progress = progress_enabled(DistContext())
    return evaluate_video_model(model, cfg, dev, split, progress)


# ----------------------------------------------------------------------------------------- training


def run_fingerprint(cfg: VideoConfig) -> dict:
    return config_fingerprint(cfg, data_identity(cfg))


class VideoSpec(TaskSpec):
    """Clip classification on moving digits (whole causal clips, or sub-clips with the stream state carried)."""

    name, config_cls, kind = "video", VideoConfig, "video"
    commands = "leancnn video evaluate | ensemble | stream | export, latency run"

    def check(self, cfg, world_size):
        return check_video_experiment(cfg, world_size)

    def prepare(self, cfg, ctx, device, model, resuming):
        train_ds = video_dataset(cfg.data, "train", augment=cfg.data.augment, seed=cfg.train.seed)
        val_ds = video_dataset(cfg.data, "val")
        loader = _set_epoch_hook(train_loader(train_ds, cfg.data.batch_size, cfg.train.seed, ctx,
                                              cfg.data.num_workers))
        task = ClassifyTask(nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing), unit="clips",
                            step=sub_clip_step(cfg.train.sub_clip) if cfg.train.sub_clip else None)
        return Prepared(model=model, task=task, train_loader=loader, memory_format=video_memory_format(cfg),
                        val_loader=eval_loader(val_ds, cfg.data.eval_batch_size, cfg.data.num_workers))

    def data_identity(self, cfg, prepared):
        return data_identity(cfg)

    def summarise(self, cfg, prepared, trainer, device, ctx, run_dir):
        return {"model": cfg.model.name, "epochs": cfg.train.epochs, "sub_clip": cfg.train.sub_clip,
                "best_val_acc": trainer.best_acc, "test": evaluate_video_model(prepared.model, cfg, device)}

    def plot_curves(self, history, path, cfg):
        report.plot_curves(history, path, title=f"{cfg.name}: {cfg.model.name}")

    def print_summary(self, summary):
        print(report.format_table(result_rows(summary["test"]), ["test clips", "n", "accuracy", "loss",
                                                                 "errors = reversed action"]))

    def model_from_state(self, cfg, state):
        return create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)

    def input_shape(self, cfg, state):
        return (3, cfg.data.frames, cfg.data.height, cfg.data.width)

    def export_shape(self, cfg, state):
        stream = is_stream_model(self.model_from_state(cfg, state))
        return (3, 1 if stream else cfg.data.frames, cfg.data.height, cfg.data.width)  # a stream step: one frame

    def calibration_inputs(self, cfg, state, batches):
        ds = video_dataset(cfg.data, "train")
        g = torch.Generator().manual_seed(cfg.data.seed + 3)
        idx = torch.randperm(len(ds), generator=g)[:batches * cfg.data.batch_size].tolist()
        return list(torch.stack([ds[i][0] for i in idx]).split(cfg.data.batch_size))

    def evaluate_export(self, cfg, state, model, limit=0):
        ds = video_dataset(cfg.data, "test")
        if 0 < limit < len(ds):
            g = torch.Generator().manual_seed(cfg.data.seed + 2)
            ds = torch.utils.data.Subset(ds, torch.randperm(len(ds), generator=g)[:limit].sort().values.tolist())
        loader = eval_loader(ds, cfg.data.eval_batch_size)
        return {"test": score(*predict(model, loader, torch.device("cpu"), progress_enabled(DistContext()),
                                       "test"))["acc"]}


SPEC = register_task(VideoSpec())


def train_video(cfg: VideoConfig, out: str | Path | None = None, resume: str | Path | dict | None = None,
                callbacks=(), quiet: bool = False, force: bool = False) -> dict:
    """Train ``cfg`` (the lifecycle of :func:`leancnn.tasks.lifecycle.train_task`); the run directory gets what
    an image run gets (config.yaml, fingerprint.json, metrics.jsonl, last.pt/best.pt, curves.png) and a
    summary.json with the test accuracy in the frames' order and reversed. Everything that can fail on bad
    input is checked before a file is written."""
    return train_task(SPEC, cfg, out=out, resume=resume, callbacks=callbacks, quiet=quiet, force=force)


def train_video_cached(cfg: VideoConfig, run_dir: str | Path, quiet: bool = True) -> dict:
    """Reuse a finished run with the same fingerprint, resume an interrupted one, train otherwise."""
    return train_cached_with(train_video, cfg, run_dir, run_fingerprint(cfg), quiet)


def result_rows(results: dict) -> list[list]:
    return [[f"{name} frame order", r["n"], f"{100 * r['acc']:.2f}%", f"{r['loss']:.4f}",
             f"{100 * r['reversed_share_of_errors']:.0f}%"] for name, r in results.items()]


def resolve_video_config(config: str | None, overrides: list[str], resume: str | None
                         ) -> tuple[VideoConfig, dict | None]:
    """The config of ``leancnn video train`` and the checkpoint it resumes (read once; None without one)."""
    return resolve_train_config(VideoConfig, "video", "a video run", config, overrides, resume)


def train_command(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
                  force: bool = False, nproc: int = 1, debug: bool = False) -> int:
    """``leancnn video train``: here, or in ``nproc`` DDP processes after checking everything once."""
    from ..train.distributed import launch
    from .runs import default_run_dir

    out = check_path_arg(out, "-o")
    cfg, state = resolve_video_config(config, overrides, resume)
    if state is not None and out is None:
        out = Path(state["path"]).parent
    check_run_output(out or default_run_dir(cfg), config, resume, data=data_inputs("video", "digits"))
    if nproc < 1:
        raise LeancnnError(f"--nproc-per-node must be >= 1, got {nproc}")
    if nproc == 1 or world_size_from_env() > 1:
        train_video(cfg, out=out, resume=state, force=force)
        return 0
    check_video_experiment(cfg, nproc)
    resolve_device(cfg.train.device)
    out = out or default_run_dir(cfg)
    check_run_dir(Path(out), force, state["path"] if state else None)
    argv = (["--debug"] if debug else []) + ["video", "train", "-o", str(out)]
    argv += (["-c", str(config)] if config else []) + (["--resume", str(resume)] if resume else [])
    argv += (["--force"] if force else []) + list(overrides)
    return launch(nproc, argv)


def write_preview(config: str | None, overrides: list[str], out: str | Path, force: bool = False) -> Path:
    """``leancnn video preview``: a PNG of example clips (an existing file is replaced only with ``force``)."""
    cfg = load_config(config, overrides, cls=VideoConfig)
    report.figure_format(out, "-o")
    check_output(out, [("config file", config), *data_inputs("video", "digits")], "-o")
    check_output_file(out, force, "-o")
    return Path(vdata.save_preview(data_spec(cfg.data), out))


# ----------------------------------------------------------------------------------------- ensembles


@torch.no_grad()
def evaluate_ensemble(paths: list[str | Path], split: str = "test", device: str = "auto",
                      progress: bool | None = None) -> dict:
    """A temporal ensemble (paper §3.4): member ``i`` sees every ``k``-th frame from offset ``i`` (``k`` = the
    number of members, so two half-frame-rate models see interleaved frames), logits averaged before softmax.
    Returns each member's accuracy alone, the ensemble's, and MACs per clip against one full-rate model."""
    if len(paths) < 2:
        raise LeancnnError("an ensemble needs at least two checkpoints")
    dev = resolve_device(device)
    progress = progress_enabled(DistContext()) if progress is None else progress
    members = [load_video_model(resolve_checkpoint(p), dev, "leancnn video ensemble") for p in paths]
    k = len(members)
    base = members[0][1].data
    for (_, cfg, st), p in zip(members, paths):
        if (cfg.data.frames, cfg.data.height, cfg.data.width, cfg.data.seed) != (base.frames, base.height,
                                                                                 base.width, base.seed):
            raise LeancnnError(f"checkpoint '{p}' was trained on other clips than '{paths[0]}' "
                               "(data.frames/height/width/seed differ)")
    logits, labels, rows = [], None, []
    for i, (model, cfg, _) in enumerate(members):
        view = from_dict(VideoDataConfig, {**to_dict(cfg.data), "frame_step": k, "frame_offset": i})
        loader = eval_loader(video_dataset(view, split), cfg.data.eval_batch_size)
        lg, labels = predict(model, loader, dev, progress, f"member {i + 1}")
        logits.append(lg)
        frames = len(range(i, base.frames, k))
        macs = count_macs(model, (3, frames, base.height, base.width))
        rows.append({"checkpoint": str(paths[i]), "offset": i, "frames": frames, "macs": macs,
                     **{key: v for key, v in score(lg, labels).items() if key in ("acc", "loss", "n")}})
    mean = torch.stack(logits).mean(0)
    ens = score(mean, labels)
    full = count_macs(members[0][0], (3, base.frames, base.height, base.width))
    return {"members": rows, "ensemble": {"acc": ens["acc"], "loss": ens["loss"], "n": ens["n"],
                                          "macs": sum(r["macs"] for r in rows)},
            "single_full_rate_macs": full, "frame_step": k}


def ensemble_rows(r: dict) -> list[list]:
    rows = [[f"member {m['offset'] + 1} (frames {m['offset']}::{r['frame_step']})", m["frames"],
             f"{m['macs'] / 1e9:.3f}", f"{100 * m['acc']:.2f}%"] for m in r["members"]]
    rows.append([f"ensemble of {len(r['members'])} (mean logits)", sum(m["frames"] for m in r["members"]),
                 f"{r['ensemble']['macs'] / 1e9:.3f}", f"{100 * r['ensemble']['acc']:.2f}%"])
    return rows


# ----------------------------------------------------------------------------------------- streaming


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """``"HxW"`` -> (H, W); None -> (None, None)."""
    if text is None:
        return None, None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h >= 16 and w >= 16
    except (ValueError, AssertionError):
        raise LeancnnError(f"--size {text!r}: expected HxW with both >= 16, e.g. 172x172") from None
    return h, w


def stream_command(source: str | None, synthetic: str | None, model_arg: str, frames: int = 128,
                   max_frames: int | None = None, every: int = 16, topk: int = 3, chunk: int = 1,
                   size: str | None = None, threads: int | str | None = None, fused: bool = False):
    """``leancnn video stream``: yields the lines to print (a header, one line per report, a footer).
    ``fused``: stream through ``model.fuse_for_inference()`` (the same logits, about 2x faster on the CPU)."""
    if (source is None) == (synthetic is None):
        raise LeancnnError("give either SOURCE (a video file or a folder of frames) or --synthetic [ACTION]")
    for name, v in (("--every", every), ("--topk", topk), ("--chunk", chunk), ("--frames", frames)):
        if v < 1:
            raise LeancnnError(f"{name} must be >= 1, got {v}")
    if max_frames is not None and max_frames < 1:
        raise LeancnnError(f"--max-frames must be >= 1, got {max_frames}")
    from ..threads import apply as apply_threads

    try:
        gov = apply_threads(threads, "--threads")  # auto (None): the machine's free cores, followed per frame
    except ValueError as e:
        raise LeancnnError(str(e)) from None
    gov.start_trial()  # batch-1 steps: keep a second thread only if it is measurably faster
    h, w = parse_size(size)
    model, h, w = load_stream_model(model_arg, h, w, torch.device("cpu"), "leancnn video stream --model")
    labels = list(vdata.ACTIONS) if model.classifier[-1].out_channels == len(vdata.ACTIONS) else None
    name = getattr(model, "model_name", "the model")
    if fused:
        model, name = model.eval().fuse_for_inference(), f"{name} (fused inference form)"
    if synthetic is not None:
        action, it = synthetic_frames(None if synthetic == "random" else synthetic, frames, h, w)
        what = f"synthetic video of '{action}' ({frames} frames, moving-digits test clips back to back)"
    else:
        try:
            info = vdata.probe(source)
            it = vdata.read_frames(source, max_frames=max_frames)
        except ValueError as e:
            raise LeancnnError(str(e)) from None
        what = f"{info['kind']} '{source}' ({info.get('frames') or '?'} frames of {info['height']}x{info['width']})"
    yield f"streaming {what} through {name} at {h}x{w}, {chunk} frame(s) a step; {gov.describe()}"
    lines = []
    try:
        reports = stream(model, it, (h, w), every, topk, labels, on_report=lambda r: lines.append(r), chunk=chunk)
    except ValueError as e:
        raise LeancnnError(str(e)) from None
    for r in reports:
        top = ", ".join(f"{n} {p:.2f}" for n, p in r["top"])
        yield (f"frame {r['frame']:>5}  top-{len(r['top'])}: {top}  |  {r['fps']:.0f} frames/s  "
               f"RSS {r['rss_mib']:.0f} MiB  state {r['state_mib']:.2f} MiB")
    rss = [r["rss_mib"] for r in reports]
    if len(rss) > 1:
        yield (f"resident memory from the first to the last report: {rss[0]:.0f} -> {rss[-1]:.0f} MiB "
               f"({100 * (rss[-1] - rss[0]) / max(rss[0], 1e-9):+.1f}%); the state stays {reports[-1]['state_mib']:.2f} MiB")
    yield f"at the end, {gov.describe()}"


def current_rss() -> int:
    """Resident memory of this process in bytes (Linux /proc; 0 where unreadable)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def synthetic_frames(action: str | None, frames: int, height: int, width: int, seed: int = 0):
    """A long synthetic video: test clips of one action (random when None) back to back, as uint8 RGB frames."""
    lo, hi = vdata.SIDE_RANGE
    if not (lo <= height <= hi and lo <= width <= hi):
        raise LeancnnError(f"--size {height}x{width}: a synthetic moving-digits video is {lo} to {hi} pixels a side "
                           "(HxW)")
    spec = vdata.MovingDigitsSpec(frames=16, height=height, width=width, train=10, val=10, test=max(10, 2 * 10),
                                  seed=seed)
    clips, labels = vdata.load_moving_digits(spec, "test")
    rng = np.random.default_rng(seed)
    if action is None:
        action = vdata.ACTIONS[int(rng.integers(len(vdata.ACTIONS)))]
    if action not in vdata.ACTIONS:
        raise LeancnnError(f"--synthetic: unknown action '{action}'; one of {', '.join(vdata.ACTIONS)}")
    pool = clips[labels == vdata.ACTIONS.index(action)]
    out, i = [], 0
    while len(out) < frames:
        for f in pool[i % len(pool)]:
            out.append(np.repeat(f[:, :, None], 3, axis=2))
        i += 1
    return action, iter(out[:frames])


def stream(model: MoViNet, frames, size: tuple[int, int], every: int = 16, topk: int = 3,
           labels: list[str] | None = None, on_report: Callable[[dict], None] | None = None,
           chunk: int = 1) -> list[dict]:
    """Feed ``frames`` (uint8 ``[H, W, 3]`` arrays) ``chunk`` at a time through the stream model, reporting every
    ``every`` frames: running top-k, frames/s, resident memory. Returns the reports."""
    if not is_stream_model(model):
        raise LeancnnError("streaming needs a stream model (movinet_aX_stream)")
    h, w = size
    p = next(model.parameters())
    state, seen, reports, start, buf = None, 0, [], time.perf_counter(), []

    def report_now(logits):
        probs = logits.softmax(1)[0]
        top = probs.topk(min(topk, probs.numel()))
        names = [labels[i] if labels and i < len(labels) else str(i) for i in top.indices.tolist()]
        rec = {"frame": seen, "top": list(zip(names, [round(v, 4) for v in top.values.tolist()])),
               "fps": seen / max(time.perf_counter() - start, 1e-9), "rss_mib": current_rss() / 2**20,
               "state_mib": sum(t.numel() * t.element_size() for t in state.values()) / 2**20}
        reports.append(rec)
        if on_report:
            on_report(rec)

    model.eval()
    last = time.perf_counter()
    with torch.inference_mode():
        for frame in frames:
            t = torch.tensor(np.asarray(frame), device=p.device).permute(2, 0, 1).float().div_(255)
            if t.shape[1:] != (h, w):
                t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            buf.append((t - 0.5) / 0.5)
            if len(buf) < chunk:
                continue
            clip = torch.stack(buf, 1)[None].to(p.dtype)
            buf = []
            threads.tick()  # under threads=auto: follow the machine's load (cheap between re-checks)
            logits, state = model.stream_step(clip, state)
            now = time.perf_counter()
            threads.observe(now - last)  # a whole step (frames in, resize, model) for a thread trial, if one runs
            last = now
            before = seen
            seen += clip.shape[2]
            if seen // every > before // every:
                report_now(logits)
        if buf:
            logits, state = model.stream_step(torch.stack(buf, 1)[None].to(p.dtype), state)
            seen += len(buf)
        if state is None:
            raise LeancnnError("the video has no frames")
        if not reports or reports[-1]["frame"] != seen:
            report_now(logits)
    return reports


# ----------------------------------------------------------------------------------------- export


def export_checkpoint(path: str | Path, out: str | Path, height: int | None = None, width: int | None = None,
                      frames: int = 1, check_frames: int = 8, force: bool = False) -> dict:
    """Export a stream run's (or a registered stream model's, random weights) stream step to ONNX and check it:
    onnxruntime, frame by frame over ``check_frames`` frames, against PyTorch's stream step. An existing ``out``
    is replaced only with ``force``; ``out`` is never the run, its checkpoint, nor inside or holding them."""
    from ..export import OnnxStream, export_stream_step

    out = check_path_arg(out, "-o")
    check_output(out, checkpoint_inputs(path, "model") if Path(str(path)).exists() else [], "-o")
    if out.suffix != ".onnx":
        raise LeancnnError(f"-o must name an .onnx file, got '{out}'")
    check_output_file(out, force, "-o")
    model, h, w = load_stream_model(path, height, width, torch.device("cpu"), "leancnn video export")
    try:
        export_stream_step(model, out, h, w, batch=1, frames=frames)
    except ValueError as e:
        raise LeancnnError(str(e)) from None
    runner = OnnxStream(out)
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(1, 3, check_frames, h, w, generator=g)
    state, ort_state, diff = None, runner.init_state(), 0.0
    with torch.no_grad():
        for t in range(0, check_frames, frames):
            ref, state = model.stream_step(clip[:, :, t:t + frames], state)
            got, ort_state = runner.step(clip[:, :, t:t + frames].numpy(), ort_state)
            diff = max(diff, float(np.abs(got - ref.numpy()).max()))
    return {"path": str(out), "height": h, "width": w, "frames_per_step": frames, "max_abs_diff": diff,
            "checked_frames": check_frames, "bytes": out.stat().st_size}


def load_stream_model(path_or_name: str, height: int | None, width: int | None, device: torch.device,
                      command: str = "leancnn video stream") -> tuple[MoViNet, int, int]:
    """A trained stream run (checkpoint or run directory) or a registered stream model with random weights,
    and the frame size to use (the run's training size unless given). A run or model of another kind (a
    classifier, a registration run) is refused in one line naming both kinds."""
    need = "a video stream model (a stream run, or a registered movinet_aX_stream)"
    p = Path(str(path_or_name))
    if p.exists():
        model, cfg, _ = load_video_model(resolve_checkpoint(p), device, command, need)
        h, w = height or cfg.data.height, width or cfg.data.width
    else:
        try:
            entry = get_model_entry(str(path_or_name))
        except LeancnnError:
            raise LeancnnError(f"'{path_or_name}' is neither a checkpoint/run directory nor a registered model")
        if len(entry.input_size) != 4:  # (C, H, W): an image model
            raise LeancnnError(f"'{entry.name}' is a registered classifier (an image model, input "
                               f"{'x'.join(map(str, entry.input_size))}), but `{command}` needs {need}")
        model = create_model(entry.name).to(device).eval()
        h, w = height or entry.input_size[2], width or entry.input_size[3]
    if not is_stream_model(model):
        raise LeancnnError(f"'{path_or_name}' is a video clip model, not a stream model, but `{command}` needs "
                           f"{need}: only stream models keep a state frame by frame")
    return model, h, w


__all__ = ["FrameSubset", "check_video_experiment", "ensemble_rows", "parse_size", "stream_command",
           "train_command", "write_preview", "evaluate_checkpoint", "evaluate_ensemble",
           "evaluate_video_model", "export_checkpoint", "load_stream_model", "load_video_model", "stream",
           "sub_clip_step", "synthetic_frames", "train_video", "train_video_cached", "video_dataset"]
