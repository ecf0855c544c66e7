"""ExecuTorch export (issue 24): ``leancnn.export.to_executorch`` / ``load_executorch`` (fp32 parity with PyTorch for
classifiers, a pruned ResNet-20 and the MoViNet-A0 stream step over 16 frames in steps of 1; int8 through the XNNPACK
quantizer), the refusals of a file that is not what its metadata says, ``leancnn export`` end to end and the latency
tool's ExecuTorch backends. Lowering is slow (ResNet-20 ~8 s, A0 ~30 s on 2 cores), so each program is made once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from leancnn import create_model
from leancnn.cli import main
from leancnn.errors import LeancnnError
from leancnn.export import to_executorch
from leancnn.export.pte import ExecutorchModule, load_executorch, metadata_path, read_metadata

pytestmark = pytest.mark.slow


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def resnet_pte(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """ResNet-20 pruned to half its MACs (its shortcuts become channel maps), as an fp32 program."""
    from leancnn.prune import prune_model

    torch.manual_seed(0)
    model, info = prune_model(create_model("resnet20").eval(), torch.randn(2, 3, 32, 32), 0.5, "l1")
    assert abs(info["ratio"] - 0.5) < 0.03
    path = to_executorch(model.eval(), tmp_path_factory.mktemp("pte") / "resnet20.pte", (1, 3, 32, 32))
    return model, path


def test_pruned_classifier_fp32_matches_pytorch_and_describes_itself(resnet_pte):
    model, path = resnet_pte
    meta = json.loads(metadata_path(path).read_text())
    assert meta["kind"] == "classifier" and meta["model"] == "resnet20" and meta["quantize"] == "fp32"
    assert [i["name"] for i in meta["inputs"]] == ["input"] and meta["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert [o["name"] for o in meta["outputs"]] == ["logits"] and meta["outputs"][0]["shape"] == [1, 10]
    assert meta["bytes"] == path.stat().st_size and meta["versions"]["executorch"]
    # the pruned shortcuts' channel gather (and option A's strided slice) run on the runtime's own kernels
    assert "aten.index_select.default" in meta["outside_delegate"]
    assert not any("convolution" in op for op in meta["outside_delegate"])  # every convolution is XNNPACK's
    program = load_executorch(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    got = program(x)[0]
    assert got.shape == (1, 10) and _rel(got, ref) <= 1e-4
    # the module form cuts a batch into the program's batch of 1 (for evaluation code)
    xs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert _rel(ExecutorchModule(program)(xs), model(xs)) <= 1e-4
    with pytest.raises(ValueError, match=r"input 'input' has shape \(1, 3, 28, 28\)"):
        program(torch.randn(1, 3, 28, 28))


def test_a_program_loaded_before_the_thread_pool_changed_refuses_to_run(resnet_pte):
    # replacing ExecuTorch's pool leaves earlier programs pointing at the freed one: running them crashed the process
    from leancnn.export.pte import pool_generation, set_threads

    _, path = resnet_pte
    x = torch.randn(1, 3, 32, 32)
    set_threads(1)
    old = load_executorch(path, threads=1)
    before = old(x)[0]
    start = pool_generation()
    set_threads(2)
    assert pool_generation() == start + 1
    for call in (lambda: old(x), lambda: old.run(x)):
        with pytest.raises(LeancnnError, match="load it again") as e:
            call()
        assert "\n" not in str(e.value)
    set_threads(2)  # the same size: the pool is kept, so are the programs
    assert pool_generation() == start + 1
    new = load_executorch(path, threads=1)  # loads after setting its threads
    assert _rel(new(x)[0], before) <= 1e-6 and pool_generation() == start + 2


def test_a_pte_not_matching_its_metadata_is_refused_in_one_line(resnet_pte, tmp_path):
    _, path = resnet_pte
    other = to_executorch(create_model("digits_cnn").eval(), tmp_path / "other.pte", (1, 3, 32, 32))
    swapped = tmp_path / "swapped.pte"  # another model's program beside this one's metadata
    shutil.copyfile(other, swapped)
    shutil.copyfile(metadata_path(path), metadata_path(swapped))
    with pytest.raises(LeancnnError, match="another") as e:
        load_executorch(swapped)
    assert "\n" not in str(e.value)
    cut = tmp_path / "cut.pte"  # truncated
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    shutil.copyfile(metadata_path(path), metadata_path(cut))
    with pytest.raises(LeancnnError, match="truncated") as e:
        load_executorch(cut)
    assert "\n" not in str(e.value)
    bare = tmp_path / "bare.pte"  # no metadata beside it
    shutil.copyfile(path, bare)
    with pytest.raises(LeancnnError, match="no metadata"):
        load_executorch(bare)
    junk = tmp_path / "junk.pte"  # not a program at all, metadata consistent with the bytes
    junk.write_bytes(b"not an executorch program" * 10)
    meta = read_metadata(path, check=False)
    import hashlib

    meta.update(bytes=junk.stat().st_size, sha256=hashlib.sha256(junk.read_bytes()).hexdigest())
    metadata_path(junk).write_text(json.dumps(meta))
    with pytest.raises(LeancnnError, match="could not be loaded by the ExecuTorch runtime") as e:
        load_executorch(junk)
    assert "\n" not in str(e.value)
    with pytest.raises(LeancnnError, match="holds a classifier"):
        load_executorch(path, kind="movinet_stream_step")


class _PadPool(torch.nn.Module):
    """conv -> explicit zero padding -> pooling -> conv: MoViNet's TF-'same' pooling as it is exported."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.nn.functional.avg_pool2d(torch.nn.functional.pad(self.a(x), (0, 1, 0, 1)), 3, 2))


def test_int8_zero_padding_shares_its_input_quantization_so_the_program_loads(tmp_path):
    # observed on its own, an int8 pad gets another scale than its input and XNNPACK refuses to build the program
    # ("Failed to create StaticConstantPad node"): the MoViNet-A0 int8 stream step did not load
    from leancnn.export import model_graph
    from leancnn.export.pte import quantize_int8

    torch.manual_seed(0)
    net = _PadPool().eval()
    calibration = [torch.randn(2, 3, 16, 16) for _ in range(4)]
    converted, _, _ = quantize_int8(model_graph(net, (1, 3, 16, 16)), calibration)
    pads = [n for n in converted.graph.nodes if str(n.target) == "aten.pad.default"]
    assert pads
    for pad in pads:  # int8 in, int8 out, with the same quantization parameters
        dq_in, q_out = pad.args[0], next(iter(pad.users))
        assert "dequantize" in str(dq_in.target) and "quantize_per_tensor" in str(q_out.target)
        assert "dequantize" not in str(q_out.target)
        assert tuple(dq_in.args[1:3]) == tuple(q_out.args[1:3])
    path = to_executorch(net, tmp_path / "pad.pte", (1, 3, 16, 16), quantize="int8", calibration=calibration)
    x = torch.randn(1, 3, 16, 16)
    out = load_executorch(path)(x)[0]
    with torch.no_grad():
        ref = net(x)
    assert out.shape == ref.shape and _rel(out, ref) < 0.1


def test_a_program_the_runtime_cannot_initialise_is_refused_with_its_reason():
    from leancnn.export.pte import check_loads

    with pytest.raises(LeancnnError, match="could not be loaded by the ExecuTorch runtime") as e:
        check_loads(b"not an executorch program" * 10, "junk")
    assert "\n" not in str(e.value)


def test_stream_step_matches_pytorch_over_16_frames_in_steps_of_1(tmp_path):
    torch.manual_seed(0)
    model = create_model("movinet_a0_stream", num_classes=10).eval()
    path = to_executorch(model, tmp_path / "a0.pte", (1, 3, 1, 48, 48))
    program = load_executorch(path, kind="movinet_stream_step")
    meta = program.metadata
    assert program.inputs[0] == "frames" and program.outputs[0] == "logits"
    assert program.inputs[1:] == [f"state.{k}" for k in meta["state_keys"]]
    assert program.outputs[1:] == [f"new_state.{k}" for k in meta["state_keys"]]
    assert "frame_count" in program.keys and len(program.keys) > 20
    clip = torch.randn(1, 3, 16, 48, 48)
    state, ref_state = None, None
    with torch.no_grad():
        for t in range(16):
            logits, state = program.step(clip[:, :, t:t + 1], state)
            ref, ref_state = model.stream_step(clip[:, :, t:t + 1], ref_state)
            assert _rel(logits, ref) <= 1e-4, t
        whole = model(clip)
    assert _rel(logits, whole) <= 1e-4  # frame by frame = the whole clip
    assert int(state["frame_count"].reshape(-1)[0]) == 16
    # the module form streams whole clips through the step (what `leancnn export --evaluate` runs on a video run)
    assert _rel(ExecutorchModule(program)(clip), whole) <= 1e-4


def test_video_runs_give_calibration_clips_and_a_test_accuracy_for_any_module():
    from leancnn.config import from_dict
    from leancnn.tasks.video import VideoConfig, VideoSpec

    cfg = from_dict(VideoConfig, {"model": {"name": "movinet_a0_stream"},
                                  "data": {"frames": 8, "height": 24, "width": 24, "train": 20, "val": 10, "test": 10,
                                           "batch_size": 4}})
    spec = VideoSpec()
    assert spec.export_shape(cfg, {}) == (3, 1, 24, 24)  # a stream run exports one frame per step
    batches = spec.calibration_inputs(cfg, {}, 2)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 8, 24, 24)] * 2
    again = spec.calibration_inputs(cfg, {}, 2)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # a fixed draw
    acc = spec.evaluate_export(cfg, {}, create_model("movinet_a0_stream", num_classes=10).eval(), limit=6)
    assert set(acc) == {"test"} and 0.0 <= acc["test"] <= 1.0


def test_bad_arguments_are_refused(tmp_path):
    model = create_model("digits_cnn")
    with pytest.raises(ValueError, match=r"\.pte"):
        to_executorch(model, tmp_path / "m.onnx", (1, 3, 32, 32))
    with pytest.raises(ValueError, match="quantize"):
        to_executorch(model, tmp_path / "m.pte", (1, 3, 32, 32), quantize="int4")
    with pytest.raises(ValueError, match="calibration"):
        to_executorch(model, tmp_path / "m.pte", (1, 3, 32, 32), quantize="int8")
    with pytest.raises(ValueError, match="stream step"):
        to_executorch(create_model("movinet_a0_stream"), tmp_path / "m.pte", (1, 3, 48, 48))
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_retrieval_run_exports_its_embedding(tmp_path):
    import onnxruntime as ort

    from leancnn.export import export_model
    from leancnn.tasks.retrieve import Embedder, RetrieveSpec, embed_pool

    model = create_model("resnet20", num_classes=7).eval()
    net = RetrieveSpec().export_network(None, {}, model)
    assert isinstance(net, Embedder)
    path = export_model(net, tmp_path / "emb.onnx", (1, 3, 32, 32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = embed_pool(model, x)
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    assert got.shape == ref.shape and _rel(got, ref) <= 1e-4


# ------------------------------------------------------------------------------------------ leancnn export

TINY = ["model.name=digits_cnn", "data.domains=[mnist]", "data.limit_train=256", "data.limit_eval=128",
        "data.batch_size=64", "train.epochs=1"]


def _refused(capsys, argv: list[str], words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *TINY, "-o", str(out)]) == 0
    return out


def test_export_cli_int8_reports_accuracy_before_and_after(run, tmp_path, capsys):
    out = tmp_path / "m8.pte"
    assert main(["export", str(run), "-o", str(out), "--quantize", "int8", "--calibrate", "1", "--limit", "64"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "points lost" in text
    meta = read_metadata(out)
    assert meta["quantize"] == "int8" and meta["calibration_steps"] == 64  # 1 batch of 64, cut into batches of 1
    assert meta["quantized_tensors"] > 5  # really int8 inside
    acc = meta["check"]["accuracy"]
    assert set(acc["pytorch"]) == set(acc["exported"]) == {"mnist"}
    assert abs(acc["pytorch"]["mnist"] - acc["exported"]["mnist"]) <= 0.1  # int8: close, reported
    assert 0 < meta["check"]["parity"]["max_rel_diff"] < 0.2  # close, not equal
    assert meta["source"] == str(run) and meta["run_task"] == "classify"
    int8_bytes = out.stat().st_size
    # an existing output is kept without --force; with it, replaced
    before = out.read_bytes()
    _refused(capsys, ["export", str(run), "-o", str(out)], "--force")
    assert out.read_bytes() == before
    assert main(["export", str(run), "-o", str(out), "--force"]) == 0
    meta = read_metadata(out)
    assert meta["quantize"] == "fp32" and meta["check"]["parity"]["max_rel_diff"] <= 1e-4
    assert meta["check"].get("accuracy") is None and int8_bytes < 0.5 * meta["bytes"]  # int8 weights


def test_export_cli_onnx_and_refusals(run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "-o", str(out)]) == 0
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["check"]["parity"]["max_rel_diff"] <= 1e-4 and meta["input_shape"] == [1, 3, 32, 32]
    _refused(capsys, ["export", str(run), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8"],
             "int8 is for --format executorch")
    _refused(capsys, ["export", "resnet20", "-o", str(tmp_path / "q.pte"), "--quantize", "int8"], "give a run")
    _refused(capsys, ["export", str(run), "-o", str(run / "m.pte")], "inside")  # inside the run it exports
    _refused(capsys, ["export", str(run / "best.pt"), "-o", str(tmp_path / "m.txt")], "must name a .pte file")
    _refused(capsys, ["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "n.pte")], "neither")
    foreign = tmp_path / "f.pte.json"  # a .json leancnn did not write is never replaced, even with --force
    foreign.write_text('{"mine": 1}')
    _refused(capsys, ["export", str(run), "-o", str(tmp_path / "f.pte"), "--force"], "not written by leancnn")
    assert foreign.read_text() == '{"mine": 1}' and not (tmp_path / "f.pte").exists()


# ------------------------------------------------------------------------------------------ the latency tool


def test_latency_run_times_executorch_fp32_int8_and_a_pte_file(resnet_pte, tmp_path, fresh_cache):
    from leancnn.config import from_dict
    from leancnn.latency.config import LatencyConfig
    from leancnn.tasks import latency as runner

    _, path = resnet_pte
    cfg = from_dict(LatencyConfig, {
        "models": [{"name": "digits_cnn"}, {"pte": str(path), "label": "r20"}],
        "grid": {"loads": [{"workers": 0}], "threads": [1], "backends": ["eager", "executorch", "executorch_int8"]},
        "protocol": {"samples": 10, "block": 5, "warmup": 2, "settle_seconds": 0.0}})
    out = tmp_path / "run"
    runner.run(cfg, out, log=lambda s: None, report=False)
    conds = {c["backend"]: c for c in map(json.loads, (out / "conditions.jsonl").read_text().splitlines())}
    assert conds["eager"]["samples_per_model"] == {"digits_cnn": 10} and "executorch" in \
        conds["eager"]["skipped_models"]["r20"]
    assert conds["executorch"]["samples_per_model"] == {"digits_cnn": 10, "r20": 10}
    assert conds["executorch_int8"]["samples_per_model"] == {"digits_cnn": 10}  # a .pte runs as it is
    programs = sorted(p.name for p in (fresh_cache / "latency" / "pte").glob("*.pte"))
    assert len(programs) == 2 and any("-int8-" in p for p in programs)  # made once, cached
    versions = json.loads((out / "run.json").read_text())["versions"]
    assert versions["executorch"]
    models = json.loads((out / "models.json").read_text())
    assert models["r20"]["source"] == "pte" and models["r20"]["input"] == [3, 32, 32]
    from leancnn.latency import measure

    spec = runner.resolve_models(cfg)[0]  # the cache is keyed by leancnn's code too: a change of the code (another
    cached = measure.cached_pte(spec, 1, None)  # graph form of the same weights) exports again, never reuses
    assert measure.cached_pte(spec, 1, None) == cached
    measure.code_digest.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(measure, "code_digest", lambda: "another version")
            again = measure.cached_pte(spec, 1, None)
        assert again != cached and again.is_file() and cached.is_file()
    finally:
        measure.code_digest.cache_clear()
    bad = tmp_path / "bad.pte"  # a .pte whose metadata does not match: refused before anything is measured
    bad.write_bytes(path.read_bytes()[:100])
    shutil.copyfile(metadata_path(path), metadata_path(bad))
    with pytest.raises(LeancnnError, match=r"models\[0\]'.*truncated"):
        runner.check_run(from_dict(LatencyConfig, {"models": [{"pte": str(bad)}],
                                                   "grid": {"backends": ["executorch"]}}))
