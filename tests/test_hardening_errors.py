"""Late or misleading errors (issue 19, part 5): each one line that names the key or flag and its real range (or
both kinds of run), before anything is written. One test (or parametrized case) per reported case, and the
same shape where it recurs elsewhere."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import cli, one_error_line

from leancnn.cli import build_parser, main
from leancnn.config import (
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_config,
    to_dict,
)
from leancnn.data import video as vdata
from leancnn.errors import LeancnnError
from leancnn.latency.config import LatencyConfig
from leancnn.latency.quota import CpuQuota
from leancnn.models import create_model
from leancnn.prune import global_plan, prunable_groups, ratio_for_target
from leancnn.tasks import video as tvideo
from leancnn.tasks.protocol import get_task, legacy_task
from leancnn.tasks.register import RegisterConfig
from leancnn.tasks.register import build_model as build_register_model
from leancnn.tasks.runs import resolve_checkpoint
from leancnn.tasks.video import VideoConfig, VideoDataConfig
from leancnn.train import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=digits_cnn", "data.limit_train=256", "data.limit_eval=128", "data.batch_size=64",
        "train.epochs=1"]
FAST_PRUNE = ["search.val_images=64", "search.bn_batches=1", "calib_batches=1"]
VIDEO = ["data.frames=8", "data.height=24", "data.width=24"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One run directory of each kind: a trained digit classifier, its pruned form (``leancnn prune``), and
    checkpoints with a real video and a real registration run's config and weights (random ones)."""
    root = tmp_path_factory.mktemp("kinds")
    assert main(["train", *TINY, "-o", str(root / "cls")]) == 0
    assert main(["prune", str(root / "cls"), "-o", str(root / "pruned"), *FAST_PRUNE]) == 0
    vcfg = load_config(None, VIDEO, cls=VideoConfig)
    model = create_model(vcfg.model.name, num_classes=vcfg.model.num_classes)
    for name in ("best.pt", "last.pt"):
        save_checkpoint(root / "vid" / name, {"model": model.state_dict(), "config": to_dict(vcfg),
                                              "model_name": vcfg.model.name, "epoch": 1})
    rcfg = load_config(None, ["model.channels=[4,8,16]"], cls=RegisterConfig)
    reg = build_register_model(rcfg, (16, 16, 16))  # a registration network's real weights, on its grid
    for name in ("best.pt", "last.pt"):
        save_checkpoint(root / "reg" / name, {"model": reg.state_dict(), "config": to_dict(rcfg), "epoch": 1,
                                              "meta": {"grid": [16, 16, 16]}})
    (root / "data").mkdir()
    return {"cls": root / "cls", "pruned": root / "pruned", "vid": root / "vid", "reg": root / "reg",
            "data": root / "data", "root": root}


# ----------------------------------------------------------------------------------------- kinds of run


def test_the_task_of_an_older_checkpoint_is_read_from_the_config_shape():
    def kind(config):  # what a checkpoint without the "task" field is taken for
        return get_task(legacy_task(config)).kind_of({"config": config})

    assert kind(to_dict(ExperimentConfig())) == "classifier"
    pruned = to_dict(ExperimentConfig())
    pruned["model"]["pruned"] = {"conv1.0": [0, 1]}
    assert kind(pruned) == "pruned classifier"
    assert kind(to_dict(VideoConfig())) == "video"
    assert kind(to_dict(RegisterConfig())) == "registration"
    assert legacy_task(None) is legacy_task({}) is legacy_task({"model": 3}) is None


KIND_CASES = [  # (argv with {run} placeholders, command shown, given kind, needed kind)
    (["evaluate", "{vid}"], "evaluate", "video", "a classifier run"),
    (["evaluate", "{reg}"], "evaluate", "registration", "a classifier run"),
    (["prune", "{vid}", "-o", "{out}"], "prune", "video", "a digit classifier run"),
    (["prune", "{reg}", "-o", "{out}"], "prune", "registration", "a digit classifier run"),
    (["prune", "analyse", "{reg}", "--criteria", "l1", "l2", "-o", "{out}"], "prune", "registration",
     "a digit classifier run"),
    (["video", "evaluate", "{cls}"], "video", "classifier", "a video run"),
    (["video", "evaluate", "{reg}"], "video", "registration", "a video run"),
    (["video", "ensemble", "{vid}", "{cls}"], "video", "classifier", "a video run"),
    (["video", "stream", "--synthetic", "--model", "{cls}"], "video", "classifier", "a video stream model"),
    (["video", "stream", "--synthetic", "--model", "resnet20"], "video", "registered classifier",
     "a video stream model"),
    (["video", "export", "resnet20", "-o", "{out}.onnx"], "video", "registered classifier", "a video stream model"),
    (["video", "export", "{cls}", "-o", "{out}.onnx"], "video", "classifier", "a video stream model"),
    (["video", "export", "{reg}", "-o", "{out}.onnx"], "video", "registration", "a video stream model"),
    (["register", "predict", "{cls}", "--data", "{data}", "-o", "{out}"], "register", "classifier",
     "a registration run"),
    (["register", "predict", "{vid}", "--data", "{data}", "-o", "{out}"], "register", "video", "a registration run"),
    (["register", "evaluate", "{cls}", "--data", "{data}", "-o", "{out}"], "register", "classifier",
     "a registration run"),
    (["train", "--resume", "{vid}/last.pt", "-o", "{out}"], "train", "video", "a classifier run"),
    (["video", "train", "--resume", "{cls}/last.pt", "-o", "{out}"], "video", "classifier", "a video run"),
    (["register", "train", "--resume", "{cls}/last.pt", "-o", "{out}"], "register", "classifier",
     "a registration run"),
]


@pytest.mark.parametrize("argv, command, given, need", KIND_CASES,
                         ids=[" ".join(c[0]).replace("{", "").replace("}", "") for c in KIND_CASES])
def test_a_run_of_another_kind_names_both_kinds(runs, tmp_path, capsys, argv, command, given, need):
    out = tmp_path / "out"
    argv = [a.format(out=out, **{k: str(v) for k, v in runs.items()}) for a in argv]
    msg = one_error_line(cli(capsys, *argv), command)
    assert f"is a {given} run" in msg or f"is a {given} (" in msg, msg
    assert f"needs {need}" in msg, msg
    assert "unknown config key" not in msg and "IndexError" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_clip_model_given_to_stream_names_both_kinds(capsys):
    msg = one_error_line(cli(capsys, "video", "stream", "--synthetic", "--model", "frameavg_r20"), "video")
    assert "'frameavg_r20' is a video clip model, not a stream model" in msg
    assert "needs a video stream model" in msg


def test_latency_of_a_registration_run_times_its_network_on_its_grid(runs, tmp_path, capsys):
    # registration runs were refused here before their networks were registered; now they are measured, with the
    # moving and fixed volume fed together, on the grid the checkpoint records
    import torch

    cfg = tmp_path / "lat.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"checkpoint": str(runs["reg"]), "label": "reg"}],
                                   "grid": {"loads": [{"workers": 0}]},
                                   "protocol": {"samples": 4, "block": 2, "warmup": 1, "settle_seconds": 0.0}}))
    result = cli(capsys, "latency", "run", "-c", cfg, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    grid = torch.load(runs["reg"] / "best.pt", weights_only=False)["meta"]["grid"]
    rec = json.loads((tmp_path / "out" / "models.json").read_text())["reg"]
    assert rec["kind"] == "registration" and rec["input"] == [1, *grid] and rec["source"] == "checkpoint"
    bad = tmp_path / "bad.yaml"  # a grid the run's network cannot take: one line naming the model, nothing written
    bad.write_text(yaml.safe_dump({"models": [{"checkpoint": str(runs["reg"]), "input": [1, 16, 16]}]}))
    msg = one_error_line(cli(capsys, "latency", "run", "-c", bad, "-o", tmp_path / "out2"), "latency")
    assert msg.startswith("config key 'models[0]': input [1, 16, 16] must have 4 dimensions")
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------------------- pruned runs


def test_evaluate_of_a_pruned_run_uses_its_pruned_checkpoint(runs, capsys):
    assert resolve_checkpoint(runs["pruned"]) == runs["pruned"] / "pruned.pt"
    result = cli(capsys, "evaluate", runs["pruned"])
    assert result.code == 0, result.err
    row = next(line for line in result.out.splitlines() if line.startswith("mnist"))
    assert 0.0 <= float(row.split("|")[2].strip().rstrip("%")) <= 100.0


def test_a_folder_without_any_checkpoint_lists_every_name(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    msg = one_error_line(cli(capsys, "evaluate", tmp_path / "empty"), "evaluate")
    assert msg == f"checkpoint '{tmp_path / 'empty'}' holds no best.pt, last.pt or pruned.pt"


# ----------------------------------------------------------------------------------------- round_to


def test_round_to_above_every_layer_is_one_line_naming_round_to_and_the_channels(runs, tmp_path, capsys):
    msg = one_error_line(cli(capsys, "prune", runs["cls"], "-o", tmp_path / "p", "round_to=64", *FAST_PRUNE), "prune")
    assert msg == ("round_to=64 leaves no layer to prune: a layer of at most round_to channels is kept whole, and "
                   "the prunable layers have 64 channels each; use round_to in [1, 63], or 0 for no rounding")
    assert list(tmp_path.iterdir()) == []  # refused before scoring: no p/, no p.partial/


def test_round_to_check_in_the_library_names_the_smallest_layer():
    model, x = create_model("resnet20"), torch.zeros(1, 3, 32, 32)
    sizes = sorted({g.n_channels for g in prunable_groups(model, x)})
    assert sizes[0] < sizes[-1]  # 16 .. 64
    with pytest.raises(LeancnnError, match=rf"round_to=64 .* {sizes[0]} \(the smallest\) to {sizes[-1]} channels"):
        ratio_for_target(model, x, 0.5, round_to=64)
    scores = {g.name: torch.rand(g.n_channels).numpy() for g in prunable_groups(model, x)}
    with pytest.raises(LeancnnError, match=r"round_to=100 leaves no layer to prune"):
        global_plan(model, x, scores, 0.5, round_to=100)
    ratio, achieved = ratio_for_target(model, x, 0.5, round_to=4)  # a round_to below the layers still works
    assert 0 < ratio < 1 and abs(achieved - 0.5) <= 0.02


# ----------------------------------------------------------------------------------------- video flags and keys


def test_video_config_ranges_are_the_data_generators(capsys, tmp_path):
    """data.frames=2 or 3 passed the config and failed in MovingDigitsSpec with another range ([4, 512])."""
    for key, lo, hi in (("frames", 4, 512), ("height", 16, 512), ("width", 16, 512), ("train", 10, 1_000_000)):
        for bad in (lo - 1, hi + 1):
            with pytest.raises(ConfigError) as e:
                from_dict(VideoConfig, {"data": {key: bad}})
            assert str(e.value) == f"config key 'data.{key}' must be in [{lo}, {hi}], got {bad}"
        spec = tvideo.data_spec(from_dict(VideoDataConfig, {key: hi}))  # the config's bounds build a dataset spec
        assert getattr(spec, key) == hi
    msg = one_error_line(cli(capsys, "video", "preview", "data.frames=3", "-o", tmp_path / "p.png"), "video")
    assert msg == "config key 'data.frames' must be in [4, 512], got 3" and "MovingDigitsSpec" not in msg
    assert not (tmp_path / "p.png").exists()


def test_stream_size_outside_the_synthetic_range_names_the_flag(capsys):
    msg = one_error_line(cli(capsys, "video", "stream", "--synthetic", "--model", "movinet_a0_stream", "--frames", "2",
                             "--size", "600x600"), "video")
    assert msg == "--size 600x600: a synthetic moving-digits video is 16 to 512 pixels a side (HxW)"
    assert vdata.SIDE_RANGE == (16, 512)


def test_stream_threads_below_one_is_refused(capsys):
    with pytest.raises(LeancnnError, match="--threads"):
        list(tvideo.stream_command(None, "random", "movinet_a0_stream", frames=2, threads=-2))
    try:
        code = main(["video", "stream", "--synthetic", "--model", "movinet_a0_stream", "--threads", "-2"])
    except SystemExit as e:  # refused by the argument parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--threads" in err.strip().splitlines()[-1] and "-2" in err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------- CPU quotas


def test_quota_above_the_cores_is_refused_with_the_real_range(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    ok = from_dict(LatencyConfig, {"grid": {"loads": [], "quotas": [0.5, float(cores)]}})
    assert ok.grid.quotas == [0.5, float(cores)]
    with pytest.raises(ConfigError) as e:
        from_dict(LatencyConfig, {"grid": {"loads": [], "quotas": [0.5, cores + 1.5]}})
    assert str(e.value) == (f"config key 'grid.quotas[1]' = {cores + 1.5:g} is above the {cores} CPU(s) this process "
                            f"may run on (os.sched_getaffinity); allowed: (0, {cores}] cores")
    cfg = tmp_path / "lat.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"name": "digits_cnn"}], "grid": {"loads": [], "quotas": [cores + 1]}}))
    msg = one_error_line(cli(capsys, "latency", "run", "-c", cfg, "-o", tmp_path / "out"), "latency")
    assert msg.startswith("config key 'grid.quotas[0]'") and f"allowed: (0, {cores}] cores" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=rf"quota 'cpus' = {cores + 1:g} is above the {cores} CPU\(s\)"):
        CpuQuota(cores + 1)


# ----------------------------------------------------------------------------------------- help texts


def _help_texts(parser: argparse.ArgumentParser, name: str = "leancnn"):
    yield name, parser.format_help()
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub, p in action.choices.items():
                yield from _help_texts(p, f"{name} {sub}")


def test_every_file_a_help_text_points_to_exists():
    """``prune --help`` pointed to configs/prune_*.yaml, which never existed."""
    seen = 0
    for name, text in _help_texts(build_parser()):
        for path in re.findall(r"(?:configs|docs)/[\w*.\-/]*", " ".join(text.split())):
            path = path.rstrip(".")
            seen += 1
            assert glob.glob(str(ROOT / path)), f"`{name} --help` names {path}, which does not exist"
    assert seen >= 10
