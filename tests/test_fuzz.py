"""Property-based tests (hypothesis): random keys, values and overrides thrown at the config loader and at
``train``, ``evaluate`` and ``lodo``. None may end in a traceback, and a refused command leaves no directory
behind; an accepted ``train`` has written exactly its config and fingerprint when training starts (training
itself is stopped there: what is fuzzed is everything before it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leancnn.cli import main
from leancnn.config import ExperimentConfig, flatten, from_dict, load_config, to_dict
from leancnn.errors import ConfigError

KEYS = sorted(flatten(to_dict(ExperimentConfig())))
SECTIONS = sorted({k.split(".")[0] for k in KEYS})
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.integers(-5, 5), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=12),
    st.sampled_from(["mnist", "syn", "uci", "mnistm", "svhn", "digits_cnn", "resnet20", "sgd", "adamw", "cosine",
                     "multistep", "domain", "random", "crossdomain", "ssdg", "uda", "bias", "ce", "conv1", "..",
                     "../x", "", "cpu", "cuda", "auto", "all", "test"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=5), scalars, max_size=2))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(min_size=1, max_size=10),
                 st.sampled_from(KEYS).map(lambda k: k + ".x"), st.sampled_from(KEYS).map(lambda k: k.upper()))


def as_override(key: str, value) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    return f"{key}={text}"


overrides = st.lists(st.builds(as_override, keys, values), max_size=4)
raw_overrides = st.lists(st.text(max_size=20), max_size=3)  # anything at all, '=' or not


@pytest.mark.slow
@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6)),
                       st.one_of(values, st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]), values,
                                                         max_size=4)), max_size=5))
def test_from_dict_gives_a_config_or_a_config_error(data):
    try:
        cfg = from_dict(ExperimentConfig, data)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg  # what validates, round-trips


class Started(Exception):
    """Raised instead of training: the command accepted its input."""


def _stop_training(monkeypatch):
    def fit(self, *args, **kwargs):
        raise Started(self.out_dir)

    monkeypatch.setattr("leancnn.train.engine.Trainer.fit", fit)


def _assert_one_line(err: str, command: str) -> None:
    assert err.count("\n") == 1 and err.startswith(f"leancnn {command}: error: ") and "Traceback" not in err, err


@pytest.mark.slow
@FUZZ
@given(ovs=overrides, junk=raw_overrides)
def test_train_never_tracebacks_nor_half_writes(monkeypatch, capsys, tiny_overrides, ovs, junk):
    capsys.readouterr()
    _stop_training(monkeypatch)
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.chdir(tmp)
        out = Path(tmp) / "run"
        argv = ["train", *tiny_overrides, *ovs, *[j for j in junk if "=" in j], "train.threads=1", "-o", str(out)]
        try:
            code = main(argv)
        except Started:
            event("accepted")
            assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fingerprint.json"]
            assert load_config(out / "config.yaml") == load_config(overrides=[a for a in argv[1:-2]])
            return
        except SystemExit as e:  # argparse's usage error (e.g. an override that looks like an option)
            assert e.code == 2
            return
        finally:
            monkeypatch.chdir(Path(__file__).parent)
        err = capsys.readouterr().err
        _assert_one_line(err, "train")
        event("refused: " + err.split(":")[2].split("'")[0].strip()[:30])
        assert code == 2 and not out.exists()
        assert list(Path(tmp).iterdir()) == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_overrides):
    path = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", *tiny_overrides, "-o", str(path)]) == 0
    (path.parent / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 50)
    (path.parent / "empty").mkdir()
    return path


@pytest.mark.slow
@FUZZ
@given(which=st.sampled_from(["run", "last", "best", "garbage", "empty", "missing", ""]),
       domains=st.one_of(st.none(), st.lists(st.sampled_from(["mnist", "uci", "svhn", "", "mnist "]), min_size=1,
                                             max_size=3)),
       split=st.sampled_from(["test", "val", "all", "nope"]), device=st.sampled_from(["cpu", "auto", "gpu"]),
       plot=st.sampled_from([None, "ok.png", "/proc/leancnn/x.png", "missing-dir/x.png", "", "x.txt", "."]))
def test_evaluate_never_tracebacks(capsys, tiny_run, which, domains, split, device, plot):
    capsys.readouterr()
    paths = {"run": tiny_run, "last": tiny_run / "last.pt", "best": tiny_run / "best.pt", "empty": tiny_run.parent / "empty",
             "garbage": tiny_run.parent / "garbage.pt", "missing": tiny_run.parent / "nope.pt", "": ""}
    with tempfile.TemporaryDirectory() as tmp:
        # 64 images per set (the public --limit): the fuzz is about the arguments
        argv = ["evaluate", str(paths[which]), "--split", split, "--device", device, "--limit", "64"]
        if domains:
            argv += ["--domains", *domains]
        if plot is not None:
            argv += ["--plot-variance", plot if plot.startswith("/") else str(Path(tmp) / plot) if plot else ""]
        before = sorted(p.name for p in tiny_run.iterdir())
        try:
            code = main(argv)
        except SystemExit as e:
            assert e.code == 2
            return
        err = capsys.readouterr().err
        if code != 0:
            _assert_one_line(err, "evaluate")
            assert code == 2 and list(Path(tmp).iterdir()) == []
        assert sorted(p.name for p in tiny_run.iterdir()) == before


@FUZZ
@given(targets=st.one_of(st.none(), st.lists(st.sampled_from(["uci", "mnist", "syn", "svhn", ""]), min_size=1,
                                             max_size=3)),
       seeds=st.one_of(st.none(), st.lists(st.integers(-3, 3), min_size=1, max_size=3)),
       variants=st.lists(st.builds(lambda n, o: f"{n}: {' '.join(o)}" if o else n,
                                   st.sampled_from(["a", "b", "", "x/y", "c d"]), overrides), max_size=3),
       ovs=overrides)
def test_lodo_never_tracebacks_nor_writes_before_training(monkeypatch, capsys, tiny_overrides, targets, seeds,
                                                          variants, ovs):
    capsys.readouterr()
    monkeypatch.setattr("leancnn.tasks.lodo.train_task", lambda *a, **k: (_ for _ in ()).throw(Started()))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lodo"
        argv = ["lodo", *tiny_overrides, *ovs, "-o", str(out)]
        argv += ["--targets", *targets] if targets else ["--targets", "uci"]
        argv += ["--seeds", *map(str, seeds)] if seeds else ["--seeds", "0"]
        for v in variants:
            argv += ["--variant", v]
        try:
            code = main(argv)
        except (Started, SystemExit) as e:
            assert not isinstance(e, SystemExit) or e.code == 2
            assert not out.exists()  # planning and validation write nothing
            return
        _assert_one_line(capsys.readouterr().err, "lodo")
        assert code == 2 and not out.exists()
