"""The MoViNet search space as data (issue 22, part 2): A0–A5 are points of the "full" space and decode to the
reference's parameter counts; A0 is a point of the "small" space; sampled points (and one with squeeze-excite off
and the NAS space's 1x7x7 / 5x1x1 / 7x1x1 kernels) build stream models whose frame-by-frame logits equal the whole
clip's, whose fused form equals them and whose stream step exports to ONNX; the architecture text round-trips and
refuses malformed text in one line; out-of-space points are refused naming the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.movinet_weights import randomise
from test_movinet import PARAMS
from test_movinet_stream import streamed

import leancnn
from leancnn.errors import LeancnnError
from leancnn.models import get_model_entry
from leancnn.models.movinet import A0_ARCH, ARCH_INPUT_SIZE, SPECS, ArchError, MoViNet, MovinetSpec
from leancnn.search.movinet_space import (
    KERNELS,
    STRIDES,
    arch_string,
    build,
    decode,
    encode,
    kernel_text,
    movinet_space,
    parse_kernel,
)

FULL, SMALL = movinet_space("full"), movinet_space("small")


def nas_point() -> dict:
    """A0 with the kernels the published models do not use and squeeze-excite off on some layers: a stride-2
    layer with a 5x1x1 kernel (spatial kernel 1, stride 2), a layer with neither a temporal buffer nor SE (no
    state at all), 7x1x1 and 1x7x7."""
    point = encode(SPECS["a0"])
    point.update({"b2_l0_kernel": "1x7x7", "b2_l0_se": False,  # no state at all
                  "b3_l0_kernel": "5x1x1", "b3_l0_se": False,  # spatial kernel 1, stride 2
                  "b3_l1_kernel": "7x1x1",
                  "b4_l0_kernel": "7x1x1", "b4_l0_se": False,
                  "b5_l2_kernel": "1x7x7",
                  "b6_l0_kernel": "5x1x1", "b6_l3_se": False})
    return SMALL.check(point)


# ----------------------------------------------------------------------------------------- the published models


@pytest.mark.parametrize("name", list(SPECS))
def test_published_models_are_points_of_the_full_space_with_the_reference_parameter_counts(name):
    spec = SPECS[name]
    point = FULL.check(encode(spec))
    assert point["b2_depth"] == len(spec.blocks[0][2]) and point["b6_width"] == spec.blocks[4][0]
    decoded = decode(point)
    assert decoded.to_string() == spec.to_string() == arch_string(point)
    assert decode(point, input_size=spec.input_size) == spec  # the same spec, tuple for tuple
    base, stream = PARAMS[name]
    assert leancnn.count_params(build(point, num_classes=600, stream=False)) == base
    positional = name in ("a3", "a4", "a5")
    model = build(point, num_classes=600, positional=positional)
    assert model.model_name == "movinet_arch_stream" and leancnn.count_params(model) == stream


def test_a0_is_a_point_of_the_small_space_and_small_points_are_full_points():
    assert SMALL.check(encode(SPECS["a0"]))
    for name in ("a1", "a5"):
        with pytest.raises(LeancnnError, match="outside its domain"):
            SMALL.check(encode(SPECS[name]))
    for seed in range(20):
        point = SMALL.sample(seed)
        assert FULL.check(point) and decode(point, "small").to_string() == decode(point).to_string()
    assert len(set(SMALL.names)) == len(SMALL.names) and set(SMALL.names) <= set(FULL.names)


def test_the_space_names_and_fixed_ranges():
    assert KERNELS == ("1x3x3", "1x5x5", "1x7x7", "3x3x3", "5x3x3", "5x1x1", "7x1x1") and STRIDES == (2, 2, 2, 1, 2)
    assert FULL.names[:5] == ["stem", "project", "dense", "b2_width", "b2_depth"]
    assert FULL["b3_l2_expand"].when == ("b3_depth", 2) and FULL["b3_l0_kernel"].when is None
    assert FULL["b6_l0_kernel"].choices == KERNELS and FULL["b6_l0_se"].choices == (True, False)
    assert FULL["b4_width"].step == 8 and FULL["b4_l0_expand"].step == 8 and 2048 in FULL["dense"].choices
    assert SMALL["b3_depth"].values() == [1, 2, 3, 4] and set(SMALL["dense"].choices) == {256, 512, 1024, 2048}
    point = SMALL.sample(3)
    assert all(f"b{i}_l{point[f'b{i}_depth']}_expand" not in point for i in range(2, 7))  # inactive layers absent
    assert FULL.fingerprint() != SMALL.fingerprint() and movinet_space("small").fingerprint() == SMALL.fingerprint()
    with pytest.raises(LeancnnError, match="scale must be one of full, small"):
        movinet_space("tiny")
    assert [parse_kernel(k) for k in KERNELS][5:] == [(5, 1, 1), (7, 1, 1)] and kernel_text((1, 7, 7)) == "1x7x7"
    for bad in ("3x3", "2x3x3", "1x5x5x5", "axbxc", 3):
        with pytest.raises(ValueError, match="is not TxHxW with odd sizes"):
            parse_kernel(bad)


def test_out_of_space_points_are_refused_naming_the_key():
    point = encode(SPECS["a0"])
    cases = [({"b3_depth": 5, "b3_l3_expand": 80, "b3_l3_kernel": "3x3x3", "b3_l3_se": True}, "b3_depth=5"),
             ({"b4_l1_kernel": "3x5x5"}, "b4_l1_kernel='3x5x5'"),
             ({"b6_width": 100}, "b6_width=100"),  # off the step-8 grid
             ({"dense": 4096}, "dense=4096"),
             ({"b2_l0_se": 1}, "b2_l0_se=1"),
             ({"b2_l1_expand": 24}, "'b2_l1_expand' is inactive")]
    for change, words in cases:
        with pytest.raises(LeancnnError, match="^MoViNet point of search space 'movinet_small': .*" + words.replace(
                "[", r"\[")) as info:
            decode({**point, **change}, "small")
        assert "\n" not in str(info.value)
    missing = dict(point)
    del missing["b5_l3_kernel"]
    with pytest.raises(LeancnnError, match="missing parameter 'b5_l3_kernel'"):
        decode(missing)
    wrong = MovinetSpec(8, SPECS["a0"].blocks[:4], 480)
    with pytest.raises(ArchError, match=r"strides \(2, 2, 2, 1\); the MoViNet space has the reference's 5"):
        encode(wrong)
    wrong = MovinetSpec(8, tuple((c, 1 if b == 1 else s, ls) for b, (c, s, ls) in enumerate(SPECS["a0"].blocks)), 480)
    with pytest.raises(ArchError, match=r"strides \(2, 1, 2, 1, 2\)"):
        encode(wrong)


# ----------------------------------------------------------------------------------------- the architecture text


def test_the_text_of_a0_and_its_round_trip():
    assert A0_ARCH == ("s8-p480-d2048|8s2:24k155|32s2:80k333,80k333,80k333|56s2:184k533,112k333,184k333|"
                       "56s1:184k533,184k333,184k333,184k333|104s2:384k533,280k155,280k155,344k155")
    for name, spec in SPECS.items():
        text = spec.to_string()
        assert MovinetSpec.from_string(text, spec.input_size) == spec, name
        assert MovinetSpec.from_string(text).input_size == ARCH_INPUT_SIZE == (3, 16, 32, 32)
    text = arch_string(nas_point())
    assert "|8s2:24k177n|32s2:80k511n,80k711,80k333|56s2:184k711n," in text
    assert MovinetSpec.from_string(text).blocks[0][2] == ((24, (1, 7, 7), False),)
    for space in (SMALL, FULL):
        for seed in range(10):
            text = arch_string(space.sample(seed))
            assert MovinetSpec.from_string(text).to_string() == text
    explicit_se = MovinetSpec(8, ((8, 2, ((24, (1, 5, 5), True),)),), 64)  # an explicit True is SE on
    assert explicit_se.to_string() == "s8-p64-d2048|8s2:24k155"


@pytest.mark.parametrize("text, words", [
    ("", "the header '' is not s{stem}-p{project}-d{dense}"),
    ("s8-p480", "the header 's8-p480' is not"),
    ("s8-p480-d2048", "no blocks after the header"),
    ("s8-p480-d2048|8s2", "block '8s2' is not {out}s{stride}:{layer},..."),
    ("s8-p480-d2048|8s2:", "layer '' of block '8s2:' is not {expand}k{t}{h}{w}"),
    ("s8-p480-d2048|8s2:24k15", "layer '24k15' of block '8s2:24k15' is not"),
    ("s8-p480-d2048|8s2:24k155,", "layer '' of block"),
    ("s8-p480-d2048|8s2:24k155x", "layer '24k155x'"),
    ("s8-p480-d2048|8s3:24k155", "block 0: the stride must be 1 or 2, got 3"),
    ("s8-p480-d2048|8s2:24k255", "block 0 layer 0: layer (24, (2, 5, 5)): the kernel must be (t, h, w) of odd"),
    ("s8-p480-d2048|8s2:0k155", "the expansion width must be a positive int, got 0"),
    ("s0-p480-d2048|8s2:24k155", "stem must be a positive int, got 0"),
    ("s8-p480-d2048|0s2:24k155", "block 0: out channels must be a positive int, got 0"),
    ("s8-p480-d2048| 8s2:24k155", "block ' 8s2:24k155' is not"),
    (480, "a MoViNet arch must be a string, got int"),
])
def test_malformed_text_is_refused_in_one_line(text, words):
    with pytest.raises(ValueError) as info:
        MovinetSpec.from_string(text)
    msg = str(info.value)
    assert words in msg and "\n" not in msg and isinstance(info.value, LeancnnError), msg


def test_malformed_specs_are_refused_naming_the_layer():
    for layers, words in [(((24, (1, 5)),), "block 0 layer 0: layer (24, (1, 5)): the kernel must be"),
                          (((24, (1, 5, 5), "no"),), "the squeeze-excite switch must be True or False, got 'no'"),
                          (((24,),), "a layer must be (expand, kernel) or (expand, kernel, se)"),
                          ((), "block 0: needs at least one layer")]:
        with pytest.raises(ArchError, match=words.replace("(", r"\(").replace(")", r"\)")):
            MoViNet(MovinetSpec(8, ((8, 2, layers),), 64))
    with pytest.raises(ArchError, match="kernel .* has no text form"):
        MovinetSpec(8, ((8, 2, ((24, (1, 11, 11)),)),), 64).to_string()
    big = MoViNet(MovinetSpec(8, ((8, 2, ((24, (1, 11, 11)),)),), 64), 10)  # any odd kernel builds
    assert big(torch.randn(1, 3, 2, 16, 16)).shape == (1, 10)


# ----------------------------------------------------------------------------------------- the registered builders


def test_the_arch_models_are_registered_and_rebuild_from_their_state_dict():
    for name in ("movinet_arch", "movinet_arch_stream"):
        entry = get_model_entry(name)
        assert entry.input_size == ARCH_INPUT_SIZE and entry.num_classes == 10 and "architecture string" in \
            entry.description
    assert leancnn.count_params(leancnn.create_model("movinet_arch_stream", 600)) == PARAMS["a0"][1]  # default A0
    text = arch_string(nas_point())
    torch.manual_seed(0)
    model = leancnn.create_model("movinet_arch_stream", arch=text, dropout=0.1)
    again = leancnn.create_model("movinet_arch_stream", arch=text)
    again.load_state_dict(model.state_dict())  # strict: the same architecture, parameter for parameter
    assert model.model_name == "movinet_arch_stream" and model.spec.to_string() == text and model.stream
    assert model.blocks[0][0].se is None and model.blocks[1][1].se is not None
    with pytest.raises(ValueError, match="arch: layer '80k3' of block"):
        leancnn.create_model("movinet_arch_stream", arch=text.replace("80k333", "80k3"))
    with pytest.raises(LeancnnError, match="does not take argument.*positional"):
        leancnn.create_model("movinet_arch", arch=text, positional=True)


# ----------------------------------------------------------------------------------------- models of sampled points


def check_stream_parity(model: MoViNet, height: int, width: int, seed: int = 1) -> None:
    clip = torch.randn(2, 3, 5, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        whole = model(clip)
        assert whole.abs().max() > 0.01  # not trivially small
        for sizes in ([1] * 5, [2, 3]):
            logits, state = streamed(model, clip, sizes)
            assert (logits - whole).abs().max().item() <= 1e-5, sizes
            assert state["frame_count"].tolist() == [5]
        for fmt in (torch.channels_last, torch.contiguous_format):
            fused = model.fuse_for_inference(fmt)
            assert (fused(clip) - whole).abs().max().item() <= 1e-5
            logits, fused_state = streamed(fused, clip, [1] * 5)
            assert (logits - whole).abs().max().item() <= 1e-5
            assert {k: v.shape for k, v in fused_state.items()} == {k: v.shape for k, v in state.items()}


def test_squeeze_excite_off_and_the_nas_kernels_stream_like_the_whole_clip():
    torch.manual_seed(0)
    model = randomise(build(nas_point()))
    keys = model.init_state(1, 33, 40)
    assert not any(k.startswith("block0_layer0_") for k in keys)  # 1x7x7 without SE: no state at all
    assert "block1_layer0_stream_buffer" in keys and "block1_layer0_pool_buffer" not in keys
    assert keys["block1_layer0_stream_buffer"].shape == (1, 80, 4, 5, 5)  # 5x1x1 at stride 2 on 9x10: 5x5
    assert "block4_layer3_pool_buffer" not in keys and "block4_layer2_pool_buffer" in keys
    a0_keys = leancnn.create_model("movinet_a0_stream").init_state(1, 33, 40)
    assert set(keys) < set(a0_keys) and len(a0_keys) - len(keys) == 4 + 1  # 4 layers without SE, 3x3x3 -> 1x7x7
    check_stream_parity(model, 33, 40)  # odd and non-square: TF 'same' padding at every stride-2 layer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_small_points_stream_like_the_whole_clip(seed):
    point = SMALL.sample(seed)
    torch.manual_seed(seed)
    check_stream_parity(randomise(build(point), seed), 32, 32, seed)


def test_base_models_of_points_run_the_nas_kernels():
    model = build(nas_point(), stream=False).eval()
    assert model.blocks[1][0].feature[0].kernel_size == (5, 1, 1) and model.blocks[1][0].se is None
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 33, 40)).shape == (1, 10)
    assert leancnn.count_params(model) < leancnn.count_params(build(encode(SPECS["a0"]), stream=False))


@pytest.mark.slow
def test_a_point_without_squeeze_excite_exports_its_stream_step_to_onnx(tmp_path):
    from leancnn.export import OnnxStream, export_stream_step

    torch.manual_seed(0)
    model = randomise(build(nas_point()))
    h, w = 24, 40
    path = export_stream_step(model, tmp_path / "nas.onnx", h, w)
    ort = OnnxStream(path)
    assert ort.keys == list(model.init_state(1, h, w)) and ort.metadata["leancnn.model"] == "movinet_arch_stream"
    clip = torch.randn(1, 3, 5, h, w, generator=torch.Generator().manual_seed(3))
    state, torch_state = None, None
    with torch.no_grad():
        for t in range(5):
            logits, state = ort.step(clip[:, :, t:t + 1].numpy(), state)
            ref, torch_state = model.stream_step(clip[:, :, t:t + 1], torch_state)
            assert np.abs(logits - ref.numpy()).max() <= 1e-4, t
        whole = model(clip)
    assert np.abs(logits - whole.numpy()).max() <= 1e-4 and state["frame_count"].tolist() == [5]
