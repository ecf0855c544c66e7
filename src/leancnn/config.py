"""Typed experiment configs loaded from YAML.

Every section is a dataclass; :func:`from_dict` checks each key and type against it, so an unknown key or a
wrong type fails with the key path and the allowed keys (or values). Command-line overrides use
``key.sub=value`` (the value is parsed as YAML: ``3``, ``0.1``, ``true``, ``[mnist, syn]``).

This module is the rule engine (:func:`rule`, :func:`from_dict`, :func:`derive`, :func:`load_config`) and the
sections every training task shares (:class:`OptimConfig`, :class:`ScheduleConfig`, :class:`TrainConfig`), with
the image classifiers' :class:`ExperimentConfig`. Every other schema lives beside its task:
``leancnn.tasks.video.VideoConfig``, ``leancnn.tasks.register.RegisterConfig``, ``leancnn.tasks.prune.PruneConfig``
and ``leancnn.latency.config.LatencyConfig`` (the latency library's own).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union

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


def check_warmup(schedule: Any, train: Any) -> None:
    """The warm-up of ``schedule`` (a :class:`ScheduleConfig`) fits in the epochs of ``train`` (a
    :class:`TrainConfig`): a check every training config's ``_check`` runs."""
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
        check_warmup(self.schedule, self.train)
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
    renamed = getattr(cls, "RENAMED", {})
    for key, value in data.items():
        if key in renamed:  # the earlier spelling of a key: read as the new one (written only in the new one)
            if renamed[key] in data:
                where_key = f"{path}.{renamed[key]}" if path else renamed[key]
                raise ConfigError(f"config key {where_key!r} is given twice, also by its earlier name {key!r}; "
                                  f"keep {renamed[key]!r}")
            key = renamed[key]
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
    """A copy of the raw mapping with each ``key.sub=value`` set (validation happens in :func:`from_dict`). The
    input is left as it was: a resumed run's saved config must stay what the checkpoint holds, or a changed key
    would slip past the resume check."""
    import copy

    raw = copy.deepcopy(raw)
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
