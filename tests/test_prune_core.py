"""Structural pruning core: groups, criteria, MAC targets, plans (small models, one thread)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import leancnn
from leancnn.errors import LeancnnError
from leancnn.models.resnet import PadShortcut
from leancnn.nn.counting import count_macs, count_params
from leancnn.prune import (
    CRITERIA,
    ChannelMapShortcut,
    apply_plan,
    compute_scores,
    get_criterion,
    global_plan,
    n_keep,
    prunable_groups,
    prune_model,
    prune_with_scores,
    ratio_for_target,
)
from leancnn.prune.graph import _graph
from leancnn.prune.plan import _MacsModel

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CatNet(nn.Module):
    """Two conv branches concatenated along channels, then a conv, pooling and a classifier."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(20, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.c(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyNet(nn.Module):
    """conv1 (2 -> 5, 1x1) -> BN -> ReLU -> conv2 (5 -> 4, 3x3) -> BN -> ReLU -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return CatNet() if name == "catnet" else leancnn.create_model(name, num_classes=7)


def _rand_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and scales, so that channels differ."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.1
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


# ------------------------------------------------------------------------------------------------ pruning


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv3_small", "skipnet_xs", "digits_cnn", "catnet"])
def test_prune_to_half_macs(name):
    model = _model(name).eval()
    pruned, info = prune_model(model, X32, target_macs=0.5, criterion="l1")
    macs = count_macs(model, (3, 32, 32))
    assert info["macs_before"] == macs
    assert abs(count_macs(pruned, (3, 32, 32)) / macs - 0.5) <= 0.02
    assert abs(info["ratio"] - 0.5) <= 0.02
    assert info["params_after"] == count_params(pruned) < count_params(model)
    with torch.no_grad():
        assert pruned.eval()(X32).shape == (2, _model(name)(X32).shape[1])
    shrunk = [n for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)
              and m.weight.shape != model.get_submodule(n).weight.shape]
    assert shrunk  # tensors really shrink
    assert set(info["plan"]) == {g.name for g in prunable_groups(model, X32)}
    # the MAC model used by the bisections predicts the measured count exactly
    graph = _graph(model, X32)
    removed = {n: graph.by_name[n].n_channels - len(k) for n, k in info["plan"].items()}
    assert _MacsModel(graph, (3, 32, 32)).fraction(removed) == pytest.approx(info["ratio"], abs=1e-9)


def test_resnet20_groups_and_option_a_shortcut():
    model = _model("resnet20").eval()
    groups = {g.name: g for g in prunable_groups(model, X32)}
    # one group per block's first conv + one residual stream per stage (the pad shortcut decouples stages)
    assert len(groups) == 12
    assert {"stem.0", "layer2.0.conv2.0", "layer3.0.conv2.0"} <= set(groups)
    g = groups["layer1.0.conv1.0"]
    assert (g.n_channels, g.bn, g.act) == (16, "layer1.0.conv1.1", "layer1.0.conv1.2")
    assert "layer1.0.conv2.0" in g.consumers
    assert "layer2.0.shortcut" in groups["layer2.0.conv2.0"].layers and "layer2.0.shortcut" in groups["stem.0"].layers
    assert "fc" not in {p for g in groups.values() for p in g.producers}
    # an unpruned copy computes exactly what the original does; the original keeps its PadShortcut
    scores = {n: np.arange(g.n_channels, dtype=float) for n, g in groups.items()}
    same, _ = prune_with_scores(model, X32, scores, 0.0)
    assert isinstance(same.layer2[0].shortcut, ChannelMapShortcut)
    assert isinstance(model.layer2[0].shortcut, PadShortcut)
    with torch.no_grad():
        assert torch.equal(same(X32), model(X32))
    # pruning the stage-1 stream alone zeroes shortcut channels; pruning stage 2's stream drops them
    pruned, plan = prune_with_scores(model, X32, scores, {"stem.0": 0.5, "layer2.0.conv2.0": 0.25})
    sc = pruned.layer2[0].shortcut
    assert (sc.in_channels, sc.out_channels) == (8, 24)
    assert plan["stem.0"] == list(range(8, 16)) and plan["layer2.0.conv2.0"] == list(range(8, 32))
    assert sc.index.tolist() == list(range(8)) + [-1] * 16  # kept stream-2 channels 8..15 read stream-1 8..15
    with torch.no_grad():
        assert pruned(X32).shape == (2, 7)


def test_input_model_untouched():
    model = _rand_bn(_model("resnet20"))
    model.train()
    before = copy.deepcopy(model.state_dict())
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 7, (4,))) for _ in range(2)]
    pruned, _ = prune_model(model, X32, 0.5, "taylor", data=data)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert isinstance(model.layer2[0].shortcut, PadShortcut)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert pruned is not model
    same, _ = prune_with_scores(model, X32, {}, 0.0)  # a train-mode model: no BN statistics drift in the copy
    assert same.training and all(torch.equal(same.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize("name", ["resnet20", "skipnet_xs"])
def test_apply_plan_loads_pruned_checkpoint(name):
    model = _rand_bn(_model(name))
    scores = compute_scores(model, X32, ["fpgm"]).of("fpgm")
    ratio, _ = ratio_for_target(model, X32, 0.5, (3, 32, 32))
    pruned, plan = prune_with_scores(model, X32, scores, ratio)
    fresh = leancnn.create_model(name, num_classes=7)  # other random weights, same architecture
    rebuilt = apply_plan(fresh, X32, plan)
    rebuilt.load_state_dict(pruned.state_dict())
    rebuilt.eval()
    pruned.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(X32), pruned(X32))


def test_ratio_for_target_measures_and_rounds():
    model = _model("resnet20")
    ratio, achieved = ratio_for_target(model, X32, 0.4, (3, 32, 32))
    assert abs(achieved - 0.4) <= 0.02
    groups = prunable_groups(model, X32)
    pruned, plan = prune_with_scores(model, X32, {g.name: np.zeros(g.n_channels) for g in groups}, ratio)
    assert count_macs(pruned, (3, 32, 32)) / count_macs(model, (3, 32, 32)) == pytest.approx(achieved)
    ratio4, achieved4 = ratio_for_target(model, X32, 0.5, (3, 32, 32), round_to=4)
    assert abs(achieved4 - 0.5) <= 0.02
    _, plan4 = prune_with_scores(model, X32, {g.name: np.zeros(g.n_channels) for g in groups}, ratio4, round_to=4)
    assert all(len(k) % 4 == 0 for k in plan4.values())
    with pytest.raises(LeancnnError, match="granularity"):  # 16-channel groups go 16 -> 8 in one step
        ratio_for_target(model, X32, 0.5, (3, 32, 32), round_to=8)
    assert n_keep(16, 0.9, round_to=8) == 8 and n_keep(4, 0.5, round_to=8) == 4 and n_keep(10, 0.95) == 1


def test_global_plan_prediction_matches_measurement():
    for name in ("resnet20", "catnet"):
        model = _rand_bn(_model(name))
        scores = compute_scores(model, X32, ["l2"]).of("l2")
        plan, predicted = global_plan(model, X32, scores, 0.5, max_ratio=0.8)
        pruned = apply_plan(model, X32, plan)
        measured = count_macs(pruned, (3, 32, 32)) / count_macs(model, (3, 32, 32))
        assert measured == pytest.approx(predicted, abs=1e-9) and abs(measured - 0.5) <= 0.02
        sizes = {g.name: g.n_channels for g in prunable_groups(model, X32)}
        assert all(len(plan[n]) >= n_keep(sizes[n], 0.8) for n in plan)
        assert len({len(plan[n]) / sizes[n] for n in plan}) > 1  # not uniform
    _, info = prune_model(_model("catnet"), X32, 0.5, "l1", global_pruning=True)
    assert abs(info["ratio"] - 0.5) <= 0.02 and info["channel_ratio"] is None


def test_hidden_linear_layers_on_request():
    model = _model("mobilenetv3_small").eval()
    names = [g.name for g in prunable_groups(model, X32, include_linear=True)]
    assert "head_fc" in names and "classifier" not in names
    assert "head_fc" not in [g.name for g in prunable_groups(model, X32)]
    scores = compute_scores(model, X32, ["l2"], include_linear=True).of("l2")
    pruned, plan = prune_with_scores(model, X32, scores, 0.5, include_linear=True)
    assert pruned.head_fc.out_features == len(plan["head_fc"]) == 512 == pruned.classifier.in_features


def test_conv_classifier_is_never_pruned():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert [g.name for g in prunable_groups(net, X32)] == ["0"]
    pruned, info = prune_model(net, X32, 0.5, "l2")  # MACs go in steps of 1/8 here
    assert pruned(X32).shape == (2, 5) and info["ratio"] == 0.5


def test_blended_criterion_duck_type():
    class RankSum:
        criteria = ["l1", "bn"]

        def blend(self, table):
            return {g: sum(np.argsort(np.argsort(row[c])) for c in self.criteria) for g, row in table.items()}

    model = _rand_bn(_model("catnet"))
    pruned, info = prune_model(model, X32, 0.5, RankSum())
    assert info["criterion"] == "blend(l1, bn)" and abs(info["ratio"] - 0.5) <= 0.02


# ------------------------------------------------------------------------------------------------ criteria


def _tiny() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet().eval()
    signs = torch.tensor([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    net.conv1.weight.data = (signs * torch.arange(1.0, 6.0)[:, None]).view(5, 2, 1, 1)  # norms 1..5 (x sqrt 2)
    net.bn1.weight.data = torch.tensor([0.3, -2.0, 1.0, 0.1, 0.5])
    return net


X_TINY = torch.randn(1, 2, 8, 8)


def test_weight_criteria_known_rankings():
    net = _tiny()
    table = compute_scores(net, X_TINY, ["l1", "l2", "bn", "random"])
    assert list(table) == ["conv1", "conv2"]
    row = table["conv1"]
    assert np.allclose(row["l1"], 2 * np.arange(1, 6)) and np.allclose(row["l2"], np.sqrt(2) * np.arange(1, 6))
    assert np.allclose(row["bn"], [0.3, 2.0, 1.0, 0.1, 0.5])
    assert all(v.dtype == np.float64 and v.shape == (5,) for v in row.values())
    assert table.groups["conv1"].bn == "bn1"
    # random: seeded per group, differs from l1, changes with the seed
    again = compute_scores(net, X_TINY, ["random"])["conv1"]["random"]
    assert np.array_equal(row["random"], again)
    assert not np.array_equal(np.argsort(row["random"]), np.argsort(row["l1"]))
    other = compute_scores(net, X_TINY, [get_criterion("random", seed=1)])["conv1"]["random"]
    assert not np.array_equal(other, again)
    # pruning keeps the highest scores
    _, plan = prune_with_scores(net, X_TINY, table.of("bn"), {"conv1": 0.4})
    assert plan["conv1"] == [1, 2, 4]


def test_fpgm_on_signed_weights():
    net = _tiny()
    pts = torch.tensor([[0.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]]) + torch.tensor([0.0, 0.0])
    net.conv1.weight.data = pts.view(5, 2, 1, 1)
    s = compute_scores(net, X_TINY, ["fpgm"])["conv1"]["fpgm"]
    assert np.argmin(s) == 0  # the filter at the geometric median is the least important
    d = torch.cdist(pts.double(), pts.double()).sum(1).numpy()
    assert np.allclose(s, d)
    # shifted away from the origin: FPGM still picks the median filter while l2 picks the smallest filter
    net.conv1.weight.data = (pts + torch.tensor([-30.0, 50.0])).view(5, 2, 1, 1)
    t = compute_scores(net, X_TINY, ["fpgm", "l2"])["conv1"]
    assert np.argmin(t["fpgm"]) == 0 and np.argmin(t["l2"]) != 0


def test_data_criteria_on_tiny_model():
    net = _rand_bn(_tiny())
    _tiny_bn = net.bn1.weight.data.clone()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(3, 2, 8, 8, generator=g), torch.randint(0, 3, (3,), generator=g)) for _ in range(2)]
    names = [n for n, c in CRITERIA.items() if c.needs_data]
    assert set(names) == {"taylor", "act_mean", "apoz", "entropy", "hrank"}
    table = compute_scores(net, X_TINY, names, data=data)
    for group, n in (("conv1", 5), ("conv2", 4)):
        for c in names:
            s = table[group][c]
            assert s.shape == (n,) and s.dtype == np.float64 and np.all(np.isfinite(s)), (group, c)
        assert np.all((table[group]["apoz"] >= 0) & (table[group]["apoz"] <= 1))
        assert np.all((table[group]["hrank"] >= 0) & (table[group]["hrank"] <= 8))
        assert np.all(table[group]["taylor"] >= 0) and np.all(table[group]["act_mean"] >= 0)
    # act_mean on the ReLU of the BN output, by hand
    with torch.no_grad():
        a = torch.cat([F.relu(net.bn1(net.conv1(x))) for x, _ in data])
    assert np.allclose(table["conv1"]["act_mean"], a.mean((0, 2, 3)).double().numpy())
    assert np.allclose(table["conv1"]["apoz"], (a != 0).double().mean((0, 2, 3)).numpy())
    # x-only batches are enough for criteria that need no labels; taylor needs labels
    xs = [x for x, _ in data]
    assert compute_scores(net, X_TINY, ["hrank"], data=xs)["conv2"]["hrank"].shape == (4,)
    with pytest.raises(LeancnnError, match="labels"):
        compute_scores(net, X_TINY, ["taylor"], data=xs)
    assert torch.equal(net.bn1.weight.data, _tiny_bn)


def test_data_criteria_use_activation_modules():
    model = _rand_bn(_model("digits_cnn"))  # Sequential(conv, ReLU, pool): hooks the ReLU, no BN
    data = [torch.randn(2, 3, 32, 32)]
    table = compute_scores(model, X32, ["apoz", "entropy"], data=data)
    assert table.groups["conv1.0"].act == "conv1.1" and table.groups["conv1.0"].bn is None
    assert all(np.all(np.isfinite(r["entropy"])) for r in table.values())
    bn = compute_scores(model, X32, ["bn"])  # no BatchNorm anywhere: no preference, every channel alike
    assert all(np.all(r["bn"] == 1.0) for r in bn.values())


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input():
    net = _tiny()
    with pytest.raises(LeancnnError, match="l1.*fpgm.*hrank"):
        get_criterion("l7")
    with pytest.raises(LeancnnError, match="known"):
        prune_model(net, X_TINY, 0.5, "magic")
    with pytest.raises(LeancnnError, match="taylor"):
        compute_scores(net, X_TINY, ["l1", "taylor"])
    with pytest.raises(LeancnnError, match="apoz"):
        prune_model(net, X_TINY, 0.5, "apoz")
    for target in (0.0, 1.0, 1.5, 0.001):
        with pytest.raises(LeancnnError, match=r"cannot be reached.*\[0\.\d+, 1\)"):
            ratio_for_target(net, X_TINY, target)
    with pytest.raises(LeancnnError, match="unknown groups"):
        prune_with_scores(net, X_TINY, {"nope": np.ones(3)}, 0.5)
    with pytest.raises(LeancnnError, match="conv2"):
        prune_with_scores(net, X_TINY, {"conv1": np.ones(5)}, 0.5)
    with pytest.raises(LeancnnError, match="unknown groups"):
        apply_plan(net, X_TINY, {"conv9": [0]})


def test_unsupported_modules_are_named():
    class Scale(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(c, 1, 1))

        def forward(self, x):
            return x * self.gain

    net = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), nn.Conv2d(8, 4, 1))
    with pytest.raises(LeancnnError, match="'1'.*Scale"):
        prunable_groups(net, X32)
    class Repeat(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

        def forward(self, x):  # repeat doubles the channels: the tracer takes it for an element-wise op
            return self.fc(self.c2(self.c1(x).repeat(1, 2, 1, 1)).mean((2, 3)))

    with pytest.raises(LeancnnError, match="group 'c1'.*'c1', 'c2'"):
        prunable_groups(Repeat(), X32)
    assert [g.name for g in prunable_groups(Repeat(), X32, ignored_layers=["c1"])] == ["c2"]
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1))
    with pytest.raises(LeancnnError, match="'1'.*grouped"):
        prunable_groups(grouped, X32)
