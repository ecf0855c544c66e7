"""MixStyle in training: config option, domain-balanced loader (also under 2-process DDP), the FixMatch-style
SSDG/UDA trainer, augmentations and the leave-one-domain-out command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from leancnn.cli import main as cli_main
from leancnn.config import DataConfig, ExperimentConfig, apply_overrides, from_dict
from leancnn.data import DigitsDataset
from leancnn.data.augment import cutout, strong_augment, weak_augment
from leancnn.errors import LeancnnError
from leancnn.nn.mixstyle import MixStyle, mixstyle_modules
from leancnn.tasks.classification import train_loader
from leancnn.tasks.classify import train
from leancnn.tasks.digits import build_datasets, build_model, build_unlabeled, held_out_wording, labeled_split
from leancnn.tasks.lodo import parse_variant, plan, run_lodo
from leancnn.tasks.semi import SemiTask
from leancnn.train import DistContext, Trainer, load_checkpoint

HERE = Path(__file__).parent


def cfg_of(*overrides: str) -> ExperimentConfig:
    return from_dict(ExperimentConfig, apply_overrides({}, list(overrides)))


MS = ["model.mixstyle.after=[conv1,conv2]"]
CROSS = [*MS, "model.mixstyle.mix=crossdomain", "data.sampler=domain"]
THREE = ["data.domains=[mnist,syn,uci]"]


# ----------------------------------------------------------------------------------------- config + model


@pytest.mark.slow
def test_config_inserts_mixstyle_and_checkpoints_stay_plain(tmp_path, tiny_overrides):
    cfg = cfg_of(*tiny_overrides, *THREE, *MS, "model.mixstyle.p=1.0", "model.mixstyle.alpha=0.3")
    model = build_model(cfg)
    mods = mixstyle_modules(model)
    assert [m.p for m in mods] == [1.0, 1.0] and all(m.alpha == 0.3 and m.mix == "random" for m in mods)
    summary = train(cfg, out=tmp_path / "run", quiet=True)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    plain = build_model(cfg_of(*tiny_overrides))
    assert set(state["model"]) == set(plain.state_dict())  # MixStyle adds no parameters or buffers
    assert summary["test"]["mnist"]["n"] > 0


def test_mixstyle_changes_training_but_not_evaluation(tiny_overrides):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    model = build_model(cfg_of(*tiny_overrides, *MS, "model.mixstyle.p=1.0"))
    model.eval()
    ref = model(x)
    with torch.no_grad():
        model.train()
        mixed = model(x)
        model.eval()
        assert torch.equal(model(x), ref)
    assert (mixed - ref).abs().max() > 1e-3


@pytest.mark.parametrize("overrides, message", [
    ([*MS, "model.mixstyle.mix=crossdomain"], "data.sampler=domain"),
    ([*CROSS, "data.domains_per_batch=3"], "data.domains_per_batch=2"),
    ([*CROSS, "data.domains=[mnist]"], "at least two"),
    (["model.mixstyle.after=[conv9]"], "valid names include: conv1, conv1.0"),
    ([*MS, "model.mixstyle.p=1.5"], "'model.mixstyle.p' must be in [0, 1], got 1.5"),
    ([*MS, "model.mixstyle.alpha=0"], "'model.mixstyle.alpha' must be > 0, got 0"),
    ([*MS, "model.mixstyle.mix=sideways"], "allowed values: random, crossdomain"),
    (["data.sampler=domain", "data.batch_size=63"], "must be a multiple of data.domains_per_batch=2"),
])
def test_bad_mixstyle_settings_fail_before_the_run_dir_exists(tmp_path, tiny_overrides, overrides, message):
    with pytest.raises((LeancnnError, ValueError)) as e:
        train(cfg_of(*tiny_overrides, *THREE, *overrides), out=tmp_path / "run", quiet=True)
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_domain_loader_batches_are_two_domain_halves_and_as_long_as_plain():
    cfg = cfg_of(*THREE, "data.batch_size=64")
    ds, _, _ = build_datasets(cfg.data)
    ctx = DistContext()
    dom = train_loader(ds, 64, 0, ctx, sampler="domain")
    plain = train_loader(ds, 64, 0, ctx)
    assert len(dom) == len(plain) == len(ds) // 64
    ms = MixStyle(p=1.0, mix="crossdomain")
    seen = set()
    for _, _, d in dom:
        assert len(d) == 64 and len(set(d[:32].tolist())) == 1 and len(set(d[32:].tolist())) == 1
        assert d[0] != d[32]
        assert (d[ms.partners(64)] != d).all()
        seen.add(tuple(sorted({int(d[0]), int(d[32])})))
    assert seen == {(0, 1), (0, 2), (1, 2)}  # every pair of domains occurs


@pytest.mark.slow
def test_domain_sampler_layout_under_two_process_ddp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "helpers" / "ddp_domain_batches.py"), str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # ours: every local batch is [A x 8 | B x 8] with A != B; crossdomain partners always from the other domain
    for r in ranks:
        for b in r["domain"]:
            d = b["dom"]
            assert len(d) == 16 and len(set(d[:8])) == 1 and len(set(d[8:])) == 1 and d[0] != d[8]
            assert all(p != q for p, q in zip(d, b["partner_dom"]))
    for epoch in (0, 1):
        idx = [[i for b in r["domain"] if b["epoch"] == epoch for i in b["idx"]] for r in ranks]
        assert len(idx[0]) == len(idx[1]) == (850 // 32) * 16  # same steps as plain sharding: 26 per rank
        assert len(set(idx[0]) | set(idx[1])) > 0.7 * 850  # the two ranks draw different samples
    for r in ranks:  # a domain that runs short is reshuffled, but a batch never repeats a sample
        for b in r["domain"]:
            assert len(set(b["idx"])) == len(b["idx"])
    assert [b["idx"] for b in ranks[0]["domain"] if b["epoch"] == 0] != \
        [b["idx"] for b in ranks[0]["domain"] if b["epoch"] == 1]  # set_epoch reshuffles
    # plain DDP sharding: the same "crossdomain" pairing often mixes two samples of one domain
    same = sum(p == q for r in ranks for b in r["random"] for p, q in zip(b["dom"], b["partner_dom"]))
    total = sum(len(b["dom"]) for r in ranks for b in r["random"])
    assert same / total > 0.2


# ----------------------------------------------------------------------------------------- SSDG / UDA


def test_labeled_split_takes_k_per_class_and_domain():
    ds = DigitsDataset(["mnist", "uci"], "train")
    lab, rest = labeled_split(ds, 3, seed=5)
    assert len(lab) == 2 * 10 * 3 and len(lab) + len(rest) == len(ds) and not set(lab) & set(rest)
    pairs = torch.stack([ds.domain_labels[lab], ds.targets[lab]], 1)
    assert torch.unique(pairs, dim=0, return_counts=True)[1].eq(3).all()
    assert labeled_split(ds, 3, seed=5)[0] == lab and labeled_split(ds, 3, seed=6)[0] != lab
    with pytest.raises(LeancnnError, match="has only"):
        labeled_split(ds, 10_000, seed=0)


def _record_mixstyle(monkeypatch):
    calls = []
    forward = MixStyle.forward

    def spy(self, x):
        out = forward(self, x)
        on = self.training and self.active and x.shape[0] > 1
        calls.append({"on": on, "mix": self.mix, "batch": x.shape[0], "grad": torch.is_grad_enabled(),
                      "perm": self.last_draw.get("perm") if on else None})
        return out

    monkeypatch.setattr(MixStyle, "forward", spy)
    return calls


@pytest.mark.slow
def test_ssdg_trainer_mixes_labelled_with_unlabelled_and_pseudo_labels_without_mixstyle(tmp_path, monkeypatch,
                                                                                        tiny_overrides):
    calls = _record_mixstyle(monkeypatch)
    cfg = cfg_of(*tiny_overrides, *THREE, "model.mixstyle.after=[conv1]", "model.mixstyle.p=1.0",
                 "data.labels_per_class=2", "data.batch_size=16", "semi.mode=ssdg", "data.limit_train=64",
                 "semi.threshold=0.0")
    summary = train(cfg, out=tmp_path / "ssdg", quiet=True)
    rec = summary["history"][0]
    assert rec["semi_mask_rate"] == 1.0 and 0 <= rec["semi_pseudo_acc"] <= 1 and rec["loss_u"] > 0
    train_calls = [c for c in calls if c["batch"] in (16, 32)]
    assert len(train_calls) == 3 * (64 // 16)  # per step: pseudo-label pass, labelled pass, strong pass
    for pseudo, labelled, strong in zip(train_calls[0::3], train_calls[1::3], train_calls[2::3]):
        assert pseudo["batch"] == 32 and not pseudo["on"] and not pseudo["grad"]
        assert labelled["batch"] == 16 and not labelled["on"]
        assert strong["batch"] == 32 and strong["on"] and strong["mix"] == "crossdomain"
        perm = strong["perm"]
        assert (perm[:16] >= 16).all() and (perm[16:] < 16).all()  # labelled <-> unlabelled
    # before training (the layout check's eval pass), after it and in evaluation, MixStyle is off
    steps = [i for i, c in enumerate(calls) if c["batch"] in (16, 32)]
    assert all(not c["on"] for c in calls[:steps[0]] + calls[steps[-1] + 1:])


@pytest.mark.slow
def test_uda_uses_the_target_train_split_unlabelled(tmp_path, tiny_overrides):
    cfg = cfg_of(*tiny_overrides, *THREE, "data.test_domains=[mnistm]", "data.test_split=test", *MS,
                 "semi.mode=uda", "data.limit_train=64", "data.batch_size=16")
    u = build_unlabeled(cfg)
    assert {int(d) for d in u.dataset.domain_labels} == {0} and u.dataset.domains == ("mnistm",)
    summary = train(cfg, out=tmp_path / "uda", quiet=True)
    assert summary["test"]["mnistm"]["n"] == 128  # limit_eval of the target's test split
    assert "semi_mask_rate" in summary["history"][0]


@pytest.mark.parametrize("overrides, message", [
    (["semi.mode=ssdg"], "labels_per_class"),
    (["semi.mode=uda"], "unlabelled target domains"),
    (["semi.mode=ssdg", "data.labels_per_class=2", "loss.name=bias"], "loss.name=ce"),
    (["semi.mode=uda", "semi.unlabeled_domains=[svhn]"], "unknown dataset 'svhn'"),
    (["semi.mode=uda", "data.test_domains=[mnistm]", *MS, "semi.unlabeled_batch_size=32"], "two equal halves"),
])
def test_bad_semi_settings(tmp_path, tiny_overrides, overrides, message):
    with pytest.raises(LeancnnError, match=message):
        train(cfg_of(*tiny_overrides, *THREE, *overrides), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------- augmentations


def test_weak_augment_is_a_translation_and_strong_is_seeded():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = weak_augment(x, max_shift=2)
    for i in range(4):  # the centre of each output is the input shifted by one offset in [-2, 2]^2
        assert any(torch.equal(y[i, :, 2:30, 2:30], x[i, :, 2 + a:30 + a, 2 + b:30 + b])
                   for a in range(-2, 3) for b in range(-2, 3))
    torch.manual_seed(1)
    s1 = strong_augment(x)
    torch.manual_seed(1)
    assert torch.equal(s1, strong_augment(x)) and s1.shape == x.shape
    assert torch.isfinite(s1).all() and s1.abs().max() <= 1
    c = cutout(torch.ones(2, 1, 8, 8), 4)
    assert ((c == 0).sum((1, 2, 3)) <= 16).all() and ((c == 0).sum((1, 2, 3)) >= 4).all()


# ----------------------------------------------------------------------------------------- leave-one-domain-out


def test_lodo_plan_holds_each_target_out():
    runs = plan({"model": {"name": "digits_cnn"}}, {"vanilla": [], "ms": MS}, ["mnist", "uci"], [0, 1],
                Path("/nonexistent"))
    assert len(runs) == 2 * 2 * 2
    for r in runs:
        assert r.target not in r.config.data.domains and r.config.data.test_domains == [r.target]
        assert len(r.config.data.domains) == 3 and r.config.train.seed == r.seed
        assert r.run_dir == Path("/nonexistent") / r.variant / r.target / f"seed{r.seed}"
    with pytest.raises(LeancnnError, match="unknown target domain 'svhn'"):
        plan({}, {"v": []}, ["svhn"], [0], Path("x"))
    with pytest.raises(LeancnnError, match="data.sampler=domain"):
        plan({}, {"v": ["model.mixstyle.after=[layer1]", "model.mixstyle.mix=crossdomain"]}, ["uci"], [0], Path("x"))
    assert parse_variant("cd: a.b=1 c=[x,y]") == ("cd", ["a.b=1", "c=[x,y]"])
    with pytest.raises(LeancnnError, match="expected 'NAME: key=value"):
        parse_variant("bad name: a=1")


@pytest.mark.slow
def test_lodo_runs_collects_and_reuses_finished_runs(tmp_path, tiny_overrides, capsys):
    base = apply_overrides({}, list(tiny_overrides))
    variants = {"vanilla": [], "cross": CROSS}
    res = run_lodo(base, variants, tmp_path, targets=["uci"], seeds=[0, 1], domains=["mnist", "syn", "uci"])
    assert not res["missing"] and set(res["acc"]) == {"vanilla", "cross"}
    assert all(0 <= a <= 1 for s in res["acc"]["cross"]["uci"].values() for a in [s])
    md = (tmp_path / "lodo.md").read_text()
    assert "| vanilla" in md and "| cross" in md and "± " in md and (tmp_path / "lodo.png").stat().st_size > 1000
    summary = tmp_path / "vanilla" / "uci" / "seed0" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    again = run_lodo(base, variants, tmp_path, targets=["uci"], seeds=[0, 1], domains=["mnist", "syn", "uci"])
    assert summary.stat().st_mtime_ns == stamp and again["acc"] == res["acc"]
    assert "0 to train" in capsys.readouterr().out


def test_lodo_cli_bad_input(tmp_path, capsys):
    assert cli_main(["lodo", "--variant", "bad name!: x=1", "-o", str(tmp_path)]) == 2
    assert "expected 'NAME: key=value" in capsys.readouterr().err
    assert cli_main(["lodo", "--targets", "svhn", "-o", str(tmp_path)]) == 2
    assert "unknown target domain 'svhn'" in capsys.readouterr().err
    assert cli_main(["lodo", "--shard", "3", "-o", str(tmp_path)]) == 2


# ----------------------------------------------------------------------------------------- reports say what was measured


class BoundedLogits(torch.nn.Module):
    """A linear classifier with logits in [-1, 1]: its softmax never exceeds e / (e + 9 / e) = 0.45."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 10)

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


@pytest.mark.parametrize("threshold", [0.95, 0.0])
def test_semi_pseudo_acc_is_null_without_confident_pseudo_labels(tmp_path, capsys, threshold):
    torch.manual_seed(0)
    x, y = torch.randn(48, 3, 2, 2), torch.randint(0, 10, (48,))
    model = BoundedLogits()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays as it is: pseudo-labels are known
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    task = SemiTask(torch.nn.CrossEntropyLoss(), DataLoader(TensorDataset(x[16:], y[16:]), batch_size=8),
                    threshold=threshold, weak=lambda t: t, strong=lambda t: t)
    trainer = Trainer(model=model, task=task, optimizer=opt, scheduler=sched,
                      train_loader=DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8), epochs=1,
                      out_dir=tmp_path, device=torch.device("cpu"))
    trainer.fit()
    line = (tmp_path / "metrics.jsonl").read_text()
    rec = json.loads(line)
    out = capsys.readouterr().out
    if threshold > 0:  # no unlabelled sample is confident: no accuracy to report, not 0
        assert '"semi_pseudo_acc": null' in line and rec["semi_pseudo_acc"] is None
        assert rec["semi_mask_rate"] == 0.0 and rec["loss_u"] == 0.0
        assert "confident 0.0% (pseudo-label acc n/a)" in out
    else:  # every unlabelled sample is confident: the accuracy of the fixed model's predictions on them
        with torch.no_grad():
            right = int((model(x[16:]).argmax(1) == y[16:]).sum())
        assert right > 0 and rec["semi_mask_rate"] == 1.0 and rec["semi_pseudo_acc"] == right / 32
        assert f"confident 100.0% (pseudo-label acc {right / 32:.3f})" in out


def test_held_out_wording():
    assert held_out_wording("uci", 1797, DataConfig()) == "the whole held-out domain uci (1,797 images)"
    assert held_out_wording("uci", 128, DataConfig(limit_eval=128)) == (
        "128 of the 1,797 images of the held-out domain uci, drawn at random (data.limit_eval=128)")
    assert held_out_wording("uci", 269, DataConfig(test_split="test")) == (
        "the test split of the held-out domain uci (269 images)")
    assert held_out_wording("uci", 100, DataConfig(test_split="test", limit_eval=100)) == (
        "100 of the 269 images of the test split of the held-out domain uci, drawn at random (data.limit_eval=100)")


@pytest.mark.slow
def test_lodo_report_says_what_was_tested(tmp_path, tiny_overrides):
    base = apply_overrides({}, list(tiny_overrides))  # data.limit_eval=128
    res = run_lodo(base, {"cut": [], "whole": ["data.limit_eval=0"]}, tmp_path / "a", targets=["uci"], seeds=[0],
                   domains=["mnist", "uci"])
    cut = "128 of the 1,797 images of the held-out domain uci, drawn at random (data.limit_eval=128)"
    assert res["tested_on"] == {"uci": f"cut: {cut}; whole: the whole held-out domain uci (1,797 images)"}
    assert f"Tested on {res['tested_on']['uci']}." in (tmp_path / "a" / "lodo.md").read_text()
    assert json.loads((tmp_path / "a" / "lodo.json").read_text())["tested_on"] == res["tested_on"]

    res = run_lodo(base, {"run": []}, tmp_path / "b", targets=["uci"], seeds=[0], domains=["mnist", "uci"])
    md = (tmp_path / "b" / "lodo.md").read_text()
    assert "whole" not in md and f"Tested on {cut}." in md

    split = apply_overrides(base, ["data.limit_eval=0", "data.test_split=test"])
    run_lodo(split, {"run": []}, tmp_path / "c", targets=["uci"], seeds=[0], domains=["mnist", "uci"])
    md = (tmp_path / "c" / "lodo.md").read_text()
    assert "whole" not in md and "Tested on the test split of the held-out domain uci (269 images)." in md
