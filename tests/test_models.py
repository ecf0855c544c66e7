"""Model registry, architectures, parameter and MAC counting, and loading weights across architectures."""

import pytest
import torch
import torch.nn as nn

from leancnn.errors import LeancnnError
from leancnn.models import create_model, get_model_entry, list_models, register_model
from leancnn.nn import count_macs, count_params
from leancnn.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint

MODELS = ["digits_cnn", "resnet18", "resnet20", "resnet56"]


@pytest.fixture(scope="module")
def models():
    """One instance of each model (seeded), shared by the read-only tests."""
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in MODELS}


# ----------------------------------------------------------------------------------------- registry


def test_list_models():
    names = list_models()
    assert set(MODELS) <= set(names)
    assert names == sorted(names)
    assert list_models("resnet") == ["resnet18", "resnet20", "resnet56"]
    assert list_models("no-such-model") == []


def test_model_entries():
    for name in MODELS:
        entry = get_model_entry(name)
        assert entry.name == name and entry.input_size == (3, 32, 32) and entry.num_classes == 10
        assert entry.description


@pytest.mark.parametrize("name, params", [
    ("resnet20", 269_722),
    ("resnet56", 853_018),
    ("resnet18", 11_173_962),
    ("digits_cnn", 115_146),
])
def test_parameter_counts(models, name, params):
    assert count_params(models[name]) == params
    assert count_params(models[name], trainable_only=True) == params


def test_digits_cnn_parameters_by_hand(models):
    conv1 = 64 * 3 * 9 + 64
    conv = 64 * 64 * 9 + 64
    fc = 256 * 10 + 10
    assert count_params(models["digits_cnn"]) == conv1 + 3 * conv + fc == 115_146


def test_count_params_trainable_only_and_shared():
    lin = nn.Linear(4, 3)  # 15 parameters
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(3, 2))  # shared layer counted once: 15 + 8
    assert count_params(model) == 23
    model[3].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 17


def test_model_name_is_set(models):
    for name, model in models.items():
        assert model.model_name == name


def test_unknown_model_lists_available():
    with pytest.raises(LeancnnError) as info:
        create_model("resnet21")
    msg = str(info.value)
    assert msg.startswith("unknown model 'resnet21'; available: ")
    for name in MODELS:
        assert name in msg


def test_unknown_kwarg_is_named():
    with pytest.raises(LeancnnError, match=r"^model 'resnet20' does not take argument\(s\) depth; allowed: in_chans$"):
        create_model("resnet20", depth=3)
    with pytest.raises(LeancnnError, match=r"depth, width; allowed: hidden, in_chans$"):
        create_model("digits_cnn", depth=3, width=2)


def test_builder_kwargs_are_passed():
    model = create_model("digits_cnn", hidden=8, in_chans=1)
    assert model.conv1[0].in_channels == 1 and model.conv4[0].out_channels == 8 and model.fc.in_features == 32
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert create_model("resnet20", in_chans=1)(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_register_duplicate_name_raises():
    before = dict((n, get_model_entry(n)) for n in list_models())
    with pytest.raises(ValueError, match="^model 'resnet20' is already registered$"):
        @register_model("resnet20")
        def other(num_classes=10):
            return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        @register_model()
        def digits_cnn(num_classes=10):
            return nn.Linear(1, num_classes)

    assert dict((n, get_model_entry(n)) for n in list_models()) == before  # registry untouched


# ----------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_and_feature_composition(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        composed = model.forward_head(features)
    assert out.shape == (2, 7)
    assert model.fc.out_features == 7 and model.fc.in_features == model.num_features
    assert torch.equal(out, composed)
    feature_sizes = {"digits_cnn": 64 * 2 * 2, "resnet18": 512 * 4 * 4, "resnet20": 64 * 8 * 8, "resnet56": 64 * 8 * 8}
    assert features.flatten(1).shape[1] == feature_sizes[name]


@pytest.mark.parametrize("name, size, feature_shape", [
    ("resnet20", 32, (64, 8, 8)),
    ("resnet20", 64, (64, 16, 16)),
    ("resnet56", 32, (64, 8, 8)),
    ("resnet56", 64, (64, 16, 16)),
    ("resnet18", 32, (512, 4, 4)),
    ("resnet18", 64, (512, 8, 8)),
    ("digits_cnn", 32, (64, 2, 2)),
])
def test_feature_shapes(models, name, size, feature_shape):
    model = models[name]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        out = model(x)
    assert features.shape == (2, *feature_shape)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(28, 28), (64, 64), (32, 28)])
def test_digits_cnn_rejects_other_sizes(models, size):
    with pytest.raises(ValueError, match=rf"^digits_cnn expects 32x32 inputs, got \({size[0]}, {size[1]}\)$"):
        models["digits_cnn"](torch.zeros(1, 3, *size))


def test_resnet_trains_a_step():
    torch.manual_seed(0)
    model = create_model("resnet20")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------- MACs


def test_conv2d_macs():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (3, 16, 16)) == 16 * 16 * 8 * 3 * 9 == 55_296


def test_strided_conv_macs():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 16x16 -> 8x8
    assert count_macs(conv, (3, 16, 16)) == 8 * 8 * 8 * 3 * 9
    assert count_macs(nn.Conv2d(3, 8, 5), (3, 16, 16)) == 12 * 12 * 8 * 3 * 25  # no padding: 12x12


def test_grouped_and_depthwise_conv_macs():
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(depthwise, (8, 16, 16)) == 16 * 16 * 8 * 1 * 9
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)  # each output sees 8/4 = 2 input channels
    assert count_macs(grouped, (8, 16, 16)) == 16 * 16 * 16 * 2 * 9


def test_linear_macs():
    assert count_macs(nn.Linear(20, 5), (20,)) == 100
    assert count_macs(nn.Linear(20, 5), (4, 20)) == 4 * 5 * 20  # applied to each of 4 rows


def test_conv1d_and_conv3d_macs():
    assert count_macs(nn.Conv1d(4, 6, 5), (4, 20)) == 16 * 6 * 4 * 5
    assert count_macs(nn.Conv3d(2, 4, 3, padding=1), (2, 4, 8, 8)) == 4 * 8 * 8 * 4 * 2 * 27


def test_conv_transpose_macs():
    # every input element is multiplied into out_channels/groups * k*k outputs
    up = nn.ConvTranspose2d(8, 4, 3, stride=2)
    assert count_macs(up, (8, 5, 5)) == 5 * 5 * 8 * 4 * 9
    grouped = nn.ConvTranspose2d(8, 4, 3, groups=2)
    assert count_macs(grouped, (8, 5, 5)) == 5 * 5 * 8 * 2 * 9
    assert count_macs(nn.ConvTranspose1d(3, 6, 4), (3, 10)) == 10 * 3 * 6 * 4


def test_only_conv_and_linear_are_counted():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    assert count_macs(model, (3, 8, 8)) == 8 * 8 * 4 * 3 + 64 * 3


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 10)
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        return self.head(self.fc(self.fc(x)))


def test_layer_used_twice_is_counted_twice():
    total, per_layer = count_macs(Twice(), (10,), per_layer=True)
    assert per_layer == {"fc": 200, "head": 20}
    assert total == 220


def test_per_layer_digits_cnn(models):
    conv1 = 32 * 32 * 64 * 27
    conv2 = 16 * 16 * 64 * 576
    conv3 = 8 * 8 * 64 * 576
    conv4 = 4 * 4 * 64 * 576
    fc = 256 * 10
    total, per_layer = count_macs(models["digits_cnn"], (3, 32, 32), per_layer=True)
    assert per_layer == {"conv1.0": conv1, "conv2.0": conv2, "conv3.0": conv3, "conv4.0": conv4, "fc": fc}
    assert total == conv1 + conv2 + conv3 + conv4 + fc == 14_158_336
    assert count_macs(models["digits_cnn"], (3, 32, 32)) == total


def resnet_cifar_macs(n: int, size: int) -> int:
    """Conv/linear MACs of the CIFAR ResNet-(6n+2) at size x size, by hand."""
    s1, s2, s3 = size, size // 2, size // 4
    stem = s1 * s1 * 16 * 3 * 9
    layer1 = 2 * n * s1 * s1 * 16 * 16 * 9
    layer2 = s2 * s2 * 32 * 16 * 9 + (2 * n - 1) * s2 * s2 * 32 * 32 * 9
    layer3 = s3 * s3 * 64 * 32 * 9 + (2 * n - 1) * s3 * s3 * 64 * 64 * 9
    return stem + layer1 + layer2 + layer3 + 64 * 10


@pytest.mark.parametrize("name, n", [("resnet20", 3), ("resnet56", 9)])
@pytest.mark.parametrize("size", [32, 64])
def test_cifar_resnet_macs(models, name, n, size):
    assert count_macs(models[name], (3, size, size)) == resnet_cifar_macs(n, size)


def test_known_mac_totals(models):
    assert count_macs(models["resnet20"], (3, 32, 32)) == 40_551_040
    assert count_macs(models["resnet56"], (3, 32, 32)) == 125_485_696
    assert count_macs(models["resnet18"], (3, 32, 32)) == 555_422_720


def test_count_macs_keeps_training_mode():
    model = create_model("resnet20")
    model.train()
    count_macs(model, (3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    bn = model.stem[1]
    running_mean = bn.running_mean.clone()
    count_macs(model, (3, 32, 32))
    assert torch.equal(bn.running_mean, running_mean)  # measured in eval mode: BN statistics untouched
    model.eval()
    count_macs(model, (3, 32, 32))
    assert not model.training and not any(m.training for m in model.modules())


def test_count_macs_keeps_mixed_training_modes():
    model = create_model("resnet20").train()
    model.stem[1].eval()
    count_macs(model, (3, 32, 32))
    assert model.training and not model.stem[1].training


def test_count_macs_rejects_bad_sizes():
    with pytest.raises(ValueError, match="input_size must be positive"):
        count_macs(nn.Linear(2, 2), (0,))


# ----------------------------------------------------------------------------------------- weights


def test_load_model_state_round_trip(tmp_path):
    torch.manual_seed(1)
    src = create_model("digits_cnn")
    path = save_checkpoint(tmp_path / "m.pt", {"model": src.state_dict(), "model_name": "digits_cnn"})
    dst = create_model("digits_cnn")
    load_model_state(dst, load_checkpoint(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_load_resnet56_into_resnet20_is_one_clear_line(tmp_path):
    src = create_model("resnet56")
    path = save_checkpoint(tmp_path / "r56.pt", {"model": src.state_dict(), "model_name": "resnet56"})
    dst = create_model("resnet20")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(LeancnnError) as info:
        load_model_state(dst, load_checkpoint(path), f"checkpoint '{path}'")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"checkpoint '{path}' holds weights of model 'resnet56', which do not fit model 'resnet20'")
    # 6 extra blocks per stage x 3 stages x 2 ConvBnAct x (conv weight + 5 BatchNorm tensors)
    assert msg.endswith(": 216 unexpected tensors (e.g. layer1.3.conv1.0.weight)")
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # nothing half-loaded


def test_load_raw_state_dict_of_another_architecture():
    with pytest.raises(LeancnnError, match=r"^checkpoint holds weights of another architecture, which do not fit "
                                           r"model 'digits_cnn': 9 shape mismatches \(e\.g\. conv1\.0\.weight: "
                                           r"\(32, 3, 3, 3\) vs \(64, 3, 3, 3\)\)$"):
        load_model_state(create_model("digits_cnn"), create_model("digits_cnn", hidden=32).state_dict())


# ----------------------------------------------------------------------------------------- registration networks


@pytest.mark.parametrize("name, kind, params, macs", [
    ("reg_local", "local", 1_201_479, 360_461_568),
    ("reg_global", "global", 605_796, 219_254_784),
    ("reg_composite", "composite", 1_338_051, 434_706_432),
])
def test_registration_networks_are_registered(name, kind, params, macs):
    from leancnn.models.regnet import build_regnet

    entry = get_model_entry(name)
    assert (entry.kind, entry.num_classes, entry.num_inputs, entry.input_size) == \
        ("registration", None, 2, (1, 24, 32, 22))
    assert entry.description.split(" (")[0] == {"local": "LocalNet", "global": "GlobalNet",
                                                 "composite": "CompositeNet"}[kind]
    torch.manual_seed(0)
    model = create_model(name)
    assert model.model_name == name
    # the registration task's default widths at the MR-US network grid
    extra = {"global_channels": [4, 8, 16, 32]} if kind == "composite" else {}
    same = build_regnet(kind, [8, 16, 32, 64], (24, 32, 22) if kind != "local" else None, **extra)
    assert count_params(model) == count_params(same) == params
    assert count_macs(model, entry.input_size, num_inputs=2) == macs
    moving, fixed = torch.rand(1, 1, 24, 32, 22), torch.rand(1, 1, 24, 32, 22)
    with torch.no_grad():
        ddf = model.eval()(moving, fixed)["ddf"]
    assert ddf.shape == (1, 3, 24, 32, 22)
    assert ddf.abs().max().item() < 1e-5  # zero summands, identity affine: the networks start at the identity
    with pytest.raises(LeancnnError, match=rf"^model '{name}' is a registration network: it takes no num_classes$"):
        create_model(name, num_classes=3)


def test_classifier_entries_keep_their_kind():
    for name in MODELS:
        entry = get_model_entry(name)
        assert entry.kind == "classifier" and entry.num_inputs == 1


def test_register_model_checks_the_kind():
    before = dict((n, get_model_entry(n)) for n in list_models())
    with pytest.raises(ValueError, match=r"^kind must be one of \('classifier', 'registration'\), got 'detector'$"):
        register_model("x", kind="detector")
    with pytest.raises(ValueError, match=r"^a registration takes no num_classes \(None\), got num_classes=10$"):
        register_model("x", kind="registration")
    with pytest.raises(ValueError, match=r"^a classifier takes num_classes, got num_classes=None$"):
        register_model("x", num_classes=None)
    assert dict((n, get_model_entry(n)) for n in list_models()) == before


def test_macs_of_a_model_with_two_inputs():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(2, 4, 3, padding=1)

        def forward(self, a, b):
            return self.conv(torch.cat([a, b], dim=1))

    assert count_macs(Pair(), (1, 4, 8, 8), num_inputs=2) == 4 * 8 * 8 * 4 * 2 * 27
