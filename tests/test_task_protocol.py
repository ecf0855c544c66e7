"""A new task is a description: a toy regression task defined in this file (docs/architecture.md shows the same
one) trains through the one lifecycle, resumes exactly, is rebuilt by ``load_run`` from its checkpoint alone,
and needs no change to the engine or the lifecycle. Plus: every built-in task records itself in its
checkpoints, and checkpoints written before the ``task`` field existed still load."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from leancnn.config import OptimConfig, ScheduleConfig, TrainConfig, from_dict, load_config, rule, to_dict
from leancnn.errors import LeancnnError
from leancnn.tasks.lifecycle import train_task
from leancnn.tasks.protocol import Prepared, TaskSpec, get_task, list_tasks, load_run, register_task, task_of
from leancnn.train import Task


# ----------------------------------------------------------------------------------------- the toy task


@dataclass
class LineData:
    n: int = rule(64, ge=8)  # points on the line y = x . (1, -2, 0.5)
    batch_size: int = rule(16, ge=1)


@dataclass
class LineConfig:
    name: str = rule("line", name=True)
    output_dir: str = rule("runs", nonempty=True)
    data: LineData = field(default_factory=LineData)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.05, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="constant"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, device="cpu", threads=1))


class LineTask(Task):
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
            return {"val_mae": (trainer.model(x).squeeze(1) - y).abs().mean().item()}


class LineSpec(TaskSpec):
    name, config_cls, kind, commands = "toy-line", LineConfig, "line fit", "the protocol tests"

    def prepare(self, cfg, ctx, device, checked, resuming):
        g = torch.Generator().manual_seed(cfg.train.seed)
        x = torch.randn(cfg.data.n, 3, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5])
        b = cfg.data.batch_size
        batches = [(x[i:i + b], y[i:i + b]) for i in range(0, cfg.data.n, b)]
        return Prepared(model=self.model_from_state(cfg, {}), task=LineTask(), train_loader=batches,
                        val_loader=(x, y))

    def data_identity(self, cfg, prepared):
        return {"line": "1,-2,0.5"}

    def summarise(self, cfg, prepared, trainer, device, ctx, run_dir):
        return {"epochs": cfg.train.epochs, "best_val_mae": trainer.best}

    def model_from_state(self, cfg, state):
        return torch.nn.Linear(3, 1)


SPEC = register_task(LineSpec())


def _cfg(*overrides: str) -> LineConfig:
    from leancnn.config import apply_overrides

    return from_dict(LineConfig, apply_overrides(to_dict(LineConfig()), list(overrides)))


# ----------------------------------------------------------------------------------------- tests


def test_a_task_defined_in_a_test_file_trains_through_the_lifecycle(tmp_path, capsys):
    summary = train_task(SPEC, _cfg(), out=tmp_path / "a")
    run = tmp_path / "a"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "fingerprint.json", "metrics.jsonl", "last.pt",
                                               "best.pt", "summary.json", "curves.png"}
    assert summary["task"] == "toy-line" and json.loads((run / "summary.json").read_text())["task"] == "toy-line"
    maes = [r["val_mae"] for r in summary["history"]]
    assert len(maes) == 3 and maes[-1] < maes[0]  # it learns
    assert summary["best_val_mae"] == min(maes)
    assert torch.load(run / "last.pt", weights_only=False)["task"] == "toy-line"
    assert "points/s" in capsys.readouterr().out  # the engine's epoch line, in the task's unit


def test_the_toy_task_resumes_exactly_and_refuses_a_changed_key(tmp_path):
    whole = train_task(SPEC, _cfg(), out=tmp_path / "whole", quiet=True)
    train_task(SPEC, _cfg("train.epochs=2"), out=tmp_path / "part", quiet=True)
    resumed = train_task(SPEC, _cfg(), out=tmp_path / "part", resume=tmp_path / "part" / "last.pt", quiet=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert [r["val_mae"] for r in resumed["history"]] == [r["val_mae"] for r in whole["history"]]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(LeancnnError, match="'data.n' changed"):
        train_task(SPEC, _cfg("data.n=32"), out=tmp_path / "part", resume=tmp_path / "part" / "last.pt")


def test_load_run_rebuilds_the_toy_run_and_refuses_it_where_another_task_is_needed(tmp_path):
    train_task(SPEC, _cfg("train.epochs=1"), out=tmp_path / "a", quiet=True)
    assert "toy-line" in list_tasks() and get_task("toy-line") is SPEC
    run = load_run(tmp_path / "a")  # a run directory: best.pt
    assert run.task is SPEC and run.path.name == "best.pt" and to_dict(run.cfg) == to_dict(_cfg("train.epochs=1"))
    saved = torch.load(tmp_path / "a" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in run.model.state_dict().items()) and not run.model.training
    with pytest.raises(LeancnnError, match=r"is a line fit run, but `leancnn evaluate` needs a classifier run; "
                                           r"a line fit run is for the protocol tests"):
        load_run(tmp_path / "a", tasks=("classify",), command="leancnn evaluate", need="a classifier run")
    with pytest.raises(LeancnnError, match="was written by the 'toy-line' task; it cannot resume a 'classify' run"):
        get_task("classify")  # the built-ins are imported on first use
        from leancnn.tasks.classify import train

        train(load_config(None, ["data.limit_train=64", "train.epochs=1"]), out=tmp_path / "b",
              resume=tmp_path / "a" / "last.pt")
    assert not (tmp_path / "b").exists()


def test_checkpoints_without_a_task_field_still_load_or_say_how_to_add_it(tmp_path):
    from leancnn.tasks.digits import build_model

    cfg = load_config(None, ["model.name=digits_cnn"])
    model = build_model(cfg)
    old = tmp_path / "old.pt"  # what a classifier checkpoint held before checkpoints named their task
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, old)
    run = load_run(old)
    assert run.task.name == "classify" and run.cfg.model.name == "digits_cnn"
    bare = tmp_path / "bare.pt"
    torch.save({"model": model.state_dict(), "config": {}}, bare)
    with pytest.raises(LeancnnError, match=r"has no 'task' field and its config does not say which task wrote it; "
                                           r"add it with: python -c"):
        load_run(bare)
    assert task_of({"task": "video", "config": {}}) == "video"
