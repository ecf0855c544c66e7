"""``leancnn video``: training through the one engine (whole clip and sub-clips with a detached state), resume,
evaluation in both frame orders, temporal ensembles, streaming a file / folder / synthetic video, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import leancnn
from leancnn.cli import main
from leancnn.config import load_config
from leancnn.data import video as vdata
from leancnn.errors import LeancnnError
from leancnn.tasks import video
from leancnn.tasks.classification import ClassifyTask
from leancnn.tasks.video import VideoConfig
from leancnn.train import Trainer

TINY = ["data.frames=8", "data.height=24", "data.width=24", "data.train=40", "data.val=20", "data.test=20",
        "data.batch_size=10", "train.epochs=1", "data.eval_batch_size=20"]


@pytest.fixture(scope="module")
def cache(fresh_cache):
    return fresh_cache


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory):
    """A tiny whole-clip A0-stream run, shared by the tests that need a trained checkpoint."""
    out = tmp_path_factory.mktemp("runs") / "a0"
    summary = video.train_video(load_config(None, TINY, cls=VideoConfig), out=out, quiet=True)
    return out, summary


def test_a_run_writes_what_an_image_run_writes(run):
    out, summary = run
    for name in ("config.yaml", "fingerprint.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json",
                 "curves.png"):
        assert (out / name).is_file(), name
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["train_clips_per_s"] > 0 and "val_acc" in line
    assert set(summary["test"]) == {"forward", "reversed"} and summary["test"]["forward"]["n"] == 20


@pytest.mark.slow
def test_resume_extends_the_run_exactly(run, tmp_path):
    out, _ = run
    cfg = load_config(None, [*TINY, "train.epochs=2"], cls=VideoConfig)
    resumed = video.train_video(cfg, out=tmp_path / "r", resume=out / "last.pt", quiet=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    with pytest.raises(LeancnnError, match="'train.sub_clip' changed"):
        video.train_video(load_config(None, [*TINY, "train.sub_clip=2"], cls=VideoConfig), out=tmp_path / "s",
                          resume=out / "last.pt", quiet=True)
    assert not (tmp_path / "s").exists()  # a refused resume writes nothing


def _one_step_grads(model, clip, labels, sub_clip):
    cfg = load_config(None, [*TINY, f"train.sub_clip={sub_clip}"], cls=VideoConfig)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    task = ClassifyTask(torch.nn.CrossEntropyLoss(), step=video.sub_clip_step(sub_clip) if sub_clip else None)
    trainer = Trainer(model=model, task=task, optimizer=opt,
                      scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1), train_loader=[], epochs=1,
                      out_dir="unused", device=torch.device("cpu"))
    opt.zero_grad()
    loss, logits = task.forward(trainer, clip, labels)
    assert cfg.train.sub_clip == sub_clip
    return loss, logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_one_sub_clip_is_whole_clip_training_and_shorter_ones_truncate_the_gradient():
    """In eval mode (BatchNorm's running statistics: in train mode each sub-clip normalises with its own batch
    statistics, a real difference of sub-clip training) one sub-clip of the whole length is whole-clip training,
    and three sub-clips give the whole clip's logits but a truncated gradient."""
    torch.manual_seed(0)
    model = leancnn.create_model("movinet_a0_stream", num_classes=10).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("rezero"):
                p.fill_(0.5)
    clip, labels = torch.randn(4, 3, 6, 24, 24), torch.tensor([0, 1, 2, 3])
    whole = _one_step_grads(model, clip, labels, 0)
    single = _one_step_grads(model, clip, labels, 6)
    assert torch.allclose(whole[0], single[0], atol=1e-6) and torch.allclose(whole[1], single[1], atol=1e-5)
    assert all(torch.allclose(whole[2][k], single[2][k], rtol=1e-4, atol=1e-6) for k in whole[2])
    split = _one_step_grads(model, clip, labels, 2)  # three sub-clips: another (truncated) gradient
    assert torch.allclose(split[1], whole[1], atol=1e-4)  # the logits after the last sub-clip are the whole clip's
    assert max((split[2][k] - whole[2][k]).abs().max().item() for k in whole[2]) > 1e-4


@pytest.mark.slow
def test_sub_clip_training_runs_and_refuses_models_without_state(cache, tmp_path):
    summary = video.train_video(load_config(None, [*TINY, "train.sub_clip=3"], cls=VideoConfig), out=tmp_path / "s",
                                quiet=True)
    assert summary["sub_clip"] == 3 and summary["history"][0]["train_loss"] > 0
    with pytest.raises(LeancnnError, match="sub-clip training needs a stream model"):
        video.check_video_experiment(load_config(None, ["model.name=movinet_a0", "train.sub_clip=2"],
                                                 cls=VideoConfig))
    with pytest.raises(LeancnnError, match="is an image model"):
        video.check_video_experiment(load_config(None, ["model.name=resnet20"], cls=VideoConfig))
    with pytest.raises(Exception, match="train.sub_clip"):
        load_config(None, ["data.frames=8", "train.sub_clip=9"], cls=VideoConfig)
    with pytest.raises(Exception, match="data.frame_offset"):
        load_config(None, ["data.frame_step=2", "data.frame_offset=2"], cls=VideoConfig)


def test_score_counts_errors_that_are_the_reversed_action():
    labels = torch.tensor([0, 1, 2, 8])
    logits = torch.full((4, 10), -5.0)
    logits[0, 1] = logits[1, 0] = logits[2, 2] = logits[3, 9] = 5.0  # left->right, right->left, up ok, 8->9
    s = video.score(logits, labels)
    assert s["acc"] == 0.25 and s["per_class"]["up"] == 1.0
    assert s["reversed_share_of_errors"] == pytest.approx(2 / 3)  # 8 is its own reverse; 8->9 is not reversal


def test_frame_subset_interleaves():
    class Clips:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.arange(6.0).view(1, 6, 1, 1).expand(3, 6, 2, 2), 0

    assert video.FrameSubset(Clips(), 2, 1)[0][0][0, :, 0, 0].tolist() == [1.0, 3.0, 5.0]


@pytest.mark.slow
def test_ensemble_of_two_half_rate_members(cache, tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"m{seed}"
        video.train_video(load_config(None, [*TINY, "data.frame_step=2", f"train.seed={seed}"], cls=VideoConfig),
                          out=out, quiet=True)
        runs.append(out)
    r = video.evaluate_ensemble(runs)
    assert [m["offset"] for m in r["members"]] == [0, 1] and [m["frames"] for m in r["members"]] == [4, 4]
    assert r["ensemble"]["n"] == 20
    # two models at half the frames cost one model at the full frame rate plus one more classifier
    # (480 -> 2048 -> 10 dense layers, once per clip and member)
    assert r["ensemble"]["macs"] - r["single_full_rate_macs"] == 480 * 2048 + 2048 * 10
    with pytest.raises(LeancnnError, match="at least two"):
        video.evaluate_ensemble(runs[:1])


def test_stream_cli_synthetic_prints_running_top_k(run, capsys):
    out, _ = run
    assert main(["video", "stream", "--synthetic", "left", "--model", str(out), "--frames", "48", "--every",
                 "16"]) == 0
    text = capsys.readouterr().out
    assert "synthetic video of 'left'" in text and text.count("frame ") >= 3 and "top-3:" in text
    assert "state 0." in text and "resident memory" in text


def test_stream_reads_a_video_file_and_a_frames_folder_with_the_same_result(run, tmp_path):
    out, _ = run
    model, h, w = video.load_stream_model(str(out), None, None, torch.device("cpu"))
    clips, _ = vdata.load_moving_digits(vdata.MovingDigitsSpec(frames=8, height=24, width=24, train=40, val=20,
                                                               test=20), "test")
    frames = np.repeat(clips[0][..., None], 3, axis=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame{i}.png")
    from_folder = video.stream(model, vdata.read_frames(folder), (h, w), every=4)
    direct = video.stream(model, iter(frames), (h, w), every=4)
    assert [r["frame"] for r in from_folder] == [4, 8] and from_folder[-1]["top"] == direct[-1]["top"]
    chunked = video.stream(model, iter(frames), (h, w), every=4, chunk=3)  # 3 + 3 + 2 frames
    assert chunked[-1]["frame"] == 8 and chunked[-1]["top"][0][0] == direct[-1]["top"][0][0]
    vdata.write_video(tmp_path / "clip.mp4", frames)
    from_file = video.stream(model, vdata.read_frames(tmp_path / "clip.mp4"), (h, w), every=8)
    assert from_file[-1]["frame"] == 8
    fused = video.stream(model.fuse_for_inference(), iter(frames), (h, w), every=4)  # --fused: same top-k
    assert [(n, pytest.approx(p, abs=1e-4)) for n, p in fused[-1]["top"]] == direct[-1]["top"]


def test_stream_cli_fused(run, capsys):
    out, _ = run
    assert main(["video", "stream", "--synthetic", "up", "--model", str(out), "--frames", "16", "--fused"]) == 0
    text = capsys.readouterr().out
    assert "(fused inference form)" in text and "frame    16" in text


def test_stream_bad_input_is_one_line(run, tmp_path, capsys):
    out, _ = run
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    cases = [
        (["video", "stream", str(tmp_path / "empty"), "--model", str(out)], "source"),
        (["video", "stream", str(tmp_path / "bad.mp4"), "--model", str(out)], "source"),
        (["video", "stream", "--model", str(out)], "either SOURCE"),
        (["video", "stream", "--synthetic", "sideways", "--model", str(out)], "unknown action"),
        (["video", "stream", "--synthetic", "--model", "movinet_a0"], "not a stream model"),
        (["video", "stream", "--synthetic", "--model", "nosuchmodel"], "neither a checkpoint"),
        (["video", "stream", "--synthetic", "--model", str(out), "--size", "8x8"], "--size"),
        (["video", "evaluate", str(tmp_path / "empty")], "holds no best.pt"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, (argv, err)


def test_video_train_cli_overrides_after_options(cache, tmp_path, capsys):
    assert main(["video", "train", "-o", str(tmp_path / "cli"), *TINY, "model.name=frameavg_r20"]) == 0
    assert "forward frame order" in capsys.readouterr().out
    assert main(["video", "train", "-o", str(tmp_path / "cli"), *TINY]) == 2  # the directory holds a run
    assert "--force" in capsys.readouterr().err
    assert main(["video", "train", "model.name=resnet20", *TINY, "-o", str(tmp_path / "x")]) == 2
    assert "image model" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sub_clip_training_under_ddp(cache, tmp_path):
    """Two processes, several backward passes per step (one per sub-clip): DDP averages each sub-clip's
    gradients and the run checkpoints like any other (rank 0 alone logs)."""
    import os
    import subprocess
    import sys

    from leancnn.train import load_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEANCNN_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "leancnn", "video", "train", "--nproc-per-node", "2", "-o", str(tmp_path / "ddp"),
           *TINY, "train.sub_clip=3", "train.threads=1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["world_size"] == 2 and state["config"]["train"]["sub_clip"] == 3
    assert out.stdout.count("epoch   1/1") == 1
