"""MoViNet A0–A5 architectures (issue 10, first part): the TF reference's parameter counts and MACs for all
twelve models, TF-'same' padding, the positional encoding's layout, and causality of the stream models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import leancnn
from leancnn.models import get_model_entry
from leancnn.models.movinet import positional_encoding
from leancnn.nn.causal import Conv3dSame, avg_pool_same, cumulative_mean, same_pads

# PyTorch parameters (BN running statistics excluded) from the reference recount, ../shared/reference/movinet.md §6;
# stream A3-A5 add one positional-encoding scale per layer (33, 47, 59 layers).
PARAMS = {
    "a0": (3_111_799, 3_748_031), "a1": (4_690_296, 6_447_352), "a2": (5_249_562, 7_326_962),
    "a3": (7_397_545, 10_986_585 + 33), "a4": (11_349_463, 18_136_135 + 47), "a5": (18_650_523, 31_495_875 + 59),
}
# GMACs at the paper's eval input (convs and dense layers), same page: base, stream per clip
GMACS = {"a0": (2.63, 2.43), "a1": (5.87, 5.54), "a2": (11.56, 10.70), "a3": (55.6, 52.1), "a4": (103.3, 96.7),
         "a5": (276.3, 261.7)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_and_macs_match_the_reference(name):
    for stream, params, gmacs in zip((False, True), PARAMS[name], GMACS[name]):
        full = f"movinet_{name}{'_stream' if stream else ''}"
        model = leancnn.create_model(full)
        assert leancnn.count_params(model) == params, full
        macs = leancnn.count_macs(model, get_model_entry(full).input_size) / 1e9
        digits = 2 if gmacs < 50 else 1
        assert round(macs, digits) == gmacs, (full, macs)


def test_same_padding_and_strided_sizes():
    assert same_pads(172, 3, 2) == (0, 1) and same_pads(43, 3, 2) == (1, 1) and same_pads(8, 5, 1) == (2, 2)
    model = leancnn.create_model("movinet_a0")
    sizes = []
    hooks = [model.stem.register_forward_hook(lambda m, a, o: sizes.append(o.shape[-1]))]
    hooks += [b.register_forward_hook(lambda m, a, o: sizes.append(o.shape[-1])) for b in model.blocks]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 1, 172, 172))
    assert sizes == [86, 43, 22, 11, 11, 6]  # ceil(x / 2) at every stride, as TF


def test_average_pool_leaves_padding_out_of_the_mean():
    x = torch.ones(1, 2, 3, 5, 5)
    assert torch.equal(avg_pool_same(x), torch.ones(1, 2, 3, 3, 3))
    x = torch.arange(16.0).view(1, 1, 1, 4, 4)
    # TF 'same' on 4 pixels, kernel 3, stride 2: no padding before, one after. Output (0, 1) covers rows 0..2 and
    # columns 2..4, column 4 being padding: the mean of 2, 3, 6, 7, 10, 11 (six real pixels, not nine)
    out = avg_pool_same(x)
    assert out.shape[-2:] == (2, 2) and out[0, 0, 0, 0, 1].item() == pytest.approx((2 + 3 + 6 + 7 + 10 + 11) / 6)


def test_cumulative_mean():
    x = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(1, 1, 4, 1, 1)
    assert cumulative_mean(x, 2).flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_positional_encoding_is_sin_of_even_then_cos_of_odd():
    enc = positional_encoding(4, 2, start=0).flatten(2).squeeze(0)  # [C, T]
    # position 1: angles 1, 1, 0.01, 0.01 for i = 0..3 -> [sin 1, sin 0.01, cos 1, cos 0.01]
    expected = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    assert enc[:, 1].tolist() == pytest.approx(expected, rel=1e-6)
    assert enc[:, 0].tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])


def _randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and non-zero ReZero / positional-encoding scalars, in eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    for name, p in model.named_parameters():
        if name.endswith("rezero") or name.endswith("pos_scale"):
            p.data.fill_(0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["movinet_a0_stream", "movinet_a3_stream"])
def test_stream_models_are_causal(name):
    """Frame t of the stream model's features depends on frames <= t only (causal temporal convs, cumulative SE,
    positional encoding by absolute position): the features of a prefix equal the prefix of the features."""
    torch.manual_seed(0)
    model = _randomised(leancnn.create_model(name, num_classes=10))
    clip = torch.randn(2, 3, 6, 32, 40)  # non-square
    with torch.no_grad():
        full = model.forward_features(clip)
        for t in (1, 3, 5):
            part = model.forward_features(clip[:, :, :t])
            torch.testing.assert_close(part, full[:, :, :t], rtol=1e-5, atol=1e-5)
        assert model(clip).shape == (2, 10) and torch.isfinite(model(clip)).all()


def test_base_models_see_the_whole_clip():
    torch.manual_seed(0)
    model = _randomised(leancnn.create_model("movinet_a0", num_classes=10))
    clip = torch.randn(1, 3, 5, 32, 32)
    later = clip.clone()
    later[:, :, -1] += 1.0
    with torch.no_grad():
        a, b = model.forward_features(clip), model.forward_features(later)
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4  # the global SE and 3-D kernels mix frames


def test_bad_input_names_the_shape():
    model = leancnn.create_model("movinet_a0")
    with pytest.raises(ValueError, match=r"x: expected a clip \[B, 3, T, H, W\].*got \(1, 3, 32, 32\)"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 1, 2, 32, 32\)"):
        model(torch.zeros(1, 1, 2, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 3, 0, 32, 32\)"):
        model(torch.zeros(1, 3, 0, 32, 32))
    conv = Conv3dSame(3, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="expected a video tensor"):
        conv(torch.zeros(1, 3, 8, 8))


def test_counting_does_not_touch_the_model():
    model = leancnn.create_model("movinet_a0_stream")
    before = copy.deepcopy(model.state_dict())
    leancnn.count_macs(model, (3, 4, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"
