"""`leancnn demo` end to end on a small slice of the data, and configs/demo.yaml == the built-in demo config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from leancnn.cli import main
from leancnn.config import load_config, to_dict
from leancnn.demo import DEMO_CONFIG, default_demo_config

ROOT = Path(__file__).resolve().parents[1]


def test_demo_yaml_matches_builtin():
    assert yaml.safe_load((ROOT / "configs/demo.yaml").read_text()) == DEMO_CONFIG
    assert to_dict(load_config(ROOT / "configs/demo.yaml")) == to_dict(default_demo_config())


@pytest.mark.slow
def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "data.limit_train=256", "data.limit_eval=64", "train.epochs=1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"report written to {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    for domain in ("mnist", "mnistm", "syn", "uci", "mean"):
        assert f"| {domain}" in report
    assert "![training curves](train/curves.png)" in report
    assert (out / "train" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "269,722 parameters" in report  # ResNet-20
    assert "epochs: 1" in report  # the resolved config, overrides applied
    # stage 2: leave-one-domain-out on mnistm without / with MixStyle, shortened by the same overrides
    assert "## MixStyle: leave-one-domain-out" in report and "256 training images, 1 epochs" in report
    # the held-out test was cut by data.limit_eval: the report says so, not "the whole held-out domain"
    assert "tested on 64 of the 5,000 images of the held-out domain mnistm, drawn at random (data.limit_eval=64)" \
        in report and "whole held-out" not in report
    for variant in ("vanilla", "MixStyle-random", "MixStyle-crossdomain"):
        assert f"| {variant}" in report
        assert (out / "lodo" / variant / "mnistm" / "seed0" / "summary.json").is_file()
    # stage 3: MoViNet stream; stage 4: latency under load; stage 5: pruning with blended criteria
    assert "## MoViNet: streaming video in constant memory" in report and (out / "video_stream.png").is_file()
    assert "## Latency under CPU contention" in report and (out / "latency" / "report.md").is_file()
    import re

    assert re.search(r"load \d+x100%", report)  # one hog per core
    assert "## Pruning: blended criteria" in report and (out / "prune" / "pruned.pt").is_file()
    assert "## Search: pruning against measured latency" in report and (out / "search" / "pareto.png").is_file()
    trials = (out / "search" / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 3 and ",unpruned," in trials[1]  # header + 3 trials, the unpruned model first
    assert "## MixStyle: retrieval across styles" in report and "| MixStyle random (layer1, layer2)" in report
    assert (out / "retrieve" / "mixstyle" / "summary.json").is_file()
    assert "fewer MACs" in report and "pruned + fine-tuned" in report
    assert "stage 5" in report  # per-stage times
