"""``leancnn prune`` end to end on a tiny trained run: the pruned checkpoint, fine-tuning through the engine,
evaluate / resume / ONNX on the pruned architecture, and bad input that leaves nothing behind (issue 12)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leancnn.cli import main
from leancnn.config import from_dict
from leancnn.errors import LeancnnError
from leancnn.tasks import prune as tprune
from leancnn.tasks.prune import PruneConfig
from leancnn.train import load_checkpoint

TINY = ["model.name=resnet20", "data.domains=[mnist]", "data.limit_train=256", "data.limit_eval=128",
        "data.batch_size=64", "train.epochs=1"]
FAST = ["search.population=4", "search.generations=1", "search.val_images=64", "search.bn_batches=1",
        "calib_batches=1"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "run"
    assert main(["train", *TINY, "-o", str(out)]) == 0
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_prune_ea_finetune_evaluate_resume(source, tmp_path, capsys):
    before = _digest(source / "best.pt")
    out = tmp_path / "pruned"
    assert main(["prune", str(source), "--target-macs", "0.5", "--criteria", "l1", "bn", "taylor", "--search", "ea",
                 "--finetune-epochs", "1", "-o", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "pruned checkpoint" in text and "fine-tuned" in text
    assert _digest(source / "best.pt") == before  # the input checkpoint is only read
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["macs_ratio"] - 0.5) <= 0.02 and summary["params_after"] < summary["params_before"]
    assert summary["search"]["evaluations"] >= 4 and (out / "criteria_correlation.png").stat().st_size > 0
    assert set(summary["weights"]) <= {"l1", "bn", "taylor"} and abs(sum(summary["weights"].values()) - 1) < 1e-6
    state = load_checkpoint(out / "pruned.pt")
    assert state["config"]["model"]["pruned"]  # the architecture is in the config
    assert main(["evaluate", str(out / "pruned.pt")]) == 0  # rebuilt from the config, weights fit
    ft = Path(summary["finetune"]["run_dir"])
    assert (ft / "last.pt").is_file()
    assert main(["train", "--resume", str(ft / "last.pt"), "train.epochs=2"]) == 0  # resume works on it
    assert load_checkpoint(ft / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_pruned_model_exports_to_onnx(source, tmp_path):
    import onnxruntime as ort

    from leancnn.export import export_model

    pcfg = from_dict(PruneConfig, {"criteria": ["l2"], "calib_batches": 1,
                                   "search": {"val_images": 32, "bn_batches": 1}})
    s = tprune.prune_run(source, pcfg, tmp_path / "p", log=lambda m: None)
    cfg, model, _ = tprune.load_source(s["checkpoint"])
    path = export_model(model, tmp_path / "pruned.onnx", (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, want, atol=1e-4)


def test_analyse_clusters_the_criteria_alone(source, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["prune", "analyse", str(source), "--criteria", "l1", "l2", "fpgm", "random", "-o", str(out),
                 "calib_batches=1"]) == 0
    assert (out / "criteria_correlation.png").stat().st_size > 0
    result = json.loads((out / "clustering.json").read_text())
    assert result and "together in" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--criteria", "l1", "nosuch"], "unknown pruning criterion 'nosuch'.*l1"),
    (["--target-macs", "0.001"], "cannot be reached"),
])
def test_bad_input_is_one_line_and_leaves_no_output(source, tmp_path, capsys, args, match):
    import re

    out = tmp_path / "bad"
    assert main(["prune", str(source), "-o", str(out), *args, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists() and not list(tmp_path.glob(".bad.*"))  # no staging folder left


def test_existing_output_is_refused_and_video_runs_are_refused(source, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    pcfg = from_dict(PruneConfig, {})
    with pytest.raises(LeancnnError, match="--force"):
        tprune.prune_run(source, pcfg, out, log=lambda m: None)
    assert (out / "keep.txt").is_file()
    fake = tmp_path / "video.pt"
    torch.save({"model": {}, "config": {"data": {"frames": 16}}}, fake)
    with pytest.raises(LeancnnError, match="video run"):
        tprune.load_source(fake)


def test_recalibrated_batchnorm_matches_the_batches():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    xs = [(torch.randn(8, 3, 6, 6) * 3 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    tprune.recalibrate_bn(net, xs)
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x, _ in xs])
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert net[1].momentum == 0.1 and not net.training


def test_cli_help_lists_every_criterion(capsys):
    from leancnn.prune import CRITERIA

    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in CRITERIA)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet56", "digits_cnn", "mobilenetv3_large", "skipnet_s",
                                  "skipnet_l"])
def test_every_registered_classifier_prunes_to_the_target(name):
    from leancnn import create_model
    from leancnn.prune import prune_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.enable_grad():
        pruned, info = prune_model(model, x[:1], 0.5, "l1")
    assert abs(info["ratio"] - 0.5) <= 0.02 and info["params_after"] < info["params_before"]
    with torch.no_grad():
        assert pruned.eval()(x).shape == model(x).shape == (2, 10)
