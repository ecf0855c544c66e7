"""ONNX export (``leancnn.export``) and the inference form of the stream MoViNet (``fuse_for_inference``): an
exported stream step run frame by frame by onnxruntime, carrying its state, gives PyTorch's logits at every step
and the whole clip's at the end; names are the documented contract; plain classifiers export too; the fused
model is the same function as the model it was made from, and states pass between the two."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from test_movinet_stream import randomised, streamed

import leancnn
from leancnn.export import NEW_STATE_PREFIX, STATE_PREFIX, OnnxStream, export_model, export_stream_step
from leancnn.models.movinet import FusedStreamMovinet, StreamingMovinet
from leancnn.nn.fold import fold_batchnorm, unfolded_batchnorms

H, W = 40, 56  # small and non-square


@pytest.fixture(scope="module")
def a0(tmp_path_factory):
    model = randomised("movinet_a0_stream")
    path = export_stream_step(model, tmp_path_factory.mktemp("onnx") / "a0_stream.onnx", H, W)
    return model, path


def _run_both(model, path, clip):
    """Step onnxruntime and PyTorch frame by frame; per-step max |logit difference| and the last logits."""
    ort, state = OnnxStream(path), None
    torch_state, diffs = None, []
    with torch.no_grad():
        for t in range(clip.shape[2]):
            frame = clip[:, :, t:t + 1]
            logits, state = ort.step(frame.numpy(), state)
            ref, torch_state = model.stream_step(frame, torch_state)
            diffs.append(float(np.abs(logits - ref.numpy()).max()))
    return diffs, logits, state, torch_state


@pytest.mark.slow
def test_a0_stream_step_in_onnxruntime_matches_pytorch_frame_by_frame(a0):
    model, path = a0
    clip = torch.randn(1, 3, 6, H, W, generator=torch.Generator().manual_seed(3))
    diffs, logits, state, torch_state = _run_both(model, path, clip)
    assert max(diffs) <= 1e-4, diffs
    with torch.no_grad():
        whole = model(clip)
    assert whole.abs().max() > 0.1  # not trivially small logits
    assert np.abs(logits - whole.numpy()).max() <= 1e-4
    assert state["frame_count"].tolist() == [6] and state["frame_count"].dtype == np.int64
    for key, value in torch_state.items():  # the carried state itself is PyTorch's (sums grow with the frames)
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_stream_export_names_order_and_metadata(a0):
    model, path = a0
    keys = list(model.init_state(1, H, W))
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["frames", *(STATE_PREFIX + k for k in keys)]
    assert [o.name for o in proto.graph.output] == ["logits", *(NEW_STATE_PREFIX + k for k in keys)]
    assert STATE_PREFIX == "state." and NEW_STATE_PREFIX == "new_state."
    assert "state.block1_layer0_stream_buffer" in {i.name for i in proto.graph.input}
    assert not list(path.parent.glob(".*.tmp"))  # written through a temp file that is gone
    s = OnnxStream(path)
    assert s.keys == keys and s.frames_shape == (1, 3, 1, H, W)
    init = s.init_state()
    for k, v in model.init_state(1, H, W).items():
        assert init[k].shape == tuple(v.shape) and not init[k].any()
    assert init["frame_count"].dtype == np.int64 and init["head_pool_buffer"].dtype == np.float32
    meta = s.metadata
    assert meta["leancnn.export"] == "movinet_stream_step" and meta["leancnn.model"] == "movinet_a0_stream"
    assert meta["leancnn.exporter"] in ("dynamo", "torchscript") and (meta["leancnn.height"], meta["leancnn.width"]) \
        == (str(H), str(W))
    with pytest.raises(ValueError, match="frames has shape"):
        s.step(np.zeros((1, 3, 2, H, W), np.float32))


@pytest.mark.slow
def test_a3_stream_with_positional_encoding_exports(tmp_path):
    model = randomised("movinet_a3_stream")
    path = export_stream_step(model, tmp_path / "a3.onnx", 32, 24, batch=2, frames=2, exporter="torchscript")
    clip = torch.randn(2, 3, 6, 32, 24, generator=torch.Generator().manual_seed(4))
    ort, state = OnnxStream(path, threads=2, config={"session.intra_op.allow_spinning": "0"}), None
    with torch.no_grad():
        whole = model(clip)
        for t in range(0, 6, 2):
            logits, state = ort.step(clip[:, :, t:t + 2].numpy(), state)
            ref, _ = model.stream_step(clip[:, :, :t + 2])
            assert np.abs(logits - ref.numpy()).max() <= 1e-4
    assert np.abs(logits - whole.numpy()).max() <= 1e-4 and state["frame_count"].tolist() == [6]
    assert ort.metadata["leancnn.exporter"] == "torchscript"


@pytest.mark.slow
def test_unfused_export_and_the_callers_model_untouched(tmp_path):
    model = randomised("movinet_a0_stream").train()  # exported in eval mode from a copy
    before = copy.deepcopy(model.state_dict())
    path = export_stream_step(model, tmp_path / "a0_3d.onnx", 24, 32, fuse=False)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    clip = torch.randn(1, 3, 4, 24, 32, generator=torch.Generator().manual_seed(5))
    diffs, logits, _, _ = _run_both(model.eval(), path, clip)
    assert max(diffs) <= 1e-4 and OnnxStream(path).metadata["leancnn.fused"] == "False"


def test_bad_exports_are_refused_naming_the_argument(tmp_path):
    stream = leancnn.create_model("movinet_a0_stream")
    with pytest.raises(ValueError, match="model: movinet_a0 is a base"):
        export_stream_step(leancnn.create_model("movinet_a0"), tmp_path / "x.onnx", 32, 32)
    with pytest.raises(ValueError, match="model must be a stream MoViNet"):
        export_stream_step(leancnn.create_model("resnet20"), tmp_path / "x.onnx", 32, 32)
    for kw, name in (({"height": 0, "width": 32}, "height"), ({"height": 32, "width": 2.5}, "width"),
                     ({"height": 32, "width": 32, "batch": True}, "batch"),
                     ({"height": 32, "width": 32, "frames": -1}, "frames")):
        with pytest.raises(ValueError, match=f"^{name} must be a positive int"):
            export_stream_step(stream, tmp_path / "x.onnx", **kw)
    with pytest.raises(ValueError, match="input_shape"):
        export_model(stream, tmp_path / "x.onnx", (1, 3, 0, 32, 32))
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


@pytest.mark.slow
def test_plain_classifier_export_matches_pytorch(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = leancnn.create_model("resnet20")
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))  # BatchNorm statistics that are not the identity
    model.train()
    path = export_model(model, tmp_path / "resnet20.onnx", (2, 3, 32, 32))
    assert model.training  # the caller's mode is kept
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    x = torch.randn(2, 3, 32, 32)
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    with pytest.raises(ValueError, match="not a MoViNet stream-step export \\(export kind: classifier"):
        OnnxStream(path)


@pytest.mark.parametrize("name", ["reg_local", "reg_global", "reg_composite"])
def test_registration_network_export_gives_the_ddf_of_pytorch(tmp_path, name):
    import onnxruntime as ort

    from leancnn.export import DDF, FIXED, KIND_KEY, MOVING, REGISTRATION_KIND, is_registration

    torch.manual_seed(0)
    model = leancnn.create_model(name)
    assert is_registration(model) and not is_registration(leancnn.create_model("resnet20"))
    with torch.no_grad():  # weights that move voxels: the zero-initialised output layers would export a zero field
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shape = (1, 1, 24, 32, 22)  # the registry's grid (an affine head is built for one grid)
    path = export_model(model, tmp_path / f"{name}.onnx", shape)
    meta = {e.key: e.value for e in onnx.load(str(path)).metadata_props}
    assert meta[KIND_KEY] == REGISTRATION_KIND and meta["leancnn.input_shape"] == "1x1x24x32x22"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [MOVING, FIXED] and [o.name for o in sess.get_outputs()] == [DDF]
    g = torch.Generator().manual_seed(1)
    moving, fixed = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    (got,) = sess.run(None, {MOVING: moving.numpy(), FIXED: fixed.numpy()})
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(moving, fixed)["ddf"].numpy()
    assert got.shape == (1, 3, 24, 32, 22) and np.abs(ref).max() > 1e-3  # a field that is not zero
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_registration_export_refuses_a_shape_it_cannot_take(tmp_path):
    with pytest.raises(ValueError, match=r"input_shape of a registration network is \(B, C, X, Y, Z\)"):
        export_model(leancnn.create_model("reg_local"), tmp_path / "r.onnx", (1, 1, 24, 32))
    with pytest.raises(ValueError, match=r"^input_shape \(1, 1, 16, 16, 16\): "):  # the affine head's grid
        export_model(leancnn.create_model("reg_global"), tmp_path / "g.onnx", (1, 1, 16, 16, 16))
    assert not list(tmp_path.iterdir())


def test_onnx_stream_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        OnnxStream(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxStream(junk)


# ------------------------------------------------------------------------------ the inference (fused) form


@pytest.mark.slow
@pytest.mark.parametrize("name", ["movinet_a0_stream", "movinet_a3_stream", "movinet_a5_stream"])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_fused_model_gives_the_whole_clip_logits_for_any_chunking(name, fmt):
    model = randomised(name)
    fused = model.fuse_for_inference(fmt)
    assert isinstance(fused, FusedStreamMovinet) and not fused.training
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())  # noqa: SLF001
    clip = torch.randn(2, 3, 7, 32, 44, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(clip)
        assert (fused(clip) - whole).abs().max() <= 1e-5
        for sizes in ([1] * 7, [2, 1, 4], [3, 3, 1]):
            logits, state = streamed(fused, clip, sizes)
            assert (logits - whole).abs().max().item() <= 1e-5, sizes
            assert state["frame_count"].tolist() == [7]
            assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in model.init_state(2, 32, 44).items()}


def test_states_pass_between_the_model_and_its_fused_form():
    model = randomised("movinet_a0_stream")
    fused = model.fuse_for_inference()
    clip = torch.randn(1, 3, 5, 24, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(clip)
        _, s = fused.stream_step(clip[:, :, :2])
        _, s = model.stream_step(clip[:, :, 2:3], s)
        saved = {k: v.clone() for k, v in s.items()}
        logits, _ = fused.stream_step(clip[:, :, 3:], s)
    assert (logits - whole).abs().max() <= 1e-5
    assert all(torch.equal(saved[k], s[k]) for k in s)  # the input state is not modified
    with pytest.raises(ValueError, match="batch size 1, frames have batch size 2"):
        fused.stream_step(torch.zeros(2, 3, 1, 24, 40), s)
    with pytest.raises(ValueError, match="inference only"):
        fused.train()
    with pytest.raises(ValueError, match="base \\(non-causal\\)"):
        leancnn.create_model("movinet_a0").fuse_for_inference()


def test_fold_batchnorm_folds_every_conv3d_batchnorm_pair():
    model = randomised("movinet_a0_stream")
    folded, n = fold_batchnorm(model)
    assert n == unfolded_batchnorms(model) == 62 and unfolded_batchnorms(folded) == 0
    clip = torch.randn(1, 3, 4, 24, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        whole = model(clip)
        logits, _ = streamed(folded, clip, [1, 1, 2])
    assert (logits - whole).abs().max() <= 1e-5


def test_the_stateful_wrapper_can_stream_through_the_fused_form():
    model = randomised("movinet_a0_stream")
    clip = torch.randn(1, 3, 5, 24, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        whole = model(clip)
    s = StreamingMovinet(model, fuse=True)
    assert isinstance(s.model, FusedStreamMovinet)
    for t in range(5):
        logits = s(clip[:, :, t])
    assert s.frames_seen == 5 and (logits - whole).abs().max() <= 1e-5
    assert isinstance(StreamingMovinet(model).model, leancnn.models.movinet.MoViNet)  # opt-in
