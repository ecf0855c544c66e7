"""Bias Loss against hand-computed values, its degenerate batches, errors, DDP normalisation, feature taps."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from leancnn.config import load_config
from leancnn.losses import BiasLoss, build_loss, feature_variance
from leancnn.nn import WithFeatures, last_conv_name
from leancnn.tasks.classify import train
from leancnn.train import load_checkpoint


def hand_batch():
    """Three samples of 1x2x2 features with variances 0, 4/3, 16/3 (so v_hat = 0, 0.25, 1) and uniform logits."""
    features = torch.tensor([[1.0, 1, 1, 1], [0, 2, 0, 2], [0, 4, 0, 4]]).view(3, 1, 2, 2)
    logits = torch.zeros(3, 4)
    targets = torch.tensor([0, 1, 3])
    return logits, targets, features


def test_variance_is_unbiased_over_all_values():
    _, _, f = hand_batch()
    assert feature_variance(f).tolist() == pytest.approx([0.0, 4 / 3, 16 / 3])
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    ref = torch.stack([s.flatten().var(unbiased=True) for s in x]).float()
    torch.testing.assert_close(feature_variance(x.half()), ref, rtol=2e-3, atol=1e-3)  # fp16 in, fp32 maths
    assert feature_variance(x.half()).dtype == torch.float32


def test_paper_weights_by_hand():
    loss_fn = BiasLoss()
    loss = loss_fn(*hand_batch()[:2], features=hand_batch()[2])
    z = [math.exp(0.3 * v) - 0.3 for v in (0.0, 0.25, 1.0)]
    assert loss_fn.last["v_hat"].tolist() == pytest.approx([0.0, 0.25, 1.0])
    assert loss_fn.last["weight"].tolist() == pytest.approx(z)
    assert loss.item() == pytest.approx(sum(z) / 3 * math.log(4), rel=1e-6)
    assert z[0] == pytest.approx(0.7) and z[2] == pytest.approx(1.0498588, rel=1e-6)


def test_legacy_weight_form_by_hand():
    loss = BiasLoss(weight_form="legacy")(*hand_batch()[:2], features=hand_batch()[2])
    z = [math.exp(0.3 * v) - 1 + 0.3 for v in (0.0, 0.25, 1.0)]  # pre-2022 reference: exp(beta v) - 1 + alpha
    assert loss.item() == pytest.approx(sum(z) / 3 * math.log(4), rel=1e-6)


def test_global_normalisation_uses_running_minimum():
    loss_fn = BiasLoss(normalisation="global")
    logits, targets, f = hand_batch()
    loss_fn(logits, targets, features=f)
    assert loss_fn.global_min.item() == 0.0
    f2 = f[1:] * 2  # variances 16/3 and 64/3: batch range 16, but the all-time minimum is still 0
    loss_fn(logits[1:], targets[1:], features=f2)
    assert loss_fn.last["v_hat"].tolist() == pytest.approx([(16 / 3) / 16, (64 / 3) / 16])  # > 1 is allowed
    assert "global_min" in loss_fn.state_dict()
    fresh = BiasLoss(normalisation="global")
    fresh.load_state_dict(loss_fn.state_dict())
    assert fresh.global_min.item() == 0.0
    fresh.reset_global_min()
    assert math.isinf(fresh.global_min.item())


def test_label_smoothing():
    logits, targets, f = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0]), torch.randn(6, 2, 3, 3)
    loss_fn = BiasLoss(label_smoothing=0.1)
    loss = loss_fn(logits, targets, features=f)
    ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)
    assert loss.item() == pytest.approx((loss_fn.last["weight"] * ce).mean().item(), rel=1e-6)


def test_gradient_flows_to_logits_only():
    logits = torch.randn(4, 3, requires_grad=True)
    features = torch.randn(4, 2, 2, 2, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 1])
    loss_fn = BiasLoss()
    loss_fn(logits, targets, features=features).backward()
    assert features.grad is None
    z = loss_fn.last["weight"]
    expected = z[:, None] * (logits.detach().softmax(1) - F.one_hot(targets, 3)) / 4
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("features", [
    torch.randn(1, 3, 2, 2),                       # one sample
    torch.ones(4, 3, 2, 2),                        # all variances equal (zero)
    torch.randn(1, 3, 2, 2).expand(5, 3, 2, 2),    # identical samples
])
def test_degenerate_batches_give_plain_cross_entropy(features):
    n = features.shape[0]
    logits, targets = torch.randn(n, 3), torch.arange(n) % 3
    loss_fn = BiasLoss()
    loss = loss_fn(logits, targets, features=features)
    assert loss_fn.last["degenerate"]
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_never_give_nan(bad):
    logits, targets, f = hand_batch()
    f = torch.cat([f, torch.full((1, 1, 2, 2), bad)])
    logits, targets = torch.zeros(4, 4), torch.tensor([0, 1, 3, 2])
    loss_fn = BiasLoss()
    loss = loss_fn(logits, targets, features=f)
    assert torch.isfinite(loss)
    # the broken sample gets the lowest weight; the others keep their min-max over finite variances
    assert loss_fn.last["v_hat"].tolist() == pytest.approx([0.0, 0.25, 1.0, 0.0])
    all_bad = torch.full((3, 1, 2, 2), bad)
    assert torch.isfinite(loss_fn(torch.zeros(3, 4), torch.tensor([0, 1, 2]), features=all_bad))
    assert loss_fn.last["degenerate"]


def test_bad_input_names_the_argument():
    loss_fn = BiasLoss()
    f = torch.randn(4, 2, 2, 2)
    with pytest.raises(ValueError, match="targets must be class indices of shape \\[4\\]"):
        loss_fn(torch.randn(4, 3), torch.zeros(5, dtype=torch.long), features=f)
    with pytest.raises(ValueError, match="logits must be"):
        loss_fn(torch.randn(4), torch.zeros(4, dtype=torch.long), features=f)
    with pytest.raises(ValueError, match="targets must lie in \\[0, 2\\]"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), features=f)
    with pytest.raises(ValueError, match="targets must be integer class indices"):
        loss_fn(torch.randn(4, 3), torch.rand(4), features=f)
    with pytest.raises(ValueError, match="features must be a feature map .* spatial"):
        loss_fn(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), features=torch.randn(4, 8))
    with pytest.raises(ValueError, match="features must have the batch size"):
        loss_fn(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), features=torch.randn(3, 2, 2, 2))
    with pytest.raises(ValueError, match="alpha=0.0, beta=1.0 make weights <= 0"):
        BiasLoss(alpha=0.0, beta=1.0)
    with pytest.raises(ValueError, match="alpha=-2.0, beta=0.3 make weights <= 0"):
        BiasLoss(alpha=-2.0, beta=0.3)  # exp(-2) - 0.3 < 0 at v_hat = 1
    with pytest.raises(ValueError, match="alpha=0.0, beta=1.0 make weights <= 0"):
        BiasLoss(alpha=0.0, beta=1.0, weight_form="legacy")  # exp(v) - 1 + 0 is 0 at v_hat = 0
    with pytest.raises(ValueError, match="normalisation must be"):
        BiasLoss(normalisation="batch")
    with pytest.raises(Exception, match="loss.*alpha=0.0, beta=1.0"):
        build_loss(load_config(None, ["loss.name=bias", "loss.alpha=0", "loss.beta=1.0"]).loss)


def test_diagnostics_count_low_diversity_samples():
    loss_fn = BiasLoss(low_threshold=0.3)
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 5.0]])  # predicts 0, 1, 3
    targets = torch.tensor([1, 1, 3])  # first (v_hat 0) wrong, second (v_hat 0.25) right, third right
    loss_fn(logits, targets, features=hand_batch()[2])
    stats = loss_fn.summarise(loss_fn.epoch_counters())
    assert stats["bias_low_share"] == pytest.approx(2 / 3)
    assert stats["bias_low_acc"] == pytest.approx(0.5)
    assert stats["bias_rest_acc"] == pytest.approx(1.0)
    z = [math.exp(0.3 * v) - 0.3 for v in (0.0, 0.25, 1.0)]
    assert stats["bias_mean_weight"] == pytest.approx(sum(z) / 3)
    assert loss_fn.epoch_counters() == [0.0] * 5  # reset after reading


# ----------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world, init_file, features, logits, targets, sync, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    half = features.shape[0] // world
    sl = slice(rank * half, (rank + 1) * half)
    loss_fn = BiasLoss(sync=sync)
    loss = loss_fn(logits[sl], targets[sl], features=features[sl])
    torch.save({"loss": loss.item(), "v_hat": loss_fn.last["v_hat"]}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sync", [True, False])
def test_ddp_min_max_all_reduced(sync, tmp_path):
    torch.manual_seed(0)
    features = torch.randn(8, 3, 2, 2) * torch.linspace(0.5, 3, 8).view(8, 1, 1, 1)
    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), features, logits, targets, sync, str(tmp_path / "r")),
             nprocs=2, join=True)
    got = [torch.load(tmp_path / f"r.{r}") for r in range(2)]
    full = BiasLoss()
    full_loss = full(logits, targets, features=features)
    v_hat = torch.cat([g["v_hat"] for g in got])
    if sync:  # the same normalisation as one process on the global batch; DDP averages the two halves
        torch.testing.assert_close(v_hat, full.last["v_hat"])
        assert (got[0]["loss"] + got[1]["loss"]) / 2 == pytest.approx(full_loss.item(), rel=1e-5)
    else:  # per-rank min-max: each half has its own 0 and 1
        assert sorted(v_hat.tolist()).count(0.0) == 2 and sorted(v_hat.tolist()).count(1.0) == 2


# ----------------------------------------------------------------------------------------- feature taps


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                  nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_tap_any_module():
    net = UserNet()
    assert last_conv_name(net) == "body.2"
    tap = WithFeatures(net)
    logits, feats = tap(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10) and feats.shape == (2, 16, 7, 7)
    named = WithFeatures(net, "body.1")
    assert named(torch.randn(2, 3, 16, 16))[1].shape == (2, 8, 16, 16)
    named.remove()
    with pytest.raises(ValueError, match="layer 'body.9' is not a module of UserNet; valid names: body, body.0"):
        WithFeatures(net, "body.9")
    with pytest.raises(ValueError, match="has no Conv2d"):
        WithFeatures(nn.Linear(3, 3))
    loss = BiasLoss()(logits, torch.tensor([1, 2]), features=feats)
    loss.backward()
    assert net.fc.weight.grad is not None and net.body[0].weight.grad is not None


@pytest.mark.slow
def test_training_with_bias_loss_logs_diagnostics(tmp_path):
    cfg = load_config(None, ["model.name=resnet20", "loss.name=bias", "loss.normalisation=global",
                             "loss.label_smoothing=0.1", "data.limit_train=256", "data.limit_eval=64",
                             "data.batch_size=64", "train.epochs=2", "train.threads=1"])
    train(cfg, out=tmp_path / "run", quiet=True)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert 0 < r["bias_low_share"] < 1
        assert 0.7 <= r["bias_mean_weight"]  # global mode: weights >= 1 - beta, unbounded above
        assert 0 <= r["bias_low_acc"] <= 1 and 0 <= r["bias_rest_acc"] <= 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert torch.isfinite(state["loss"]["global_min"])  # the running minimum is saved for exact resume


@pytest.mark.slow
def test_feature_layer_option_and_variance_plot(tmp_path, capsys):
    from leancnn.cli import main

    tiny = ["model.name=resnet20", "loss.name=bias", "data.limit_train=128", "data.limit_eval=64",
            "data.batch_size=64", "train.epochs=1"]
    assert main(["train", *tiny, "loss.feature_layer=layer2.0.conv1", "-o", str(tmp_path / "run")]) == 0
    png = tmp_path / "variance.png"
    assert main(["evaluate", str(tmp_path / "run"), "--domains", "uci", "--plot-variance", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["train", *tiny, "loss.feature_layer=layer9", "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "layer 'layer9' is not a module of ResNet; valid names: stem" in err
    assert not (tmp_path / "bad").exists()  # checked before the run directory is made
