"""Typed experiment configs: defaults, YAML files, ``key.sub=value`` overrides and their error messages."""

import dataclasses
from pathlib import Path

import pytest

from leancnn.config import (
    DataConfig,
    ExperimentConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from leancnn.errors import ConfigError, LeancnnError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- defaults and files


def test_defaults():
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert cfg.model.name == "resnet20" and cfg.model.num_classes == 10 and cfg.model.kwargs == {}
    assert cfg.data.domains == ["mnist"] and cfg.data.test_domains == []
    assert cfg.data.batch_size == 128 and cfg.data.limit_train == 0
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.05 and cfg.optim.betas == [0.9, 0.999]
    assert cfg.schedule.name == "cosine" and cfg.loss.name == "ce"
    assert cfg.train.epochs == 10 and cfg.train.device == "auto" and cfg.train.deterministic is True


def test_default_lists_are_not_shared():
    a, b = ExperimentConfig(), ExperimentConfig()
    a.data.domains.append("syn")
    assert b.data.domains == ["mnist"]


def test_yaml_file(tmp_path):
    path = write(tmp_path, """
name: digits-sgd
model:
  name: digits_cnn
  kwargs: {hidden: 32}
data:
  domains: [mnist, syn]
  test_domains: [uci]
  augment: true
optim:
  name: adamw
  lr: 0.001
  betas: [0.8, 0.99]
schedule:
  name: multistep
  milestones: [3, 6]
  warmup_epochs: 1       # an int for a float field
train:
  epochs: 7
""")
    cfg = load_config(path)
    assert cfg.name == "digits-sgd"
    assert cfg.model.name == "digits_cnn" and cfg.model.kwargs == {"hidden": 32}
    assert cfg.data.domains == ["mnist", "syn"] and cfg.data.test_domains == ["uci"] and cfg.data.augment is True
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 0.001 and cfg.optim.betas == [0.8, 0.99]
    assert cfg.schedule.milestones == [3, 6]
    assert cfg.schedule.warmup_epochs == 1.0 and isinstance(cfg.schedule.warmup_epochs, float)
    assert cfg.train.epochs == 7
    # untouched keys keep their defaults, also inside a section that was given
    assert cfg.data.batch_size == 128 and cfg.optim.weight_decay == 5e-4 and cfg.loss == ExperimentConfig().loss


@pytest.mark.parametrize("text", ["", "# only a comment\n", "model:\n"])
def test_empty_file_and_empty_section_give_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == ExperimentConfig()


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.2\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["optim.lr=0.5", "data.batch_size=32"])
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 3 and cfg.data.batch_size == 32


# ----------------------------------------------------------------------------------------- overrides


def test_overrides_of_every_kind():
    cfg = load_config(overrides=[
        "data.domains=[mnist, syn]",
        "data.augment=true",
        "train.amp=false",
        "train.epochs=3",
        "optim.lr=1",  # an int is accepted for a float field and stored as float
        "optim.betas=[0.5, 0.75]",
        "schedule.milestones=[2, 4]",
        "model.kwargs={hidden: 16}",
        "name=my run",
        "optim.name=adamw",
    ])
    assert cfg.data.domains == ["mnist", "syn"]
    assert cfg.data.augment is True and cfg.train.amp is False
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.optim.betas == [0.5, 0.75] and all(type(b) is float for b in cfg.optim.betas)
    assert cfg.schedule.milestones == [2, 4]
    assert cfg.model.kwargs == {"hidden": 16}
    assert cfg.name == "my run" and cfg.optim.name == "adamw"


def test_last_override_wins_and_value_may_hold_equals():
    cfg = load_config(overrides=["train.epochs=3", "train.epochs=5", "name=a=b"])
    assert cfg.train.epochs == 5 and cfg.name == "a=b"


def test_parse_override():
    assert parse_override("optim.lr=0.1") == (["optim", "lr"], 0.1)
    assert parse_override(" train.epochs = 4") == (["train", "epochs"], 4)
    assert parse_override("data.domains=[mnist, uci]") == (["data", "domains"], ["mnist", "uci"])
    assert parse_override("name=") == (["name"], "")


def test_apply_overrides_makes_sections():
    assert apply_overrides({}, ["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
    saved = {"optim": {"lr": 0.1}}
    assert apply_overrides(saved, ["optim.lr=0.5"]) == {"optim": {"lr": 0.5}}
    assert saved == {"optim": {"lr": 0.1}}  # the input (e.g. a checkpoint's config) is left as it was


def test_exponent_float_without_dot_is_a_number(tmp_path):
    assert load_config(overrides=["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)
    assert load_config(write(tmp_path, "optim:\n  weight_decay: 5e-4\n")).optim.weight_decay == pytest.approx(5e-4)


# ----------------------------------------------------------------------------------------- errors


def config_error(path=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert isinstance(info.value, LeancnnError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_top_level_key():
    msg = config_error(overrides=["modle.name=x"])
    assert msg == ("unknown config key 'modle'; allowed keys at the top level: "
                   "name, output_dir, model, data, optim, schedule, loss, train, semi")


def test_unknown_nested_key():
    msg = config_error(overrides=["optim.lrr=1"])
    assert msg == ("unknown config key 'optim.lrr'; allowed keys at 'optim': "
                   "name, lr, momentum, nesterov, weight_decay, betas")


def test_unknown_key_in_file(tmp_path):
    msg = config_error(write(tmp_path, "data:\n  domain: [mnist]\n"))
    assert "'data.domain'" in msg
    for key in (f.name for f in dataclasses.fields(DataConfig)):
        assert key in msg


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=abc", "config key 'train.epochs': expected an integer, got str 'abc'"),
    ("train.epochs=1.5", "config key 'train.epochs': expected an integer, got float 1.5"),
    ("train.epochs=true", "config key 'train.epochs': expected an integer, got bool True"),
    ("train.epochs=null", "config key 'train.epochs': expected an integer, got NoneType None"),
    ("optim.lr=fast", "config key 'optim.lr': expected a number, got str 'fast'"),
    ("optim.lr=true", "config key 'optim.lr': expected a number, got bool True"),
    ("data.augment=1", "config key 'data.augment': expected true/false, got 1"),
    ("name=3", "config key 'name': expected a string, got int 3"),
    ("data.domains=mnist", "config key 'data.domains': expected list of str, got str 'mnist'"),
    ("optim.betas=[0.9, x]", "config key 'optim.betas[1]': expected a number, got str 'x'"),
    ("model.kwargs=3", "config key 'model.kwargs': expected a mapping, got int 3"),
    ("model=resnet20", "config 'model': expected a mapping, got str 'resnet20'"),
])
def test_wrong_types(override, expected):
    assert config_error(overrides=[override]) == expected


@pytest.mark.parametrize("override, expected", [
    ("optim.name=adam", "config key 'optim.name': 'adam' is not allowed; allowed values: sgd, adamw"),
    ("schedule.name=step", "config key 'schedule.name': 'step' is not allowed; "
                           "allowed values: cosine, multistep, constant"),
    ("train.device=gpu", "config key 'train.device': 'gpu' is not allowed; allowed values: auto, cpu, cuda"),
    ("data.name=cifar", "config key 'data.name': 'cifar' is not allowed; allowed values: digits"),
])
def test_literal_choices(override, expected):
    assert config_error(overrides=[override]) == expected


def test_override_without_equals():
    assert config_error(overrides=["train.epochs"]) == "override 'train.epochs' is not of the form key.sub=value"


@pytest.mark.parametrize("override, part", [
    (".lr=1", "empty key"),
    ("optim..lr=1", "empty key"),
    ("optim.lr=[1", "value is not valid YAML"),
])
def test_malformed_overrides(override, part):
    msg = config_error(overrides=[override])
    assert msg.startswith(f"override '{override}'") and part in msg


def test_override_below_a_scalar(tmp_path):
    path = write(tmp_path, "model:\n  name: resnet20\n")
    assert config_error(path, ["model.name.x=1"]) == "override 'model.name.x=1': 'model.name' is not a section"


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "model:\n  name: resnet20\ndata:\n  domains: [mnist, syn\ntrain:\n  epochs: 2\n")
    msg = config_error(path)
    assert msg.startswith(f"config file '{path}' is not valid YAML (line ")
    assert "line 5" in msg and "column" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    assert config_error(path) == f"config file '{path}' does not exist"


def test_directory_is_not_a_config_file(tmp_path):
    assert config_error(tmp_path) == f"config file '{tmp_path}' does not exist"


def test_top_level_list(tmp_path):
    path = write(tmp_path, "- model\n- data\n")
    assert config_error(path) == f"config file '{path}' must hold a mapping at the top level, not list"


def test_from_dict_of_a_section():
    assert from_dict(TrainConfig, {"epochs": 2}).epochs == 2
    with pytest.raises(ConfigError, match=r"^config the top level: expected a mapping, got list \[1\]$"):
        from_dict(OptimConfig, [1])


# ----------------------------------------------------------------------------------------- round trip


def test_dump_load_round_trip(tmp_path):
    cfg = load_config(overrides=[
        "name=round-trip", "model.name=digits_cnn", "model.kwargs={hidden: 8}", "data.domains=[syn, uci]",
        "optim.name=adamw", "optim.lr=0.000123", "optim.weight_decay=0.0", "schedule.name=multistep",
        "schedule.milestones=[1, 2]", "train.grad_clip=1", "train.epochs=2", "data.augment=true",
    ])
    text = dump_config(cfg)
    path = write(tmp_path, text)
    again = load_config(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert dump_config(again) == text
    assert load_config(write(tmp_path, dump_config(ExperimentConfig()), "defaults.yaml")) == ExperimentConfig()


# ----------------------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_shipped_config_loads(path):
    from leancnn.data import DOMAINS
    from leancnn.models import list_models

    if path.name.startswith("register_"):  # registration: its own schema; the shipped file spells out the defaults
        from leancnn.tasks.register import RegisterConfig

        cfg = load_config(path, cls=RegisterConfig)
        assert to_dict(cfg) == {**to_dict(RegisterConfig()), "name": cfg.name}
        return
    if path.name.startswith("video_"):  # video configs: their own schema
        from leancnn.tasks.video import VideoConfig

        assert load_config(path, cls=VideoConfig).model.name in list_models()
        return
    if path.name.startswith("rl_"):  # RL agents: their own schema; a MiniGrid id and a registered model
        from leancnn.data.styled_env import env_ids
        from leancnn.tasks.rl import RLConfig

        rcfg = load_config(path, cls=RLConfig)
        assert rcfg.env.id in env_ids() and rcfg.model.name in list_models()
        return
    if path.name.startswith("latency_"):  # latency grids: every model registered, every condition runnable here
        from leancnn.latency.config import LatencyConfig
        from leancnn.latency.measure import plan_conditions

        lcfg = load_config(path, cls=LatencyConfig)
        assert all(m.name in list_models() for m in lcfg.models if m.name) and plan_conditions(lcfg)
        return
    cfg = load_config(path)
    assert cfg.model.name in list_models()
    assert set(cfg.data.domains + cfg.data.test_domains) <= set(DOMAINS)


def test_runtime_and_resumable_keys_are_properties_of_the_fields():
    from dataclasses import dataclass, field

    from leancnn.config import resumable_keys, rule, runtime_keys
    from leancnn.tasks.register import RegisterConfig
    from leancnn.tasks.video import VideoConfig

    @dataclass
    class Inner:
        workers: int = rule(0, ge=0, runtime=True)
        size: int = rule(3, ge=1)

    @dataclass
    class Outer:
        name: str = rule("x", name=True, runtime=True)
        inner: Inner = field(default_factory=Inner)
        epochs: int = rule(1, ge=1, resumable=True)

    assert runtime_keys(Outer) == ("name", "inner.workers")
    assert resumable_keys(Outer) == ("name", "inner.workers", "epochs")
    # a subclass that overrides a field keeps the flag it declares (VideoTrainConfig.epochs)
    assert "train.epochs" in resumable_keys(VideoConfig) and "train.epochs" not in runtime_keys(VideoConfig)
    assert "data.eval_batch_size" not in runtime_keys(RegisterConfig)  # registration has no eval batch


def test_a_retired_key_of_an_older_config_is_accepted_and_dropped():
    from leancnn.tasks.register import RegisterConfig

    cfg = from_dict(RegisterConfig, {"data": {"eval_batch_size": 1, "batch_size": 2}})  # as older runs wrote
    assert cfg.data.batch_size == 2 and not hasattr(cfg.data, "eval_batch_size")
    with pytest.raises(ConfigError, match="unknown config key 'data.eval_batch_sizes'"):
        from_dict(RegisterConfig, {"data": {"eval_batch_sizes": 1}})


def test_derive_sets_dotted_keys_validates_and_leaves_the_source_alone():
    from leancnn.config import ExperimentConfig, derive

    base = ExperimentConfig()
    new = derive(base, {"name": "ft", "train.epochs": 2, "model.pruned": {"conv1": [0, 1]}})
    assert (new.name, new.train.epochs, new.model.pruned) == ("ft", 2, {"conv1": [0, 1]})
    assert (base.name, base.train.epochs, base.model.pruned) == ("experiment", 10, {})
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch' for ExperimentConfig"):
        derive(base, {"train.epoch": 2})
    with pytest.raises(ConfigError, match="config key 'train.epochs' must be >= 1, got 0"):
        derive(base, {"train.epochs": 0})


def test_a_renamed_key_is_read_under_its_new_name_and_written_only_so():
    from leancnn.tasks.prune import PruneConfig

    old = from_dict(PruneConfig, {"normalize": "scale", "criteria": ["l1", "fpgm"]})  # as earlier configs wrote
    assert old.normalise == "scale" and "normalize" not in to_dict(old) and to_dict(old)["normalise"] == "scale"
    assert from_dict(PruneConfig, {"normalise": "zscore"}).normalise == "zscore"
    with pytest.raises(ConfigError, match="config key 'normalise' is given twice, also by its earlier name "
                                          "'normalize'; keep 'normalise'"):
        from_dict(PruneConfig, {"normalize": "scale", "normalise": "rank"})
    with pytest.raises(ConfigError, match="config key 'normalise': 'softmax' is not allowed; allowed values: rank"):
        from_dict(PruneConfig, {"normalize": "softmax"})  # the old name checked by the new key's rule


def test_a_blend_written_with_the_old_spelling_still_loads():
    from leancnn.prune.blend import BlendedCriterion

    crit = BlendedCriterion.from_dict({"criteria": ["l1", "l2"], "weights": [0.25, 0.75], "normalize": "scale"})
    assert crit.normalise == "scale" and crit.to_dict()["normalise"] == "scale" and "normalize" not in crit.to_dict()
