"""MobileNetV3-Large/Small and the SkipNet family: exact sizes, spec decoding, any input size and width,
feature taps, and that the small members train at 32x32."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from leancnn.models import create_model, get_model_entry, list_models
from leancnn.models.mobilenetv3 import SKIPNET_FAMILY, decode_block
from leancnn.nn import InvertedResidual, PooledSkip, SqueezeExcite, count_macs, count_params, make_divisible

NEW = ["mobilenetv3_large", "mobilenetv3_small", "skipnet_l", "skipnet_m", "skipnet_s", "skipnet_xs"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in NEW}


def test_registry():
    assert set(NEW) <= set(list_models())
    assert list_models("skipnet") == ["skipnet_l", "skipnet_m", "skipnet_s", "skipnet_xs"]
    for name in NEW:
        entry = get_model_entry(name)
        assert entry.input_size == (3, 224, 224) and entry.num_classes == 1000 and entry.description


@pytest.mark.parametrize("name, params", [
    ("mobilenetv3_large", 5_483_032),  # timm mobilenetv3_large_100
    ("mobilenetv3_small", 2_542_856),  # timm mobilenetv3_small_100
    ("skipnet_m", 5_532_352),  # the released SkipNet-M
    ("skipnet_xs", 2_328_680),
    ("skipnet_s", 3_686_480),
    ("skipnet_l", 7_134_360),
])
def test_parameter_counts(models, name, params):
    assert count_params(models[name]) == params


@pytest.mark.parametrize("name, target, feature_shape", [
    ("mobilenetv3_large", 216.6e6, (960, 7, 7)),  # measured 216,589,760 (paper: 219M)
    ("mobilenetv3_small", 56.5e6, (576, 7, 7)),  # measured 56,510,400 (paper: 56M)
    ("skipnet_m", 236.6e6, (960, 7, 7)),  # measured 236,622,048
])
def test_macs_and_feature_map_at_224(models, name, target, feature_shape):
    model = models[name]
    assert abs(count_macs(model, (3, 224, 224)) / target - 1) < 0.01
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    assert features.shape == (1, *feature_shape) and model.num_features == feature_shape[0]
    assert logits.shape == (1, 1000)


def test_family_reproduces_published_points(models):
    """Each member lies within 2.5% of its published parameter count; the published MACs are read off a plot
    and are 3.5-5% above our conv+linear count at every point, SkipNet-M included."""
    points = {"xs": (2.3e6, 80e6), "s": (3.6e6, 150e6), "m": (5.5e6, 246e6), "l": (7.1e6, 365e6)}
    for member, (params, macs) in points.items():
        model = models[f"skipnet_{member}"]
        assert abs(count_params(model) / params - 1) < 0.025
        assert -0.05 < count_macs(model, (3, 224, 224)) / macs - 1 < -0.035
        assert (SKIPNET_FAMILY[member].published_params, SKIPNET_FAMILY[member].published_macs) == (params, macs)


@pytest.mark.parametrize("name", NEW)
def test_features_and_head_compose_to_forward(models, name):
    model = models[name]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (100, 100), (256, 256), (48, 80), (33, 47)])
def test_skipnet_any_input_size(models, size):
    with torch.no_grad():
        features = models["skipnet_m"].forward_features(torch.randn(1, 3, *size))
    expected = list(size)
    for _ in range(5):  # five stride-2 stages, each ceil(s / 2)
        expected = [(s + 1) // 2 for s in expected]
    assert features.shape == (1, 960, *expected)


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.15, 1.25, 1.5])
def test_skipnet_widths(width):
    model = create_model("skipnet_m", width=width).eval()
    base = make_divisible(16 * width, 8)
    assert model.skips[0].body.conv_pw[0].in_channels == base
    assert model.skips[0].body.conv_pw[0].out_channels == make_divisible(base * 6, 8)
    assert model.num_features == make_divisible(960 * width, 8)
    assert model.head_hidden_size == (1280 if width <= 1 else make_divisible(1280 * width, 8))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 40, 56)).shape == (2, 1000)


def test_skipnet_m_layers_follow_reference(models):
    m = models["skipnet_m"]
    ir1 = m.blocks[0][0]
    assert ir1.conv_pw[0].in_channels == ir1.conv_pw[0].out_channels == 16
    assert isinstance(ir1.conv_dw[2], nn.Hardswish) and ir1.has_skip
    ir6 = m.blocks[2][2]
    assert ir6.conv_pw[0].out_channels == 240 and isinstance(ir6.conv_dw[2], nn.Hardswish)
    assert isinstance(ir6.se, SqueezeExcite) and ir6.se.conv_reduce.out_channels == 64
    assert m.skip_routes == [(0, 2), (0, 3)]
    for skip, (hidden, kernel, out) in zip(m.skips, [(96, 5, 40), (40, 3, 80)]):
        body = skip.body
        assert body.conv_pw[0].out_channels == hidden and body.conv_dw[0].kernel_size == (kernel, kernel)
        assert isinstance(body.conv_dw[2], nn.ReLU) and len(body.conv_pwl) == 2  # BN only after the last conv
        assert body.conv_pwl[0].out_channels == out and not body.has_skip
    large = models["mobilenetv3_large"].blocks
    assert isinstance(large[0][0].conv_pw, nn.Identity) and large[2][2].conv_pw[0].out_channels == 120


def test_skip_branches_are_added_after_ir6_and_ir10(models):
    m = models["skipnet_m"]
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        x1 = m.blocks[0](m.stem(x))
        h = m.blocks[1](x1)
        h = m.blocks[2](h)
        h = h + m.skips[0](x1, h.shape[-2:])
        h = m.blocks[3](h)
        h = h + m.skips[1](x1, h.shape[-2:])
        expected = m.conv_head(m.blocks[5](m.blocks[4](h)))
        assert torch.allclose(m.forward_features(x), expected)


def test_init_follows_reference(models):
    m = models["skipnet_m"]
    assert abs(m.classifier.weight.std().item() - 0.01) < 0.001 and not m.classifier.bias.any()
    conv = m.blocks[5][0].conv_dw[0]  # dw 5x5, 672 channels: std sqrt(2 / (25 * 672))
    assert abs(conv.weight.std().item() / (2 / (25 * 672)) ** 0.5 - 1) < 0.05


@pytest.mark.parametrize("name", ["mobilenetv3_small", "skipnet_xs", "skipnet_s"])
def test_small_nets_train_at_32(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    assert model.forward_features(x).shape[-2:] == (1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_decode_block():
    spec = decode_block("ir_r3_k5_s2_e2.3_c40_se0.25_nre")
    assert (spec.kind, spec.repeat, spec.kernel, spec.stride, spec.exp, spec.out, spec.se, spec.act) == \
        ("ir", 3, 5, 2, 2.3, 40, 0.25, "re")
    spec = decode_block("ds_c16")
    assert (spec.repeat, spec.kernel, spec.stride, spec.exp, spec.se, spec.act) == (1, 3, 1, 1, 0, "hs")
    for bad, msg in [("xx_c16", "unknown type"), ("ir_k3_q2_c16", "token 'q2'"), ("ir_k3", "'c<n>' missing"),
                     ("ds_e4_c16", "no expansion")]:
        with pytest.raises(ValueError, match=msg):
            decode_block(bad)


def test_blocks():
    se = SqueezeExcite(72)
    assert se.conv_reduce.out_channels == 24 and SqueezeExcite(16).conv_reduce.out_channels == 8
    x = torch.randn(2, 16, 9, 9)
    assert InvertedResidual(16, 16, mid_ch=64).has_skip
    assert InvertedResidual(16, 24, 3, 2, 64, 0.25, nn.Hardswish)(x).shape == (2, 24, 5, 5)
    skip = PooledSkip(InvertedResidual(16, 8, mid_ch=32))
    assert skip(x, (4, 3)).shape == (2, 8, 4, 3)
    with pytest.raises(ValueError, match="width"):
        create_model("mobilenetv3_large", width=0)
