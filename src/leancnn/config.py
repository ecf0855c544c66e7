"""Typed experiment configs loaded from YAML.

Every section is a dataclass; :func:`from_dict` checks each key and type against it, so an unknown key or a
wrong type fails with the key path and the allowed keys (or values). Command-line overrides use
``key.sub=value`` (the value is parsed as YAML: ``3``, ``0.1``, ``true``, ``[mnist, syn]``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")


@dataclass
class MixStyleConfig:
    after: list[str] = field(default_factory=list)  # module names to apply MixStyle after; [] = no MixStyle
    p: float = 0.5  # probability of mixing, per batch and insertion point
    alpha: float = 0.1  # lambda ~ Beta(alpha, alpha)
    mix: Literal["random", "crossdomain"] = "random"  # crossdomain needs data.sampler=domain


@dataclass
class ModelConfig:
    name: str = "resnet20"
    num_classes: int = 10
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the model builder
    mixstyle: MixStyleConfig = field(default_factory=MixStyleConfig)


@dataclass
class DataConfig:
    name: Literal["digits"] = "digits"
    domains: list[str] = field(default_factory=lambda: ["mnist"])  # trained on (train/val splits)
    test_domains: list[str] = field(default_factory=list)  # held-out domains; [] = test split of `domains`
    test_split: Literal["all", "test"] = "all"  # split of test_domains tested on ("all" = the whole domain)
    split_seed: int = 0
    augment: bool = False
    batch_size: int = 128  # global batch: divided between DDP ranks
    eval_batch_size: int = 512
    num_workers: int = 0
    limit_train: int = 0  # >0: use only this many training samples (a fixed random subset); for quick runs
    limit_eval: int = 0  # >0: same for the val and test sets
    sampler: Literal["random", "domain"] = "random"  # domain: batches of domains_per_batch domains x k samples
    domains_per_batch: int = 2  # for sampler=domain; 2 gives the [A | B] layout of MixStyle's crossdomain mode
    labels_per_class: int = 0  # >0: keep only this many labelled images per class and training domain (SSDG)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from warmup_start * lr, per step
    warmup_start: float = 0.1
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine floor


@dataclass
class LossConfig:
    name: Literal["ce", "bias"] = "ce"
    label_smoothing: float = 0.0
    # Bias Loss (name: bias); see docs/bias-loss.md
    alpha: float = 0.3
    beta: float = 0.3
    normalisation: Literal["local", "global"] = "local"  # local = the paper's per-batch min-max
    weight_form: Literal["paper", "legacy"] = "paper"  # legacy = the reference code before 2022
    low_threshold: float = 0.1  # v_hat below this counts as a low-diversity sample in the diagnostics
    feature_layer: str = ""  # features from this module; "" = the model's forward_features


@dataclass
class SemiConfig:
    """FixMatch-style training with unlabelled data (docs/mixstyle.md): ``ssdg`` uses the training images left
    out by ``data.labels_per_class`` as unlabelled data; ``uda`` uses the train split of ``unlabeled_domains``."""

    mode: Literal["off", "ssdg", "uda"] = "off"
    unlabeled_domains: list[str] = field(default_factory=list)  # uda; [] = data.test_domains
    threshold: float = 0.95  # pseudo-label confidence threshold
    weight_u: float = 1.0  # weight of the unlabelled loss
    unlabeled_batch_size: int = 0  # 0 = data.batch_size (equal halves for labelled <-> unlabelled mixing)
    mixstyle_labeled: bool = False  # also apply MixStyle (random) on the supervised labelled batch
    strong_augment: bool = True  # strong augmentation of the batch the unlabelled loss is computed on


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    amp: bool = False  # mixed precision, CUDA only (ignored with a warning on CPU)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    deterministic: bool = True  # deterministic kernels where the backend offers them


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)


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
            raise ConfigError(f"unknown config key '{key_path}'; allowed keys at {where}: " + ", ".join(fields))
        kwargs[key] = _convert(value, hints[key], key_path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


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
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.problem})") from None
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
