"""Typed experiment configs loaded from YAML.

Every section is a dataclass; :func:`from_dict` checks each key and type against it, so an unknown key or a
wrong type fails with the key path and the allowed keys (or values). Command-line overrides use
``key.sub=value`` (the value is parsed as YAML: ``3``, ``0.1``, ``true``, ``[mnist, syn]``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")

SEED_MAX = 2**32  # numpy's seeds are 32-bit


def rule(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, runtime: bool = False,
         resumable: bool = False, **checks: Any) -> Any:
    """A dataclass field with constraints, checked by :func:`from_dict` after the type (see :func:`_check_value`).

    Numbers (or, for a list of numbers, each item): ``ge``, ``gt``, ``le``, ``lt``. Lists: ``min_len``,
    ``max_len``, ``unique``. Strings: ``nonempty``, ``name`` (a plain name that stays one path component).

    ``runtime``: the key changes how a run executes but not what it computes (threads, workers, the run's name):
    run fingerprints leave it out and ``--resume`` may change it. ``resumable``: it may change on ``--resume``
    (``train.epochs`` to extend a run, the device) but is part of the fingerprint. See :func:`runtime_keys`."""
    unknown = set(checks) - {"ge", "gt", "le", "lt", "min_len", "max_len", "unique", "nonempty", "name"}
    if unknown:
        raise TypeError(f"unknown rule(s) {sorted(unknown)}")  # a bug in a schema, not in user input
    meta = {"rules": checks, "runtime": runtime, "resumable": resumable}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _flagged_keys(cls: type, flag: str) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += [f"{f.name}.{k}" for k in _flagged_keys(hints[f.name], flag)]
        elif f.metadata.get(flag):
            out.append(f.name)
    return tuple(out)


def runtime_keys(cls: type) -> tuple[str, ...]:
    """The dotted keys of config class ``cls`` marked ``rule(..., runtime=True)``, in field order."""
    return _flagged_keys(cls, "runtime")


def resumable_keys(cls: type) -> tuple[str, ...]:
    """The keys that may differ between a checkpoint's config and the one that resumes it: the runtime keys and
    those marked ``rule(..., resumable=True)``."""
    return (*runtime_keys(cls), *_flagged_keys(cls, "resumable"))


_NOT_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _check_value(value: Any, rules: dict, path: str) -> None:
    """Raise a :class:`ConfigError` naming ``path`` and the allowed range when ``value`` breaks a rule."""
    if not rules:
        return
    if isinstance(value, list):
        n = len(value)
        lo, hi = rules.get("min_len"), rules.get("max_len")
        if lo is not None and lo == hi and n != lo:
            raise ConfigError(f"config key '{path}' needs exactly {lo} item(s), got {n}: {value!r}")
        if lo is not None and n < lo:
            raise ConfigError(f"config key '{path}' must not be empty" if lo == 1 else
                              f"config key '{path}' needs at least {lo} items, got {n}")
        if hi is not None and n > hi:
            raise ConfigError(f"config key '{path}' takes at most {hi} items, got {n}")
        if rules.get("unique"):
            seen = set()
            for v in value:
                if v in seen:
                    raise ConfigError(f"config key '{path}' lists {v!r} more than once: {value!r}")
                seen.add(v)
        for i, v in enumerate(value):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                _check_number(v, rules, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, rules, path)
    elif isinstance(value, str):
        if rules.get("nonempty") and not value.strip():
            raise ConfigError(f"config key '{path}' must not be empty")
        if rules.get("name") and (_NOT_IN_NAME.search(value) or value.strip() in ("", ".", "..")):
            raise ConfigError(f"config key '{path}' must be a plain name that stays one directory level (no '/', "
                              f"'\\' or control characters, not '.' or '..'), got {value!r}")


def _check_number(v: float, rules: dict, path: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"config key '{path}' must be a finite number, got {v}")
    ge, gt, le, lt = (rules.get(k) for k in ("ge", "gt", "le", "lt"))
    lower = f"[{_fmt(ge)}" if ge is not None else f"({_fmt(gt)}" if gt is not None else "(-inf"
    upper = f"{_fmt(le)}]" if le is not None else f"{_fmt(lt)})" if lt is not None else "inf)"
    if ((ge is not None and v < ge) or (gt is not None and v <= gt) or (le is not None and v > le)
            or (lt is not None and v >= lt)):
        if upper == "inf)":
            allowed = f">= {_fmt(ge)}" if ge is not None else f"> {_fmt(gt)}"
            raise ConfigError(f"config key '{path}' must be {allowed}, got {_fmt(v)}")
        raise ConfigError(f"config key '{path}' must be in {lower}, {upper}, got {_fmt(v)}")


def _check_warmup(schedule: Any, train: Any) -> None:
    if schedule.warmup_epochs > train.epochs:
        raise ConfigError(f"config key 'schedule.warmup_epochs' ({_fmt(schedule.warmup_epochs)}) must "
                          f"not exceed 'train.epochs' ({train.epochs})")


@dataclass
class MixStyleConfig:
    after: list[str] = rule(factory=list, unique=True)  # module names to apply MixStyle after; [] = no MixStyle
    p: float = rule(0.5, ge=0.0, le=1.0)  # probability of mixing, per batch and insertion point
    alpha: float = rule(0.1, gt=0.0)  # lambda ~ Beta(alpha, alpha)
    mix: Literal["random", "crossdomain"] = "random"  # crossdomain needs data.sampler=domain


@dataclass
class ModelConfig:
    name: str = rule("resnet20", nonempty=True)
    num_classes: int = rule(10, ge=1)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the model builder
    mixstyle: MixStyleConfig = field(default_factory=MixStyleConfig)
    # a structurally pruned model (written by `leancnn prune`): {group root layer: kept output channels}; the
    # registered model is built and pruned to these widths before its weights are loaded
    pruned: dict[str, Any] = field(default_factory=dict)
    # initial weights: a checkpoint (or run directory) whose model weights start this run (fine-tuning); "" = none
    init: str = ""


@dataclass
class DataConfig:
    name: Literal["digits"] = "digits"
    domains: list[str] = rule(factory=lambda: ["mnist"], min_len=1, unique=True)  # trained on (train/val splits)
    test_domains: list[str] = rule(factory=list, unique=True)  # held-out domains; [] = test split of `domains`
    test_split: Literal["all", "test"] = "all"  # split of test_domains tested on ("all" = the whole domain)
    split_seed: int = rule(0, ge=0, lt=SEED_MAX)
    augment: bool = False
    batch_size: int = rule(128, ge=1)  # global batch: divided between DDP ranks
    eval_batch_size: int = rule(512, ge=1, runtime=True)
    num_workers: int = rule(0, ge=0, runtime=True)
    limit_train: int = rule(0, ge=0)  # >0: use only this many training samples (a fixed random subset); quick runs
    limit_eval: int = rule(0, ge=0)  # >0: same for the val and test sets
    sampler: Literal["random", "domain"] = "random"  # domain: batches of domains_per_batch domains x k samples
    domains_per_batch: int = rule(2, ge=1)  # for sampler=domain; 2 gives the [A | B] layout of crossdomain MixStyle
    labels_per_class: int = rule(0, ge=0)  # >0: keep only this many labelled images per class and domain (SSDG)

    def _check(self) -> None:
        overlap = [d for d in self.test_domains if d in self.domains]
        if overlap:
            raise ConfigError(f"config key 'data.test_domains' repeats training domain(s) {', '.join(overlap)} of "
                              "'data.domains'; held-out domains must differ ([] tests on the training domains)")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = rule(0.05, gt=0.0)
    momentum: float = rule(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = rule(5e-4, ge=0.0)
    betas: list[float] = rule(factory=lambda: [0.9, 0.999], min_len=2, max_len=2, ge=0.0, lt=1.0)

    def _check(self) -> None:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ConfigError("config key 'optim.nesterov' is true but 'optim.momentum' is 0: Nesterov needs momentum")


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = rule(0.0, ge=0.0)  # linear warm-up from warmup_start * lr, per step
    warmup_start: float = rule(0.1, ge=0.0, le=1.0)
    milestones: list[int] = rule(factory=list, ge=1, unique=True)  # multistep: epochs at which lr *= gamma
    gamma: float = rule(0.1, gt=0.0)
    min_lr: float = rule(0.0, ge=0.0)  # cosine floor

    def _check(self) -> None:
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("config key 'schedule.milestones' must list at least one epoch for the multistep "
                              "schedule")


@dataclass
class LossConfig:
    name: Literal["ce", "bias"] = "ce"
    label_smoothing: float = rule(0.0, ge=0.0, lt=1.0)
    # Bias Loss (name: bias); see docs/bias-loss.md
    alpha: float = 0.3
    beta: float = 0.3
    normalisation: Literal["local", "global"] = "local"  # local = the paper's per-batch min-max
    weight_form: Literal["paper", "legacy"] = "paper"  # legacy = the reference code before 2022
    low_threshold: float = rule(0.1, ge=0.0, le=1.0)  # v_hat below this counts as low-diversity in the diagnostics
    feature_layer: str = ""  # features from this module; "" = the model's forward_features


@dataclass
class SemiConfig:
    """FixMatch-style training with unlabelled data (docs/mixstyle.md): ``ssdg`` uses the training images left
    out by ``data.labels_per_class`` as unlabelled data; ``uda`` uses the train split of ``unlabeled_domains``."""

    mode: Literal["off", "ssdg", "uda"] = "off"
    unlabeled_domains: list[str] = rule(factory=list, unique=True)  # uda; [] = data.test_domains
    threshold: float = rule(0.95, ge=0.0, le=1.0)  # pseudo-label confidence threshold
    weight_u: float = rule(1.0, ge=0.0)  # weight of the unlabelled loss
    unlabeled_batch_size: int = rule(0, ge=0)  # 0 = data.batch_size (equal halves for labelled <-> unlabelled mixing)
    mixstyle_labeled: bool = False  # also apply MixStyle (random) on the supervised labelled batch
    strong_augment: bool = True  # strong augmentation of the batch the unlabelled loss is computed on


@dataclass
class TrainConfig:
    epochs: int = rule(10, ge=1, resumable=True)
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    grad_clip: float = rule(0.0, ge=0.0)  # max global grad norm; 0 = off
    amp: bool = False  # mixed precision, CUDA only (ignored with a warning on CPU)
    device: Literal["auto", "cpu", "cuda"] = rule("auto", resumable=True)
    # torch intra-op threads: auto follows the machine (its free cores, re-checked as the run goes; leancnn/threads.py),
    # N >= 1 fixes N (bit-exact repeats need a fixed N); 0 reads as auto (earlier versions' "torch's default")
    threads: Union[int, Literal["auto"]] = rule("auto", runtime=True)
    deterministic: bool = True  # deterministic kernels where the backend offers them
    # layout of the model and of every batch: auto = channels-last for conv nets on the CPU, the faster of the
    # two (timed) on CUDA; results differ between layouts only by float rounding (docs/training.md)
    memory_format: Literal["auto", "channels_last", "contiguous"] = rule("auto", runtime=True)
    # torch.compile the training step (opt-in: compile time vs steady-state gain measured)
    compile: bool = rule(False, runtime=True)

    def _check(self) -> None:
        if isinstance(self.threads, int) and self.threads < 0:
            raise ConfigError(f"config key 'train.threads' must be 'auto' or a whole number >= 1 (0 reads as auto), "
                              f"got {self.threads}")


@dataclass
class ExperimentConfig:
    # one path level: the run directory is <output_dir>/<name>-<time>
    name: str = rule("experiment", name=True, runtime=True)
    output_dir: str = rule("runs", nonempty=True, runtime=True)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)

    def _check(self) -> None:
        """Checks across sections that need no data and no model (those are in ``tasks/runs.py``)."""
        _check_warmup(self.schedule, self.train)
        if self.schedule.name == "cosine" and self.schedule.min_lr > self.optim.lr:
            raise ConfigError(f"config key 'schedule.min_lr' ({_fmt(self.schedule.min_lr)}) must not exceed "
                              f"'optim.lr' ({_fmt(self.optim.lr)})")
        ms, data = self.model.mixstyle, self.data
        if ms.after and ms.mix == "crossdomain" and self.semi.mode == "off" and (
                data.sampler != "domain" or data.domains_per_batch != 2):
            raise ConfigError(
                "model.mixstyle.mix=crossdomain pairs the two halves of a batch, so the batches must be laid out "
                "[domain A | domain B]: set data.sampler=domain and data.domains_per_batch=2 "
                f"(got data.sampler={data.sampler}, data.domains_per_batch={data.domains_per_batch})")
        if data.sampler == "domain":
            if len(data.domains) < 2:
                raise ConfigError("config key 'data.sampler' is 'domain' but 'data.domains' has only one domain: "
                                  "the domain-balanced sampler needs at least two")
            if data.domains_per_batch > len(data.domains):
                raise ConfigError(f"config key 'data.domains_per_batch' is {data.domains_per_batch} but "
                                  f"'data.domains' has only {len(data.domains)} domains")
            if data.batch_size % data.domains_per_batch:
                raise ConfigError(f"config key 'data.batch_size' ({data.batch_size}) must be a multiple of "
                                  f"data.domains_per_batch={data.domains_per_batch} with data.sampler=domain")
        semi = self.semi
        if semi.mode == "off":
            return
        if self.loss.name != "ce":
            raise ConfigError("semi-supervised training (semi.mode) uses cross-entropy; set loss.name=ce")
        if semi.mode == "ssdg" and data.labels_per_class <= 0:
            raise ConfigError("semi.mode=ssdg needs data.labels_per_class > 0 (the labelled images per class and "
                              "domain; the rest of the training split is the unlabelled data)")
        if semi.mode == "uda" and not (semi.unlabeled_domains or data.test_domains):
            raise ConfigError("semi.mode=uda needs unlabelled target domains: set semi.unlabeled_domains or "
                              "data.test_domains")
        u_batch = semi.unlabeled_batch_size or data.batch_size
        if ms.after and u_batch != data.batch_size:
            raise ConfigError(
                f"semi.unlabeled_batch_size={u_batch} differs from data.batch_size={data.batch_size}: "
                "labelled <-> unlabelled crossdomain MixStyle needs two equal halves; set it to 0")


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
        _check_warmup(self.schedule, self.train)
        used = -(-(self.data.frames - self.data.frame_offset) // self.data.frame_step)
        if self.train.sub_clip > used:
            raise ConfigError(f"config key 'train.sub_clip' ({self.train.sub_clip}) exceeds the {used} frames a "
                              "clip has after data.frame_step/frame_offset")


@dataclass
class LatencyModelConfig:
    """One model of a latency grid: exactly one of ``name`` (a registered model, random weights),
    ``checkpoint`` (a training run directory or ``.pt``) or ``onnx`` (an ``.onnx`` file: onnxruntime only)."""

    name: str | None = None
    checkpoint: str | None = None
    onnx: str | None = None
    # input shape without the batch: (C, H, W) for an image classifier, (C, T, H, W) for a video model; for a
    # stream MoViNet T is the frames fed per stream step. Default: the registry's input size (a stream model: one
    # frame per step at the registry's H x W), a run's training size, the ONNX file's own input shape.
    input: list[int] | None = rule(None, min_len=3, max_len=4, ge=1)
    label: str | None = rule(None, nonempty=True)  # the name in tables (default: the model's name / file stem)
    num_classes: int | None = rule(None, ge=1)  # registered models: default the registry's
    # a stream MoViNet: "stream_step" times one step with the state carried (default); "clip" times the whole
    # input clip as one causal pass
    mode: Literal["stream_step", "clip"] = "stream_step"


@dataclass
class LatencyLoadConfig:
    """One contention level (``leancnn.loadspec.LoadSpec``): ``workers`` CPU hogs busy ``percent`` % of the
    time, optionally pinned (a list of CPU ids, or "spread": one CPU each), by stress-ng or the Python fallback."""

    workers: int = 0
    percent: int = 100
    pin: list[int] | str | None = None
    kind: Literal["auto", "stress-ng", "python"] = "auto"


@dataclass
class LatencyGridConfig:
    """The conditions: every load level (and every CPU quota) x threads x backend x batch size."""

    loads: list[LatencyLoadConfig] = field(default_factory=lambda: [LatencyLoadConfig(0), LatencyLoadConfig(1)])
    # CPU-quota conditions (cores, e.g. 0.5): the measuring process under a cgroup bandwidth limit, no load;
    # skipped with a note where neither cgroup v1 nor v2 is writable
    quotas: list[float] = rule(factory=list, gt=0.0, unique=True)
    threads: list[int] = rule(factory=lambda: [1], ge=1, min_len=1, unique=True)
    backends: list[Literal["eager", "compile", "onnxruntime"]] = rule(factory=lambda: ["eager"], min_len=1,
                                                                     unique=True)
    batch_sizes: list[int] = rule(factory=lambda: [1], ge=1, min_len=1, unique=True)


@dataclass
class LatencyProtocolConfig:
    """How each condition is measured (docs/latency.md)."""

    warmup: int = rule(10, ge=0)  # untimed inferences per model per condition (torch.compile: after compiling)
    samples: int = rule(200, ge=2)  # timed inferences per model per condition
    block: int = rule(10, ge=1)  # consecutive inferences of one model in a block; models in random order per block
    # time budget of a condition's timed blocks (warm-up and compilation excluded): stop after the current block
    condition_seconds: float = rule(120.0, gt=0.0)
    settle_seconds: float = rule(1.0, ge=0.0)  # wait after a load starts, before the warm-up
    seed: int = rule(0, ge=0, lt=SEED_MAX)  # model order in the blocks
    memory_format: Literal["channels_last", "contiguous"] = "channels_last"  # 4-D image inputs, eager/compile
    ort_spinning: bool = True  # onnxruntime's intra-op spinning (its default); false = session.intra_op.allow_spinning 0


@dataclass
class LatencyAnalysisConfig:
    quantiles: list[float] = rule(factory=lambda: [0.5, 0.99], gt=0.0, lt=1.0, min_len=1, unique=True)
    alpha: float = rule(0.05, gt=0.0, lt=1.0)  # family-wise error rate over all pairwise tests (Holm)
    margin: float = rule(0.02, ge=0.0, lt=1.0)  # relative tie band: closer than this is "tie"
    recommend_quantile: float = rule(0.99, gt=0.0, lt=1.0)
    recommend_rule: Literal["minimax", "mean_rank", "regret"] = "minimax"


@dataclass
class LatencyConfig:
    """``leancnn latency run``: models x conditions, measured with real co-running load (docs/latency.md)."""

    name: str = rule("latency", name=True)
    output_dir: str = rule("runs", nonempty=True)
    device: Literal["cpu", "cuda"] = "cpu"  # where the models run; the load is always on the CPU
    models: list[LatencyModelConfig] = rule(factory=lambda: [LatencyModelConfig(name="resnet20"),
                                                             LatencyModelConfig(name="mobilenetv3_small")],
                                            min_len=1)
    grid: LatencyGridConfig = field(default_factory=LatencyGridConfig)
    protocol: LatencyProtocolConfig = field(default_factory=LatencyProtocolConfig)
    analysis: LatencyAnalysisConfig = field(default_factory=LatencyAnalysisConfig)

    def _check(self) -> None:
        if not self.grid.loads and not self.grid.quotas:
            raise ConfigError("config key 'grid': no conditions (grid.loads and grid.quotas are both empty); give at "
                              "least one load level, e.g. grid.loads=[{workers: 0}]")
        from .loadspec import LoadSpec
        from .threads import allowed_cpus

        cores = len(allowed_cpus())
        for i, q in enumerate(self.grid.quotas):
            if q > cores:  # a bandwidth limit above the CPUs the process may use limits nothing
                raise ConfigError(f"config key 'grid.quotas[{i}]' = {q:g} is above the {cores} CPU(s) this process may "
                                  f"run on (os.sched_getaffinity); allowed: (0, {cores}] cores")
        for i, m in enumerate(self.models):
            given = [k for k in ("name", "checkpoint", "onnx") if getattr(m, k) is not None]
            if len(given) != 1:
                raise ConfigError(f"config key 'models[{i}]' needs exactly one of name (a registered model), "
                                  f"checkpoint (a run directory or .pt) or onnx (an .onnx file); got {given or 'none'}")
        for i, load in enumerate(self.grid.loads):
            try:
                LoadSpec(**dataclasses.asdict(load))
            except ConfigError as e:
                raise ConfigError(str(e).replace("config key 'load.", f"config key 'grid.loads[{i}].")) from None
        labels = [m.label for m in self.models if m.label]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"config key 'models': label(s) {dup} used more than once")


@dataclass
class PruneSearchConfig:
    """The evolutionary search of the blended criterion (docs/pruning.md)."""

    method: Literal["none", "ea"] = "none"  # none: the criteria blended with equal weights (one criterion: itself)
    population: int = rule(12, ge=2)
    generations: int = rule(8, ge=1)
    mutation_sigma: float = rule(0.2, gt=0.0)
    crossover: Literal["blend", "uniform"] = "blend"
    crossover_rate: float = rule(0.9, ge=0.0, le=1.0)
    elitism: int = rule(2, ge=0)
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    workers: int = rule(1, ge=1)  # fitness evaluations in parallel processes (fork)
    buckets: int = rule(1, ge=1)  # 1: one weight vector for the network; n: one per depth bucket
    val_images: int = rule(1000, ge=10)  # validation images per fitness evaluation (the validation split)
    bn_batches: int = rule(10, ge=1)  # training batches that recalibrate BatchNorm before each evaluation

    def _check(self) -> None:
        if self.elitism >= self.population:
            raise ConfigError(f"config key 'search.elitism' ({self.elitism}) must be smaller than "
                              f"'search.population' ({self.population})")


@dataclass
class PruneConfig:
    """``leancnn prune``: structural pruning of a trained classifier to a MAC target with a single or blended
    criterion, optionally searched, then fine-tuned (docs/pruning.md)."""

    name: str = rule("prune", name=True)
    target_macs: float = rule(0.5, gt=0.0, lt=1.0)  # fraction of the MACs kept
    criteria: list[str] = rule(factory=lambda: ["l1"], min_len=1, unique=True)  # one: that criterion; more: blended
    normalize: Literal["rank", "scale", "zscore"] = "rank"  # how each criterion's scores are put on one scale
    correlation: Literal["spearman", "kendall"] = "spearman"
    cluster_threshold: float = rule(0.9, gt=0.0, le=1.0)  # criteria with rank correlation >= this share a cluster
    linkage: Literal["single", "complete", "average", "weighted"] = "average"
    candidates_per_cluster: int = rule(1, ge=1)  # blending candidates taken from each cluster
    global_pruning: bool = False  # one threshold over all groups instead of the same ratio in each
    round_to: int = rule(0, ge=0)  # keep channel counts multiples of this (0: no rounding)
    calib_batches: int = rule(4, ge=1)  # batches the data-driven criteria see
    search: PruneSearchConfig = field(default_factory=PruneSearchConfig)
    finetune_epochs: int = rule(0, ge=0)  # 0: no fine-tuning
    finetune_lr: float = rule(0.01, gt=0.0)
    finetune_limit_train: int = rule(0, ge=0)  # training images for fine-tuning (0: the source run's setting)
    seed: int = rule(0, ge=0, lt=SEED_MAX)


@dataclass
class RegisterDataConfig:
    """A paired NIfTI folder (docs/registration.md) and how it is split, sampled and resized for the network."""

    root: str = ""  # the paired folder (moving_images/, fixed_images/, moving_labels/, fixed_labels/)
    normalise: Literal["minmax", "zscore", "none"] = "minmax"  # per image
    nan_policy: Literal["error", "zero"] = "error"  # non-finite voxels: refuse the pair, or set them to 0
    # how the moving volume sits on the fixed grid before registration: centre = centres aligned, mm kept (header
    # spacings); corners = label-reg's corner-to-corner resize (stretches the moving volume to the fixed extent)
    initial: Literal["centre", "corners"] = "centre"
    folds: int = rule(4, ge=2)  # k of the k-fold split by pair (with fold >= 0)
    fold: int = rule(-1, ge=-1)  # -1: every pair trains (minus val_pairs); i >= 0: fold i is held out as the test set
    val_pairs: int = rule(4, ge=0)  # training pairs held out for the per-epoch validation Dice (seeded); 0 = none
    split_seed: int = rule(0, ge=0, lt=SEED_MAX)
    scale: float = rule(0.5, gt=0.0, le=1.0)  # the network's grid = round(scale * fixed shape); the DDF is upsampled
    augment_scale: float = rule(0.1, ge=0.0, lt=1.0)  # random affine augmentation (label-reg: 0.1); 0 = off
    batch_size: int = rule(4, ge=1)
    num_workers: int = rule(0, ge=0, runtime=True)
    # keys of earlier versions, accepted and dropped when read (older checkpoints and configs hold them)
    RETIRED: ClassVar[tuple[str, ...]] = ("eval_batch_size",)  # evaluation registers one pair at a time


@dataclass
class RegisterModelConfig:
    kind: Literal["local", "global", "composite"] = "local"
    channels: list[int] = rule(factory=lambda: [8, 16, 32, 64], min_len=1, ge=1)  # label-reg: 32, 64, 128, 256
    global_channels: list[int] = rule(factory=lambda: [4, 8, 16, 32], min_len=1, ge=1)  # composite's affine part
    ddf_levels: list[int] = rule(factory=list, ge=0, unique=True)  # local: [] = every level (label-reg)
    bn_mode: Literal["batch", "running"] = "batch"  # batch: batch statistics at inference too (label-reg)


@dataclass
class RegisterLossConfig:
    label: Literal["dice", "cross_entropy"] = "dice"  # multi-scale soft Dice (label-reg) or label cross-entropy
    sigmas: list[float] = rule(factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, 16.0], min_len=1, ge=0.0)  # voxels of the net grid
    regulariser: Literal["bending", "gradient_l2", "gradient_l1"] = "bending"
    weight: float = rule(0.5, ge=0.0)  # label-reg: 0.5 (bending)


@dataclass
class RegisterOptimConfig(OptimConfig):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = rule(3e-4, gt=0.0)  # label-reg: Adam 1e-5 for 10k steps at full width; small nets train faster
    weight_decay: float = rule(0.0, ge=0.0)
    # lr multiplier of the affine head (global, composite): its zero-initialised linear layer flattens thousands of
    # features, so a plain Adam step moves all 12 affine numbers by lr x that many at once (diverges at 1e-3)
    affine_lr_scale: float = rule(0.01, gt=0.0, le=1.0)


@dataclass
class RegisterScheduleConfig(ScheduleConfig):
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = rule(1.0, ge=0.0)


@dataclass
class RegisterTrainConfig(TrainConfig):
    # one epoch = one pass over the training pairs (one label drawn per pair)
    epochs: int = rule(100, ge=1, resumable=True)
    memory_format: Literal["auto", "channels_last", "contiguous"] = rule("contiguous", runtime=True)  # 3-D nets


@dataclass
class RegisterConfig:
    """``leancnn register train``: label-driven weakly-supervised registration (docs/registration.md)."""

    name: str = rule("register", name=True, runtime=True)
    output_dir: str = rule("runs", nonempty=True, runtime=True)
    model: RegisterModelConfig = field(default_factory=RegisterModelConfig)
    data: RegisterDataConfig = field(default_factory=RegisterDataConfig)
    loss: RegisterLossConfig = field(default_factory=RegisterLossConfig)
    optim: RegisterOptimConfig = field(default_factory=RegisterOptimConfig)
    schedule: RegisterScheduleConfig = field(default_factory=RegisterScheduleConfig)
    train: RegisterTrainConfig = field(default_factory=RegisterTrainConfig)

    def _check(self) -> None:
        _check_warmup(self.schedule, self.train)
        if self.data.fold >= self.data.folds:
            raise ConfigError(f"config key 'data.fold' ({self.data.fold}) must be below 'data.folds' "
                              f"({self.data.folds}), or -1 for no test fold")
        if self.model.ddf_levels and max(self.model.ddf_levels) > len(self.model.channels):
            raise ConfigError(f"config key 'model.ddf_levels' {self.model.ddf_levels} goes below the bottom level "
                              f"{len(self.model.channels)} of model.channels {self.model.channels}")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (mappings of free keys, like ``model.kwargs``, stay values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("model.kwargs", "model.pruned"):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: Any, new: Any, ignore: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every key that differs between two configs, except ``ignore``."""
    a, b = flatten(to_dict(old) if not isinstance(old, dict) else old), flatten(
        to_dict(new) if not isinstance(new, dict) else new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, Sequence):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{path}': {value!r} is not allowed; allowed values: "
                              + ", ".join(str(c) for c in choices))
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}': expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}': expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}': expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in a schema, not in user input


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, checking every key and type."""
    where = f"'{path}'" if path else "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            if key in getattr(cls, "RETIRED", ()):
                continue  # a key of an earlier version: accepted and dropped
            raise ConfigError(f"unknown config key {key_path!r}; allowed keys at {where}: " + ", ".join(fields))
        kwargs[key] = _convert(value, hints[key], key_path)
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults too: a schema's defaults must pass its own rules
        _check_value(getattr(obj, name), f.metadata.get("rules", {}), f"{path}.{name}" if path else name)
    check = getattr(obj, "_check", None)
    if check is not None:
        check()
    return obj


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def derive(cfg: T, changes: dict[str, Any]) -> T:
    """A new config of ``cfg``'s class with the dotted keys of ``changes`` set, validated as a loaded config is
    (an unknown key or a value out of range is a :class:`ConfigError` naming the key). ``cfg`` is unchanged: the
    one way a task derives a config from another (no string overrides, no dict surgery)."""
    import copy

    raw = to_dict(cfg)
    for key, value in changes.items():
        node, parts = raw, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r} for {type(cfg).__name__}")
        node[parts[-1]] = copy.deepcopy(value)
    return from_dict(type(cfg), raw)


# ----------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``5E+4`` as floats (YAML 1.2; PyYAML's 1.1 rule needs a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> (["optim", "lr"], 0.1)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}': empty key in '{key}'")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return parts, value


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Set each ``key.sub=value`` into the raw mapping (validation happens in :func:`from_dict`)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{'.'.join(parts[:i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), cls: type[T] = ExperimentConfig) -> T:
    """Load a YAML experiment file (or the defaults when ``path`` is None), apply overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(raw, overrides))


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
