"""Channels-last training and inference (issue 9): every registered network keeps the layout at every stage and
gives the contiguous run's outputs; batches, augmentations, MixStyle and Bias Loss's features follow it;
checkpoints are layout-free; a layer that loses the layout is named in a warning."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import leancnn
from leancnn.config import load_config
from leancnn.data.augment import strong_augment, weak_augment
from leancnn.errors import ConfigError
from leancnn.losses import feature_variance
from leancnn.models import get_model_entry
from leancnn.nn.layout import (
    convert_model,
    fastest_memory_format,
    is_channels_last,
    layout_breaks,
    layout_is_ambiguous,
    model_memory_format,
    resolve_memory_format,
    to_device,
    warn_layout_breaks,
)
from leancnn.nn.mixstyle import insert_mixstyle, mixstyle_modules
from leancnn.tasks.classify import train
from leancnn.tasks.digits import memory_format_for
from leancnn.train import load_checkpoint

CL = torch.channels_last
MODELS_2D = [n for n in leancnn.list_models() if len(get_model_entry(n).input_size) == 3]


def _input(name: str, batch: int = 4) -> torch.Tensor:
    size = get_model_entry(name).input_size
    side = 32 if size[1] <= 32 else 64  # any size works; 64x64 keeps the 224-px networks fast here
    return torch.randn(batch, size[0], side, side, generator=torch.Generator().manual_seed(0))


def _stage_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every 4-D output of every module (blocks, stages and layers) in one forward pass."""
    outs, handles = {}, []
    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(
                lambda mod, a, o, name=name: outs.__setitem__(name, o) if isinstance(o, torch.Tensor) else None))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    outs["<logits>"] = logits
    return outs


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """fp32 agreement up to ``tol`` relative to the tensors' scale (a random-init ResNet-56 in eval mode has
    logits in the thousands)."""
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, ((a - b).abs().max().item(), scale)


@pytest.mark.parametrize("name", MODELS_2D)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_stage_keeps_channels_last_and_matches_contiguous(name, mode):
    torch.manual_seed(0)
    model = leancnn.create_model(name)
    x = _input(name)
    if mode == "eval":  # realistic BatchNorm statistics first, then the same eval model in both layouts
        with torch.no_grad():
            model.train()(x)
    ref_model, cl_model = copy.deepcopy(model), convert_model(copy.deepcopy(model), CL)
    ref_model.train(mode == "train")
    cl_model.train(mode == "train")
    torch.manual_seed(1)
    with torch.no_grad():
        ref = _stage_outputs(ref_model, x)
    torch.manual_seed(1)
    with torch.no_grad():
        got = _stage_outputs(cl_model, x.contiguous(memory_format=CL))
    maps = [k for k, v in got.items() if v.ndim == 4 and not layout_is_ambiguous(v)]
    assert len(maps) >= 8, maps  # the stem, blocks and stages were all seen
    lost = [k for k in maps if not is_channels_last(got[k])]
    assert lost == [], f"{name} loses channels-last at {lost}"
    _close(got["<logits>"], ref["<logits>"])
    features = ref_model.forward_features(x) if mode == "eval" else None
    if features is not None:
        with torch.no_grad():
            f_cl = cl_model.forward_features(x.contiguous(memory_format=CL))
        assert is_channels_last(f_cl) or layout_is_ambiguous(f_cl)
        _close(feature_variance(f_cl), feature_variance(features.detach()))  # Bias Loss's signal


@pytest.mark.parametrize("mix", ["random", "crossdomain"])
def test_mixstyle_keeps_the_layout_and_the_values(mix):
    torch.manual_seed(0)
    base = leancnn.create_model("resnet20")
    insert_mixstyle(base, ["layer1", "layer2"], p=1.0, mix=mix, seed=3)
    ref_model, cl_model = copy.deepcopy(base).train(), convert_model(copy.deepcopy(base), CL).train()
    x = _input("resnet20", 8)
    outs = []
    for model, batch in ((ref_model, x), (cl_model, x.contiguous(memory_format=CL))):
        for i, m in enumerate(mixstyle_modules(model)):  # the same draws in both runs
            m.generator.manual_seed(10 + i)
        with torch.no_grad():
            outs.append(_stage_outputs(model, batch))
    ref, got = outs
    assert is_channels_last(got["layer1"]) and is_channels_last(got["layer2"])
    _close(got["<logits>"], ref["<logits>"])


def test_augmentations_return_their_input_layout():
    x = torch.randn(6, 3, 32, 32)
    for fn in (weak_augment, strong_augment):
        torch.manual_seed(5)
        ref = fn(x)
        torch.manual_seed(5)
        got = fn(x.contiguous(memory_format=CL))
        assert is_channels_last(got) and ref.is_contiguous()
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


class _Breaker(nn.Module):
    def forward(self, x):
        return x.contiguous() * 2  # NHWC in, NCHW out


def test_a_layer_that_loses_the_layout_is_named_in_a_warning():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(_Breaker(), nn.ReLU()), nn.Conv2d(8, 4, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    convert_model(model, CL)
    x = torch.randn(2, 3, 16, 16)
    assert layout_breaks(model, x) == ["1.0"]  # the breaking layer, not its container
    with pytest.warns(UserWarning, match=r"1 layer\(s\) do not keep the channels-last layout \(1\.0\)"):
        warn_layout_breaks(model, x)
    cfg = load_config(overrides=["train.memory_format=channels_last"])
    with pytest.warns(UserWarning, match=r"\(1\.0\)"):
        assert memory_format_for(cfg, model, torch.device("cpu")) is CL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # contiguous: nothing to check, no warning
        assert memory_format_for(load_config(overrides=["train.memory_format=contiguous"]), model,
                                 torch.device("cpu")) is torch.contiguous_format


def test_auto_is_channels_last_for_conv_nets_on_the_cpu():
    cpu = torch.device("cpu")
    conv, mlp = leancnn.create_model("resnet20"), nn.Sequential(nn.Linear(4, 2))
    assert resolve_memory_format("auto", conv, cpu) is CL
    assert resolve_memory_format("auto", mlp, cpu) is torch.contiguous_format
    assert resolve_memory_format("contiguous", conv, cpu) is torch.contiguous_format
    assert resolve_memory_format("channels_last", conv, cpu) is CL
    with pytest.raises(ValueError, match="is not one of auto, channels_last, contiguous"):
        resolve_memory_format("nhwc", conv, cpu)


def test_timing_both_layouts_changes_nothing_in_the_model():
    model = leancnn.create_model("resnet20")
    insert_mixstyle(model, ["layer1"], p=1.0)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    rng = torch.get_rng_state()
    fmt = fastest_memory_format(model, x, steps=1)
    assert fmt in (CL, torch.contiguous_format)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert model_memory_format(model) is torch.contiguous_format
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(rng, torch.get_rng_state())


def test_unknown_memory_format_names_the_allowed_values():
    with pytest.raises(ConfigError, match="config key 'train.memory_format': 'nhwc' is not allowed; allowed "
                                          "values: auto, channels_last, contiguous"):
        load_config(overrides=["train.memory_format=nhwc"])


def test_to_device_converts_images_not_labels():
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    assert is_channels_last(to_device(x, torch.device("cpu"), CL)) and to_device(y, torch.device("cpu"), CL).equal(y)
    video = to_device(torch.randn(1, 3, 2, 4, 4), torch.device("cpu"), CL)
    assert video.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.slow
def test_checkpoints_are_layout_free(tmp_path, tiny_overrides):
    """A run trained channels-last saves contiguous tensors; the weights load into either layout with the same
    outputs; a run started in one layout resumes in the other (memory_format may change on resume)."""
    run = tmp_path / "run"
    train(load_config(overrides=[*tiny_overrides, "model.name=resnet20", "train.memory_format=channels_last"]),
          out=run, quiet=True)
    state = load_checkpoint(run / "last.pt")
    assert all(v.is_contiguous() for v in state["model"].values())
    assert all(v.is_contiguous() for s in state["optimizer"]["state"].values() for v in s.values()
               if isinstance(v, torch.Tensor))
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for fmt in (torch.contiguous_format, CL):
        model = convert_model(leancnn.create_model("resnet20"), fmt)
        model.load_state_dict(state["model"])
        assert model_memory_format(model) is fmt  # loading keeps the model's own layout
        with torch.no_grad():
            outs.append(model.eval()(to_device(x, torch.device("cpu"), fmt)))
    _close(outs[1], outs[0])
    assert main_resume(run) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def main_resume(run):
    from leancnn.cli import main

    return main(["train", "--resume", str(run), "train.epochs=2", "train.memory_format=contiguous"])


# ----------------------------------------------------------------------------------------- kernel taps


@pytest.mark.parametrize("size, kernel, padding, stride, expected", [
    (1, 5, 2, 1, (2, 2, 0, 0)),   # a 1x1 map: only the centre tap reads the input
    (2, 5, 2, 1, (1, 3, 1, 1)),   # 2x2: the middle 3x3 taps, padding 1
    (2, 5, 2, 2, (2, 3, 0, 0)),   # stride 2 onto one output: taps 2..3, no padding
    (8, 3, 1, 1, (0, 2, 1, 1)),   # large enough: every tap
    (3, 7, 3, 2, (1, 5, 2, 2)),
])
def test_used_taps_worked_by_hand(size, kernel, padding, stride, expected):
    from leancnn.nn import used_taps

    assert used_taps(size, kernel, padding, stride) == expected


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.sampled_from([1, 3, 5, 7]), stride=st.sampled_from([1, 2]),
       depthwise=st.booleans(), bias=st.booleans(), channels_last=st.booleans())
def test_tap_cropped_conv_equals_the_full_convolution(h, w, k, stride, depthwise, bias, channels_last):
    """Outputs and gradients (input, weight, bias) of the cropped path equal the full-kernel convolution."""
    import torch.nn.functional as F

    from leancnn.nn import TapCroppedConv2d

    torch.manual_seed(h * 100 + w * 10 + k)
    conv = TapCroppedConv2d(6, 6, k, stride, padding=k // 2, groups=6 if depthwise else 1, bias=bias)
    x = torch.randn(2, 6, h, w)
    if channels_last:
        conv, x = convert_model(conv, CL), x.contiguous(memory_format=CL)
    x.requires_grad_(True)
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, stride, k // 2, 1, conv.groups)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(out)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    for a, b in zip(torch.autograd.grad(out, params, go), torch.autograd.grad(ref, params, go)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv3_small", "skipnet_xs", "digits_cnn"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_fold_batchnorm_keeps_the_function(name, fmt):
    from leancnn.nn.fold import fold_batchnorm, unfolded_batchnorms

    torch.manual_seed(0)
    model = leancnn.create_model(name)
    x = _input(name, 4)
    with torch.no_grad():
        model.train()(x)  # running statistics that are not the identity
    model = convert_model(model.eval(), fmt)
    bns = unfolded_batchnorms(model)
    folded, n = fold_batchnorm(model)
    assert n == bns and unfolded_batchnorms(folded) == 0 and unfolded_batchnorms(model) == bns  # a copy
    assert not folded.training and model_memory_format(folded) in (fmt, None)
    with torch.no_grad():
        _close(folded(to_device(x, torch.device("cpu"), fmt)), model(to_device(x, torch.device("cpu"), fmt)))


def test_fold_conv_bn_by_hand():
    from leancnn.nn.fold import fold_conv_bn

    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0 - bn.eps)  # sqrt(var + eps) = 2
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    f = fold_conv_bn(conv, bn)
    # y = (2x - 1) / 2 * 3 + 0.5 = 3x - 1
    assert f.weight.item() == pytest.approx(3.0) and f.bias.item() == pytest.approx(-1.0)


# ----------------------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_train_compile_runs_and_saves_a_plain_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    summary = train(load_config(overrides=[*tiny_overrides, "data.limit_train=128", "train.compile=true"]),
                    out=tmp_path / "run", quiet=True)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # the plain model's state dict
    eager = train(load_config(overrides=[*tiny_overrides, "data.limit_train=128"]), out=tmp_path / "eager",
                  quiet=True)
    assert summary["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-3)
