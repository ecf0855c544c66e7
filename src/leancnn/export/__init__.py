"""ONNX export: plain classifiers, registration networks (two volumes in, a displacement field out), and one step
of a stream MoViNet with its state as graph inputs and outputs; an onnxruntime runner for the stream step.

Every export is one self-contained ``.onnx`` file (weights inside, no external-data files), written atomically
(temp file + rename: a reader never sees half a model), with static shapes (the ones given), by torch's default
exporter (``torch.onnx.export(..., dynamo=True)``); ``exporter="torchscript"`` selects the older tracing exporter,
``"auto"`` (default) falls back to it if the dynamo exporter fails. The model is exported in eval mode from a
copy: the caller's model (weights, mode) is not touched. The file's metadata (``leancnn.*``) says what it holds
(``leancnn.export``: ``classifier``, ``registration`` or ``movinet_stream_step``) and which exporter wrote it.

**Plain classifier** (:func:`export_model`): input ``input`` (``input_shape``, batch included), output
``logits``.

**Registration network** (:func:`export_model` on a :mod:`leancnn.models.regnet` network: ``reg_local``,
``reg_global``, ``reg_composite``, or a ``leancnn register`` run's): inputs ``moving`` and ``fixed``, float
``[B, C, X, Y, Z]`` each (``input_shape``; C = 1 for the registered networks, which take ``in_channels = 2``),
output ``ddf`` float ``[B, 3, X, Y, Z]``: the network's dense displacement field (its ``"ddf"`` entry, fixed-grid
voxel units; the affine ``theta`` of GlobalNet / CompositeNet and the composite's parts are not exported). The
moving image is expected on the fixed grid already, as the networks take it. Only the dynamo exporter exports
these networks (the tracing exporter fails on their batch-statistics BatchNorm and the affine head's grid).

**Stream step** (:func:`export_stream_step`), the contract of :meth:`leancnn.models.movinet.MoViNet.stream_step`
as a graph. Names, in this order:

* inputs: ``frames`` float ``[B, 3, T, H, W]``, then ``state.<key>`` for every key of ``model.init_state(B, H,
  W)`` (``block{b}_layer{l}_stream_buffer``, ``block{b}_layer{l}_pool_buffer``, ``head_pool_buffer``: float;
  ``frame_count``: int64 ``[1]``);
* outputs: ``logits`` float ``[B, classes]`` (the classifier on the mean over every frame so far), then
  ``new_state.<key>`` for the same keys in the same order.

Feed every ``new_state.<key>`` back as ``state.<key>``; zeros (frame count 0) start a video. By default the graph
is that of ``model.fuse_for_inference(torch.contiguous_format)`` (BatchNorm folded, 2-D convolutions on the frame,
the temporal convolutions as multiply-adds on the buffers; the same logits to float rounding), which
onnxruntime runs about 1.8× faster than the 3-D graph (A0 @ 172, one thread: about 3.8 against 6.7 ms per frame,
``docs/benchmarks.md``); ``fuse=False`` exports the model as it is.

:class:`OnnxStream` runs such a file with onnxruntime: ``init_state()`` (numpy zeros, shapes and dtypes read from
the graph), ``step(frames, state) -> (logits, new_state)``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..io import atomic_path

FRAMES, LOGITS, INPUT = "frames", "logits", "input"
MOVING, FIXED, DDF = "moving", "fixed", "ddf"
STATE_PREFIX, NEW_STATE_PREFIX = "state.", "new_state."
KIND_KEY, STREAM_KIND, MODEL_KIND = "leancnn.export", "movinet_stream_step", "classifier"
REGISTRATION_KIND = "registration"
EXPORTERS = ("auto", "dynamo", "torchscript")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs a warning per torchvision op it cannot register (torchvision is not needed)."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            opset: int | None, exporter: str, metadata: dict[str, str]) -> Path:
    """Export ``module(*args)`` to one .onnx file at ``path`` atomically, then stamp the metadata."""
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path '{path}' is a directory")
    with atomic_path(path) as tmp:
        used, first_error = None, None
        for name in (("dynamo", "torchscript") if exporter == "auto" else (exporter,)):
            try:
                with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=output_names,
                                      opset_version=opset, dynamo=name == "dynamo", external_data=False,
                                      **({"verbose": False} if name == "dynamo" else {}))
                used = name
                break
            except Exception as e:  # noqa: BLE001 - "auto" falls back to the tracing exporter on any failure
                if exporter != "auto" or name == "torchscript":
                    if first_error is not None:
                        raise RuntimeError(f"ONNX export failed with both exporters: dynamo: {first_error}; "
                                           f"torchscript: {e}") from e
                    raise
                first_error = e
        proto = onnx.load(str(tmp))
        got_in = [i.name for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}]
        got_out = [o.name for o in proto.graph.output]
        if got_in != input_names or got_out != output_names:  # the names are the contract: never ship others
            raise RuntimeError(f"the {used} exporter renamed the graph's inputs/outputs: {got_in} -> {got_out}")
        for key, value in {**metadata, "leancnn.exporter": used, "leancnn.torch": torch.__version__}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save_model(proto, str(tmp))
    return path


class _StreamStepGraph(nn.Module):
    """``forward(frames, *state) -> (logits, *new_state)`` with the state as flat positional tensors in
    ``keys`` order: the signature an ONNX graph needs."""

    def __init__(self, model: nn.Module, keys: Sequence[str]):
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, frames: torch.Tensor, *state: torch.Tensor):
        logits, new = self.model.stream_step(frames, dict(zip(self.keys, state)))
        return (logits, *(new[k] for k in self.keys))


def export_stream_step(model: nn.Module, path: str | os.PathLike, height: int, width: int, batch: int = 1,
                       frames: int = 1, opset: int | None = None, fuse: bool = True, exporter: str = "auto"
                       ) -> Path:
    """Write one step of stream MoViNet ``model`` (``movinet_aX_stream``) for ``batch`` clips of ``frames`` new
    frames of ``height x width`` to ``path`` (names and order: module docstring). Returns the path."""
    for name, value in (("height", height), ("width", width), ("batch", batch), ("frames", frames)):
        _positive_int(name, value)
    g = stream_graph(model, batch, frames, height, width, fuse)
    return _export(g.module, g.args, Path(path), g.inputs, g.outputs, opset, exporter, g.metadata)


@dataclass
class Graph:
    """What an exporter takes: ``module(*args)`` in eval mode (a copy: the caller's model is untouched), the
    names of its inputs and outputs in order, the state keys of a stream step (``[]`` otherwise), and the
    ``leancnn.*`` metadata that says what it holds (``leancnn.export``: :data:`MODEL_KIND`,
    :data:`REGISTRATION_KIND` or :data:`STREAM_KIND`)."""

    module: nn.Module
    args: tuple
    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, object]
    state_keys: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.metadata[KIND_KEY])


def stream_graph(model: nn.Module, batch: int, frames: int, height: int, width: int, fuse: bool = True) -> Graph:
    """The stream step of ``model`` (a stream MoViNet) as a :class:`Graph` (``fuse``: the inference form)."""
    from ..models.movinet import FusedStreamMovinet, MoViNet

    if not isinstance(model, (MoViNet, FusedStreamMovinet)):
        raise ValueError(f"model must be a stream MoViNet (movinet_aX_stream), got {type(model).__name__}")
    if not model.stream:
        raise ValueError(f"model: {getattr(model, 'model_name', 'this model')} is a base (non-causal) MoViNet, which "
                         "has no stream step; export a stream model (movinet_aX_stream)")
    if isinstance(model, FusedStreamMovinet):
        step = copy.deepcopy(model)
        step.channels_last = False  # ONNX has no strides: the NCHW form of the same graph
    elif fuse:
        step = model.fuse_for_inference(torch.contiguous_format)
    else:
        step = copy.deepcopy(model).eval()
    p = next(step.parameters())
    state = step.init_state(batch, height, width)
    keys = list(state)
    clip = torch.zeros(batch, step.in_chans, frames, height, width, dtype=p.dtype, device=p.device)
    metadata = {KIND_KEY: STREAM_KIND, "leancnn.model": getattr(model, "model_name", type(model).__name__),
                "leancnn.batch": batch, "leancnn.frames": frames, "leancnn.height": height, "leancnn.width": width,
                "leancnn.fused": bool(fuse or isinstance(model, FusedStreamMovinet))}
    return Graph(_StreamStepGraph(step, keys).eval(), (clip, *state.values()),
                 [FRAMES, *(STATE_PREFIX + k for k in keys)], [LOGITS, *(NEW_STATE_PREFIX + k for k in keys)],
                 metadata, keys)


def is_stream(model: nn.Module) -> bool:
    """Whether ``model`` is a stream MoViNet (its export is the stream step)."""
    from ..models.movinet import FusedStreamMovinet, MoViNet

    return isinstance(model, (MoViNet, FusedStreamMovinet)) and bool(model.stream)


def model_graph(model: nn.Module, input_shape: Sequence[int], fuse: bool = True, step: bool | None = None) -> Graph:
    """``model`` for inputs of ``input_shape`` (batch first) as a :class:`Graph`, whatever it is: a stream MoViNet
    (``(B, 3, T, H, W)``: T new frames per step, the state as named inputs and outputs), a registration network
    (``(B, C, X, Y, Z)``, the shape of each of ``moving`` and ``fixed``; output ``ddf``) or a classifier (input
    ``input``, output ``logits``). ``step=False`` exports a stream MoViNet's whole-clip forward as a classifier
    (default: its stream step). Bad shapes are refused with :class:`ValueError` naming what the model takes."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of positive ints (batch first), "
                         f"got {input_shape!r}")
    if is_stream(model) if step is None else step:
        if len(shape) != 5 or shape[1] != model.in_chans:
            raise ValueError(f"input_shape of a stream step is (B, {model.in_chans}, T, H, W) (T new frames per step), "
                             f"got {input_shape!r}")
        b, _, t, h, w = shape
        return stream_graph(model, b, t, h, w, fuse)
    registration = is_registration(model)
    if registration and len(shape) != 5:
        raise ValueError(f"input_shape of a registration network is (B, C, X, Y, Z), the shape of each of its two "
                         f"inputs (moving, fixed), got {input_shape!r}")
    net = copy.deepcopy(model).eval()
    if len(shape) == 4:  # a model converted to channels-last (training, the latency tool's eager backend) exports
        net = net.to(memory_format=torch.contiguous_format)  # in the plain layout every runtime expects
    p = next(net.parameters(), None)
    x = torch.zeros(shape, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    kind, args, names, outputs = MODEL_KIND, (x,), [INPUT], [getattr(model, "export_output", LOGITS)]
    if registration:
        net, args, kind = _DdfGraph(net).eval(), (x, x.clone()), REGISTRATION_KIND
        names, outputs = [MOVING, FIXED], [DDF]
        refusal = registration_refusal(net.model, shape)
        if refusal:
            raise ValueError(f"input_shape {shape}: {refusal}")
    metadata = {KIND_KEY: kind, "leancnn.model": getattr(model, "model_name", type(model).__name__),
                "leancnn.input_shape": "x".join(map(str, shape))}
    return Graph(net, args, names, outputs, metadata)


def is_registration(model: nn.Module) -> bool:
    """Whether ``model`` is a registration network (:mod:`leancnn.models.regnet`): two inputs, a DDF out."""
    from ..models.regnet import CompositeNet, GlobalNet, LocalNet

    return isinstance(model, (LocalNet, GlobalNet, CompositeNet))


def registration_refusal(model: nn.Module, shape: Sequence[int]) -> str | None:
    """Why registration network ``model`` cannot take two inputs of ``shape`` (batch included), in the network's
    own words (channels; the grid an affine head is built for), or ``None`` when it takes them: one forward pass on
    zeros, so a caller refuses a wrong shape in one line before exporting or timing anything."""
    from ..errors import LeancnnError

    p = next(model.parameters(), None)
    x = torch.zeros(tuple(shape), device=p.device if p is not None else "cpu")
    try:
        with torch.no_grad():
            model(x, x)
    except LeancnnError as e:
        return str(e)
    return None


class _DdfGraph(nn.Module):
    """``forward(moving, fixed) -> ddf``: a registration network's displacement field alone (the ``"ddf"`` entry
    of the dict it returns), the one output its graph has."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.model(moving, fixed)["ddf"]


def export_model(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], opset: int | None = None,
                 exporter: str = "auto") -> Path:
    """Write ``model`` for inputs of ``input_shape`` (batch included) to ``path``; returns the path. A classifier
    (e.g. ``(1, 3, 32, 32)``): input ``input``, output ``logits``. A registration network (:func:`is_registration`;
    ``(B, C, X, Y, Z)``, the shape of each of its two inputs): inputs ``moving``, ``fixed``, output ``ddf``."""
    g = model_graph(model, input_shape, step=False)  # a stream MoViNet: its whole-clip forward
    return _export(g.module, g.args, Path(path), g.inputs, g.outputs, opset, exporter, g.metadata)


_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxStream:
    """A stream-step export (:func:`export_stream_step`) run by onnxruntime on the CPU.

    ``init_state()`` gives the zero state (numpy, shapes and dtypes read from the graph's inputs);
    ``logits, state = s.step(frames, state)`` feeds the next frames (``[B, 3, T, H, W]``, float32, exactly the
    exported shape). ``keys`` lists the state keys in graph order; ``threads`` sets onnxruntime's
    ``intra_op_num_threads`` (``None``: its default); ``config`` adds session configuration entries, e.g.
    ``{"session.intra_op.allow_spinning": "0"}`` on a machine shared with other work."""

    def __init__(self, path: str | os.PathLike, threads: int | None = 1, config: dict[str, str] | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at '{path}'" + (" (a directory)" if path.is_dir() else ""))
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = _positive_int("threads", threads)
            opts.inter_op_num_threads = 1
        for key, value in (config or {}).items():
            opts.add_session_config_entry(str(key), str(value))
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a file it cannot read
            raise ValueError(f"'{path}' is not a readable ONNX model: {str(e).splitlines()[0][:200]}") from None
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        keys = [n[len(STATE_PREFIX):] for n in inputs if n.startswith(STATE_PREFIX)]
        want_in = [FRAMES, *(STATE_PREFIX + k for k in keys)]
        want_out = [LOGITS, *(NEW_STATE_PREFIX + k for k in keys)]
        if list(inputs) != want_in or outputs != want_out or "frame_count" not in keys:
            kind = self.metadata.get(KIND_KEY, "unknown")
            raise ValueError(f"'{path}' is not a MoViNet stream-step export (export kind: {kind}; inputs "
                             f"{list(inputs)[:3]}..., outputs {outputs[:3]}...); write one with "
                             "leancnn.export.export_stream_step")
        self.keys = keys
        self.frames_shape = tuple(inputs[FRAMES].shape)
        self._shapes = {k: tuple(inputs[STATE_PREFIX + k].shape) for k in keys}
        self._dtypes = {k: _NUMPY[inputs[STATE_PREFIX + k].type] for k in keys}
        self._out_names = want_out

    def init_state(self) -> dict[str, np.ndarray]:
        """The state at the start of a video: zeros of every state input's shape and dtype."""
        return {k: np.zeros(self._shapes[k], dtype=self._dtypes[k]) for k in self.keys}

    def step(self, frames: np.ndarray, state: dict[str, np.ndarray] | None = None
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run one step: ``(logits, new state)``; ``state=None`` starts a video."""
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        if frames.shape != self.frames_shape:
            raise ValueError(f"frames has shape {frames.shape}, this export takes {self.frames_shape}")
        if state is None:
            state = self.init_state()
        missing = [k for k in self.keys if k not in state]
        if missing:
            raise ValueError(f"state is missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        feed = {FRAMES: frames, **{STATE_PREFIX + k: state[k] for k in self.keys}}
        out = self.session.run(self._out_names, feed)
        return out[0], dict(zip(self.keys, out[1:]))




def to_executorch(*args, **kwargs):
    """See :func:`leancnn.export.pte.to_executorch` (imported on first use: ExecuTorch is slow to import)."""
    from .pte import to_executorch as impl

    return impl(*args, **kwargs)


def load_executorch(*args, **kwargs):
    """See :func:`leancnn.export.pte.load_executorch`."""
    from .pte import load_executorch as impl

    return impl(*args, **kwargs)


__all__ = ["DDF", "FIXED", "FRAMES", "Graph", "LOGITS", "MOVING", "NEW_STATE_PREFIX", "OnnxStream", "STATE_PREFIX",
           "export_model", "export_stream_step", "is_registration", "is_stream", "load_executorch", "model_graph",
           "registration_refusal", "stream_graph", "to_executorch"]
