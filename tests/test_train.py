"""The training engine: resume exactness (in-process crash and a real SIGKILL), atomic checkpoints,
schedules, and 2-process DDP against the hand-computed averaged update."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from leancnn.config import ScheduleConfig, load_config
from leancnn.errors import LeancnnError
from leancnn.models import create_model
from leancnn.tasks.classify import train
from leancnn.tasks.digits import build_datasets
from leancnn.train import load_checkpoint, lr_factor, save_checkpoint, seed_everything
from leancnn.train.engine import Task, Trainer

RESUME_OVERRIDES = ["model.name=resnet20", "data.limit_train=256", "data.limit_eval=64", "data.batch_size=64",
                    "data.augment=true", "train.epochs=2", "schedule.warmup_epochs=0.5", "train.threads=1"]


class Crash(RuntimeError):
    pass


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"tensor {k} differs"


@pytest.mark.slow
def test_resume_after_crash_is_exact(tmp_path):
    cfg = load_config(None, RESUME_OVERRIDES)
    train(cfg, out=tmp_path / "straight", quiet=True)

    def crash_after_first_epoch(trainer, record):
        if record["epoch"] == 1:
            raise Crash("killed")

    with pytest.raises(Crash):
        train(cfg, out=tmp_path / "resumed", callbacks=[crash_after_first_epoch], quiet=True)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    train(cfg, out=tmp_path / "resumed", resume=tmp_path / "resumed" / "last.pt", quiet=True)

    _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt"))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for k, st in straight["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], resumed["optimizer"]["state"][k]["momentum_buffer"])
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert [json.loads(x)["train_loss"] for x in lines] == [r["train_loss"] for r in straight["history"]]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "leancnn", *args]


@pytest.mark.slow
def test_sigkill_then_resume_matches_straight_run(tmp_path):
    overrides = ["model.name=digits_cnn", "data.limit_train=1024", "data.limit_eval=64", "data.batch_size=64",
                 "train.epochs=3", "train.threads=1", "optim.lr=0.02"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("train", *overrides, "-o", str(tmp_path / "straight")), check=True, env=env,
                   capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", *overrides, "-o", str(run)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "last.pt")["epoch"]  # a complete, readable checkpoint
    assert 1 <= killed_at <= 3
    out = subprocess.run(_cli("train", "--resume", str(run / "last.pt")), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(run / "last.pt"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpo")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(100)}})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:50])
    with pytest.raises(LeancnnError, match="cannot be read"):
        load_checkpoint(bad)


def test_schedules():
    cos = ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start=0.1, min_lr=0.0)
    assert lr_factor(0, cos, 10, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(5, cos, 10, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(10, cos, 10, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, cos, 10, 10, 0.1) == pytest.approx(0.5)  # half-way through the cosine part
    assert lr_factor(100, cos, 10, 10, 0.1) == pytest.approx(0.0, abs=1e-12)
    floor = ScheduleConfig(name="cosine", min_lr=0.01)
    assert lr_factor(100, floor, 10, 10, 0.1) == pytest.approx(0.1)  # min_lr / base_lr
    ms = ScheduleConfig(name="multistep", milestones=[3, 6], gamma=0.1)
    assert [lr_factor(e * 10, ms, 10, 10, 0.1) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_label_smoothing_and_grad_clip_reach_training(tmp_path):
    cfg = load_config(None, ["model.name=digits_cnn", "data.limit_train=128", "data.limit_eval=32",
                             "data.batch_size=64", "train.epochs=1", "loss.label_smoothing=0.2",
                             "train.grad_clip=0.5", "optim.name=adamw", "optim.lr=0.001"])
    s = train(cfg, out=tmp_path / "run", quiet=True)
    assert s["history"][0]["train_loss"] > 0
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["config"]["loss"]["label_smoothing"] == 0.2
    assert "exp_avg" in next(iter(saved["optimizer"]["state"].values()))  # AdamW state


# ----------------------------------------------------------------------------------------- DDP

DDP_OVERRIDES = ["model.name=digits_cnn", "data.limit_train=128", "data.limit_eval=32", "data.batch_size=32",
                 "train.epochs=1", "schedule.name=constant", "optim.lr=0.05", "optim.momentum=0.9",
                 "optim.weight_decay=0.0005", "train.seed=3"]


def _replay(world: int, ranks: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Replay DDP by hand: each rank's local batch from DistributedSampler, the gradients of ``ranks``
    (default: all) averaged, one SGD step per batch; in the channels-last layout the CPU run trains in."""
    cfg = load_config(None, DDP_OVERRIDES)
    seed_everything(cfg.train.seed)
    model = create_model(cfg.model.name).to(memory_format=torch.channels_last)
    from leancnn.train import build_optimizer

    opt = build_optimizer(model, cfg.optim)
    train_ds, _, _ = build_datasets(cfg.data)
    local = cfg.data.batch_size // world
    shards = []
    for rank in range(world):
        s = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
        s.set_epoch(0)
        idx = list(s)
        shards.append([idx[i:i + local] for i in range(0, len(idx) - local + 1, local)])
    for step in range(len(shards[0])):
        grads = []
        for rank in ranks if ranks is not None else range(world):
            batch = [train_ds[i] for i in shards[rank][step]]
            x = torch.stack([b[0] for b in batch]).contiguous(memory_format=torch.channels_last)
            y = torch.tensor([b[1] for b in batch])
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for p, *gs in zip(model.parameters(), *grads):
            p.grad = torch.stack(gs).mean(0)
        opt.step()
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_ddp_two_processes_equals_averaged_update(tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "leancnn", "train", *DDP_OVERRIDES, "-o", str(run)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    got = load_checkpoint(run / "last.pt")
    assert got["world_size"] == 2 and len(got["rng"]) == 2
    assert out.stdout.count("epoch   1/1") == 1  # rank 0 alone logs
    expected = _replay(world=2)
    for k, v in expected.items():
        torch.testing.assert_close(got["model"][k], v, rtol=1e-5, atol=1e-6, msg=f"{k} differs")
    # rank r holds perm[r::2] of the same permutation, so (no BatchNorm) the averaged update is also the
    # single-process update on the global batch of 32
    full_batch = _replay(world=1)
    for k, v in full_batch.items():
        torch.testing.assert_close(got["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"{k} differs")
    # and not what rank 0 alone would have computed: the gradients really were exchanged
    rank0_only = _replay(world=2, ranks=[0])
    assert max((got["model"][k] - rank0_only[k]).abs().max().item() for k in expected) > 1e-4


def test_loss_that_takes_features_receives_the_last_feature_map(tmp_path):
    from leancnn.config import OptimConfig
    from leancnn.tasks.classification import ClassifyTask, accepts_features, eval_loader, train_loader
    from leancnn.train import DistContext, Trainer, build_optimizer, build_scheduler

    seen = []

    def feature_loss(logits, targets, features):
        seen.append(tuple(features.shape))
        return F.cross_entropy(logits, targets) + 0.0 * features.float().var()

    assert accepts_features(feature_loss) and not accepts_features(torch.nn.CrossEntropyLoss())
    cfg = load_config(None, ["data.limit_train=64", "data.limit_eval=32"])
    train_ds, val_ds, _ = build_datasets(cfg.data)
    model = create_model("resnet20")
    loader = train_loader(train_ds, 32, 0, DistContext())
    opt = build_optimizer(model, OptimConfig())
    trainer = Trainer(model=model, task=ClassifyTask(feature_loss), optimizer=opt,
                      scheduler=build_scheduler(opt, ScheduleConfig(), 1, len(loader)), train_loader=loader,
                      val_loader=eval_loader(val_ds, 64), epochs=1, out_dir=tmp_path, device=torch.device("cpu"))
    trainer.fit()
    assert seen == [(32, 64, 8, 8)] * 2  # ResNet-20's last stage, before pooling
    assert (tmp_path / "best.pt").exists()


class _RegressTask(Task):
    """A task the engine has never heard of: regression with a mean-absolute-error metric, best on the lowest
    validation loss."""

    unit = "points"
    best_metric, best_mode = "val_mae", "min"

    def train_step(self, trainer, batch):
        x, y = batch
        pred = trainer.net(x).squeeze(1)
        loss = ((pred - y) ** 2).mean()
        trainer.backward(loss)
        return {"n": len(y), "loss": loss.item() * len(y), "mae": (pred - y).abs().sum().item()}

    def evaluate(self, trainer):
        x, y = trainer.val_loader
        with torch.no_grad():
            return {"val_mae": (trainer.model(x).squeeze(1) - y).abs().mean().item(), "val_note": None}

    def describe(self, record, trainer):
        return "regressing"


def test_the_engine_runs_a_task_it_does_not_know(tmp_path, capsys):
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model=model, task=_RegressTask(), optimizer=opt,
                      scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1), train_loader=loader,
                      val_loader=(x, y), epochs=3, out_dir=tmp_path, device=torch.device("cpu"))
    history = trainer.fit()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "train loss" in out[0] and " mae " in out[0] and "val mae" in out[0]
    assert "note n/a" in out[0] and "regressing" in out[0] and re.search(r"points/s( \(\d+ thr\))?$", out[0])
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [set(r) >= {"train_loss", "train_mae", "val_mae", "train_points_per_s"} for r in lines] == [True] * 3
    maes = [r["val_mae"] for r in history]
    assert maes[-1] < maes[0]  # it learns
    assert trainer.best == min(maes)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["best_metric"] == "val_mae" and best["epoch"] == 1 + maes.index(min(maes))
    # exact resume of a finished run restores the best value
    again = Trainer(model=model, task=_RegressTask(), optimizer=opt,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1), train_loader=loader,
                    val_loader=(x, y), epochs=3, out_dir=tmp_path, device=torch.device("cpu"))
    again.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    assert again.best == trainer.best and again.epoch == 3
