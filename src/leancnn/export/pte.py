"""ExecuTorch export: a ``.pte`` program with the XNNPACK delegate, fp32 or int8, and a runner for it.

:func:`to_executorch` writes any :func:`leancnn.export.model_graph` (a classifier, a pruned classifier, the stream
step of a stream MoViNet with its named state, a registration network) as one ``.pte`` file: ``torch.export`` →
(``quantize="int8"``: the XNNPACK quantizer through torch's PT2E flow, calibrated on the inputs given) →
``to_edge_transform_and_lower`` with :class:`XnnpackPartitioner` → ``to_executorch``. Beside it, ``<name>.pte.json``
holds what a runtime needs and the file itself does not say: the model, the input and output names in the
program's order with their shapes and dtypes, the stream state keys, the quantization, the operators left outside
the delegate, the versions, the file's size and SHA-256. Both files are written atomically (a reader never sees half
a program), the program last: an existing ``.pte`` with stale metadata is never left beside new metadata.

Before anything is written, every operator the delegate did not take is looked up in the ExecuTorch runtime's
kernel registry: an operator with no kernel (e.g. a 3-D grid sampler of a registration network) is refused in one
line that names it, rather than leaving a file that fails on the device at load time.

:func:`load_executorch` runs such a file in ExecuTorch's Python runtime (the same program and XNNPACK kernels a
phone runs): a file whose size or SHA-256 differs from its metadata (truncated, or another model's program put in
its place), a file that is not an ExecuTorch program, or one of another kind than the caller expects is refused
in one line. ``program(*inputs)`` returns the outputs; for a stream step, ``init_state()`` and
``step(frames, state) -> (logits, new_state)`` as :class:`leancnn.export.OnnxStream` has them.

Threads: XNNPACK runs on ExecuTorch's process-wide thread pool; ``threads=`` sets its size (the runtime's default
is one thread per core, which on a machine shared with other work is the oversubscription ``docs/latency.md``
measures).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from ..errors import LeancnnError
from ..io import atomic_path, atomic_write_text
from . import KIND_KEY, STREAM_KIND, Graph, model_graph

FORMAT = "leancnn-executorch/1"
QUANTIZE = (None, "int8")
METHOD = "forward"


def metadata_path(path: str | os.PathLike) -> Path:
    """Where the metadata of ``path`` (a ``.pte``) lives: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet():
    """torch.export / the quantizer / the lowering log and warn a lot about things a user cannot act on."""
    names = ["torch._export", "torch.export", "executorch", "torchao", "torch._dynamo", "torch.fx",
             "torch.utils._pytree", "root"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


def _batches(graph: Graph, calibration: Iterable) -> Iterable[tuple[torch.Tensor, ...]]:
    """The graph's argument tuples for calibration: each item of ``calibration`` is a batch of inputs (a tensor;
    a registration network: a ``(moving, fixed)`` pair) of any batch size, cut into the export's batch (a last
    part smaller than it is dropped); a stream step's items are whole clips ``[N, 3, T, H, W]``, stepped through
    in the export's frames per step with the state carried, so the state inputs are calibrated as they occur."""
    b = graph.args[0].shape[0]
    for item in calibration:
        parts = tuple(item) if isinstance(item, (tuple, list)) else (item,)
        parts = tuple(p.detach().to(graph.args[0].device, graph.args[0].dtype) for p in parts)
        for i in range(0, parts[0].shape[0] - b + 1, b):
            xs = tuple(p[i:i + b] for p in parts)
            if graph.kind != STREAM_KIND:
                yield xs if len(graph.args) == len(xs) else xs * len(graph.args)
                continue
            clip, t = xs[0], graph.args[0].shape[2]
            state = tuple(torch.zeros_like(s) for s in graph.args[1:])
            for j in range(0, clip.shape[2] - t + 1, t):
                out = yield (clip[:, :, j:j + t], *state)
                if out is not None:
                    state = tuple(out[1:])


def _check_shapes(graph: Graph, example: tuple) -> None:
    for name, want, got in zip(graph.inputs, graph.args, example):
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"calibration input '{name}' has shape {tuple(got.shape)}, the export takes "
                             f"{tuple(want.shape)}")


_PAD_OPS = ("aten.pad.default", "aten.constant_pad_nd.default")


def _PadSharingQuantizer():
    """The XNNPACK quantizer, with zero padding sharing its input's quantization (as it does for pooling and
    reshapes). XNNPACK runs an int8 constant pad only with the same scale and zero point on both sides: observed
    separately, the pad's output gets its own, and the program fails to load ("Failed to create StaticConstantPad
    node ... xnn_status_invalid_parameter"). Zero is exact in the shared asymmetric int8, so the padding is the
    same numbers."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    class PadSharingQuantizer(XNNPACKQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:  # in graph order, so a pad after a pad shares the first one's
                if node.op != "call_function" or str(node.target) not in _PAD_OPS:
                    continue
                prev = node.args[0]
                ann = prev.meta.get("quantization_annotation") if isinstance(prev, torch.fx.Node) else None
                if ann is None or ann.output_qspec is None:
                    continue  # a pad of something left in fp32 (a constant) stays fp32
                shared = SharedQuantizationSpec(prev)
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={prev: shared}, output_qspec=shared, _annotated=True)
            return model

    return PadSharingQuantizer()


def quantize_int8(graph: Graph, calibration: Iterable, per_channel: bool = True) -> tuple[nn.Module, int, int]:
    """``graph.module`` quantized to int8 for XNNPACK (weights per channel, activations per tensor, static), by
    torch's PT2E flow: export, ``prepare_pt2e`` with the XNNPACK quantizer, run the calibration inputs
    (:func:`_batches`), ``convert_pt2e``. Returns the converted module, the number of calibration steps run and the
    number of tensors quantized (none is an error: the graph would stay fp32 under an int8 name)."""
    from ..nn.layers import TapCroppedConv2d

    for m in graph.module.modules():  # the quantizer needs every convolution's weight as a parameter, not a slice
        if isinstance(m, TapCroppedConv2d):  # of one (the padding-tap crop of small maps); the sums are the same
            m.crop = False
    with _quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        with torch.no_grad():  # else a forward that disables grad itself (the stream step) is captured as one
            captured = torch.export.export(graph.module, graph.args, strict=False).module()  # opaque submodule
        quantizer = _PadSharingQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
        prepared = prepare_pt2e(captured, quantizer)
        steps, gen = 0, _batches(graph, calibration)
        with torch.no_grad():
            try:
                args = next(gen)
                while True:
                    _check_shapes(graph, args)
                    out = prepared(*args)
                    steps += 1
                    args = gen.send(out if graph.kind == STREAM_KIND else None)
            except StopIteration:
                pass
        if steps == 0:
            raise ValueError(f"int8 needs calibration inputs: none of batch {graph.args[0].shape[0]} or more was given")
        converted = convert_pt2e(prepared)
    quantized = sum(1 for n in converted.graph.nodes if n.op == "call_function" and "quantize_per" in str(n.target)
                    and "dequantize" not in str(n.target))
    if quantized == 0:  # never ship an "int8" program that is fp32 inside
        raise ValueError("int8: the XNNPACK quantizer found no operator to quantize in this graph")
    return converted, steps, quantized


def _outside_delegate(program) -> list[str]:
    """The operators of an edge program that are not inside a delegate call (sorted, unique)."""
    ops = set()
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(getattr(node.target, "__name__", node.target))
        if "executorch_call_delegate" in name or name == "getitem":
            continue
        ops.add(name)
    return sorted(ops)


def _kernel_name(op: str) -> str:
    """An edge op name (``aten.grid_sampler_3d.default``) as the runtime's registry names its kernel
    (``aten::grid_sampler_3d.out``)."""
    parts = op.split(".")
    if len(parts) >= 2:
        ns, name = parts[0], parts[1]
        return f"{ns}::{name}"
    return op


def missing_kernels(ops: Sequence[str]) -> list[str]:
    """The operators of ``ops`` that ExecuTorch's runtime (as installed) has no kernel for."""
    from executorch.runtime import Runtime

    registered = Runtime.get().operator_registry.operator_names
    have = {n.split(".")[0] for n in registered}
    out = []
    for op in ops:
        base = _kernel_name(op)
        if base.startswith(("dim_order_ops::", "quantized_decomposed::")) and base in have:
            continue
        if base not in have:
            out.append(base)
    return out


def lower(module: nn.Module, args: tuple, what: str):
    """``module(*args)`` exported and lowered to XNNPACK: ``(executorch program manager, ops outside the
    delegate)``; :class:`LeancnnError` naming the operators the runtime has no kernel for."""
    with _quiet(), torch.no_grad():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            ep = torch.export.export(module, args, strict=False)
        except Exception as e:  # noqa: BLE001 - torch.export fails with many types; say which step failed
            raise LeancnnError(f"{what}: torch.export failed: {str(e).splitlines()[0][:300]}") from None
        try:
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        except Exception as e:  # noqa: BLE001 - the verifier's SpecViolationError and others: name the operator
            text = str(e)
            op = re.search(r"Operator (?:torch\._ops\.)?(\w+)\.(\w+)(?:\.\w+)? is not in Core ATen", text)
            if op:
                raise LeancnnError(f"{what}: ExecuTorch cannot run {op.group(1)}::{op.group(2)} (not in the core ATen "
                                   "operator set its edge dialect takes, and not taken by the XNNPACK delegate)"
                                   ) from None
            first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
            raise LeancnnError(f"{what}: lowering to ExecuTorch failed: {first[:300]}") from None
    outside = _outside_delegate(edge.exported_program())
    missing = missing_kernels(outside)
    if missing:
        raise LeancnnError(f"{what}: ExecuTorch cannot run {', '.join(missing)} (not taken by the XNNPACK delegate, "
                           "and the runtime has no kernel for it)")
    with _quiet():
        return edge.to_executorch(), outside


def _spec(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def to_executorch(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], *,
                  quantize: str | None = None, calibration: Iterable | None = None, fuse: bool = True,
                  metadata: dict | None = None) -> Path:
    """Write ``model`` for inputs of ``input_shape`` (batch first; a stream MoViNet: ``(B, 3, T, H, W)``, T new
    frames per step) to the ``.pte`` file ``path`` with the XNNPACK delegate, and its metadata beside it
    (``<path>.json``, :func:`metadata_path`). ``quantize="int8"`` quantizes (PT2E, XNNPACK quantizer) on
    ``calibration``: an iterable of input batches (:func:`_batches`). ``metadata``: more entries for the JSON (e.g.
    the run it came from). The caller's model is not touched. Returns the ``.pte`` path."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be None (fp32) or 'int8', got {quantize!r}")
    path = Path(path)
    if path.suffix != ".pte":
        raise ValueError(f"path must name a .pte file, got '{path}'")
    if path.is_dir():
        raise ValueError(f"path '{path}' is a directory")
    graph = model_graph(model, input_shape, fuse=fuse)
    what = f"{graph.metadata['leancnn.model']} ({graph.kind})"
    module, steps, quantized = graph.module, 0, 0
    if quantize == "int8":
        if calibration is None:
            raise ValueError("quantize='int8' needs calibration inputs (a few batches of training data)")
        module, steps, quantized = quantize_int8(graph, calibration)
    program, outside = lower(module, graph.args, what)
    with torch.no_grad():
        outputs = graph.module(*graph.args)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    meta = {
        "format": FORMAT, "kind": graph.kind, "model": graph.metadata["leancnn.model"], "method": METHOD,
        "inputs": [{"name": n, **_spec(t)} for n, t in zip(graph.inputs, graph.args)],
        "outputs": [{"name": n, **_spec(t)} for n, t in zip(graph.outputs, outputs)],
        "state_keys": graph.state_keys,
        "quantize": quantize or "fp32", "calibration_steps": steps, "quantized_tensors": quantized,
        "delegate": "xnnpack", "outside_delegate": outside,
        "graph": {k.removeprefix("leancnn."): v for k, v in graph.metadata.items() if k != KIND_KEY},
        "versions": {"leancnn": _version("leancnn"), "torch": torch.__version__, "executorch": _version("executorch")},
        **(metadata or {}),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            program.write_to_file(f)
        check_loads(tmp, what)  # a program the runtime cannot initialise is never written
        meta["bytes"], meta["sha256"] = tmp.stat().st_size, _sha256(tmp)
        atomic_write_text(metadata_path(path), json.dumps(meta, indent=2) + "\n")
    return path


def read_metadata(path: str | os.PathLike, check: bool = True) -> dict:
    """The metadata of the ``.pte`` at ``path``; with ``check``, the file's size and SHA-256 must match it.
    :class:`LeancnnError` in one line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LeancnnError(f"no .pte file at '{path}'" + (" (a directory)" if path.is_dir() else ""))
    mpath = metadata_path(path)
    if not mpath.is_file():
        raise LeancnnError(f"'{path}' has no metadata beside it ('{mpath.name}'): export it with `leancnn export "
                           "--format executorch` or leancnn.export.to_executorch")
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LeancnnError(f"'{mpath}' is not readable metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LeancnnError(f"'{mpath}' is not leancnn ExecuTorch metadata (format {FORMAT!r})")
    if check:
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise LeancnnError(f"'{path}' has {size} bytes, its metadata says {meta.get('bytes')}: the file is "
                               f"truncated or another program; export it again")
        if _sha256(path) != meta.get("sha256"):
            raise LeancnnError(f"'{path}' is not the program its metadata describes (SHA-256 differs: another "
                               f"model's .pte or a changed file); export it again")
    return meta


@contextlib.contextmanager
def _native_stderr_quiet():
    """ExecuTorch's runtime prints cpuinfo and thread-pool notes on the process's stderr (fd 2) from C++; they say
    nothing a user can act on, unless loading fails. Python's own errors still surface as exceptions. Yields a
    list that holds, on leaving, the lines printed meanwhile (so a failure can name XNNPACK's reason)."""
    import sys
    import tempfile

    lines: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr without a descriptor: nothing to hide
        yield lines
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), fd)
            try:
                yield lines
            finally:
                os.dup2(saved, fd)
                sink.seek(0)
                lines += sink.read(1 << 16).decode("utf-8", "replace").splitlines()
    finally:
        os.close(saved)


def _native_reason(lines: list[str]) -> str:
    """The first line of the runtime's own log that says why (XNNPACK's ``Failed to create ... node``), if any."""
    for line in lines:
        if "Failed" in line or "failed" in line or "error" in line.lower():
            return " (" + line.strip()[:200] + ")"
    return ""


def _load_method(data: bytes | str | os.PathLike, method: str, what: str):
    """``data`` (a ``.pte`` file, or its bytes) loaded in ExecuTorch's runtime and its ``method`` initialised (the
    delegate builds its graph here); :class:`LeancnnError` naming ``what`` and the runtime's own reason otherwise."""
    from executorch.runtime import Runtime

    try:
        with _quiet(), _native_stderr_quiet() as log:
            return Runtime.get().load_program(data).load_method(method)
    except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError with long texts
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise LeancnnError(f"{what} could not be loaded by the ExecuTorch runtime: {first}{_native_reason(log)}"
                           ) from None


def check_loads(data: bytes | str | os.PathLike, what: str) -> None:
    """:class:`LeancnnError` unless the runtime can load ``data`` and initialise its method (see
    :func:`_load_method`)."""
    _load_method(data, METHOD, what)


_POOL = {"generation": 0}  # bumped whenever the thread pool is replaced


def set_threads(threads: int) -> None:
    """The size of ExecuTorch's process-wide thread pool (XNNPACK's threads). Changing it replaces the pool, and a
    program loaded before points at the old one (running it crashes the process): such a program refuses to run
    afterwards (:class:`LeancnnError`, load it again)."""
    from executorch.extension.pybindings import portable_lib

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    with _native_stderr_quiet():
        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
            _POOL["generation"] += 1


def pool_generation() -> int:
    """How many times :func:`set_threads` has replaced the thread pool in this process."""
    return _POOL["generation"]


class ExecutorchProgram:
    """A ``.pte`` written by :func:`to_executorch`, loaded in ExecuTorch's runtime (see the module docstring).

    ``metadata``: its JSON; ``inputs`` / ``outputs``: the names in order; ``program(*tensors)``: the outputs (a
    list of new tensors: the runtime copies them out, the next call does not overwrite them). For a stream step:
    ``keys`` (the state keys), ``init_state()``, ``step(frames, state=None) -> (logits, new_state)``."""

    def __init__(self, path: str | os.PathLike, threads: int | None = 1, kind: str | None = None):

        path = Path(path)
        self.metadata = meta = read_metadata(path)
        if kind is not None and meta.get("kind") != kind:
            raise LeancnnError(f"'{path}' holds a {meta.get('kind')} ({meta.get('model')}), not a {kind}")
        if threads is not None:
            set_threads(threads)
        self._method = _load_method(path, meta.get("method", METHOD), f"'{path}'")
        if self._method is None:
            raise LeancnnError(f"'{path}' has no method '{meta.get('method', METHOD)}'")
        self._generation = _POOL["generation"]
        self.path = path
        self.inputs = [i["name"] for i in meta["inputs"]]
        self.outputs = [o["name"] for o in meta["outputs"]]
        self._in = [(tuple(i["shape"]), getattr(torch, i["dtype"])) for i in meta["inputs"]]
        self.keys = list(meta.get("state_keys") or [])

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if len(inputs) != len(self._in):
            raise ValueError(f"this program takes {len(self._in)} inputs ({', '.join(self.inputs[:4])}"
                             f"{', ...' if len(self.inputs) > 4 else ''}), got {len(inputs)}")
        args = []
        for name, x, (shape, dtype) in zip(self.inputs, inputs, self._in):
            x = torch.as_tensor(x)
            if tuple(x.shape) != shape:
                raise ValueError(f"input '{name}' has shape {tuple(x.shape)}, this program takes {shape}")
            args.append(x.to(dtype).contiguous())
        return self.run(*args)

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The outputs, without the checks and conversions of a call (inputs of the right shape and dtype)."""
        if self._generation != _POOL["generation"]:  # running it would use the freed pool and crash the process
            raise LeancnnError(f"'{self.path}' was loaded before set_threads() replaced ExecuTorch's thread pool: "
                               "load it again")
        return self._method.execute(list(inputs))

    # ---- stream step
    def init_state(self) -> dict[str, torch.Tensor]:
        """The state at the start of a video: zeros of every state input's shape and dtype."""
        if not self.keys:
            raise LeancnnError(f"'{self.path}' is a {self.kind}, not a stream step: it has no state")
        return {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in zip(self.keys, self._in[1:])}

    def step(self, frames: torch.Tensor, state: dict[str, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One stream step: ``(logits, new state)``; ``state=None`` starts a video."""
        if state is None:
            state = self.init_state()
        missing = [k for k in self.keys if k not in state]
        if missing:
            raise ValueError(f"state is missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        out = self(frames, *(state[k] for k in self.keys))
        return out[0], dict(zip(self.keys, out[1:]))


def load_executorch(path: str | os.PathLike, threads: int | None = 1, kind: str | None = None) -> ExecutorchProgram:
    """Load a ``.pte`` written by :func:`to_executorch` (checks: :func:`read_metadata`; ``kind``: refuse another
    kind, e.g. ``"movinet_stream_step"``); ``threads``: ExecuTorch's thread pool size (``None``: leave it)."""
    return ExecutorchProgram(path, threads=threads, kind=kind)


class ExecutorchModule(nn.Module):
    """A ``.pte`` classifier or stream step as a module for evaluation code that calls ``model(x)`` on batches:
    a batch is cut into the program's batch (a short last part is padded and its extra outputs dropped); a stream
    step takes whole clips ``[N, 3, T, H, W]``, stepped through with the state carried from zeros, and returns
    the logits after the last frame (what the whole-clip model gives)."""

    def __init__(self, program: ExecutorchProgram):
        super().__init__()
        self.program = program
        self.batch = program._in[0][0][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, out = self.batch, []
        for i in range(0, x.shape[0], b):
            part = x[i:i + b].float().contiguous()
            n = part.shape[0]
            if n < b:
                part = torch.cat([part, part.new_zeros((b - n, *part.shape[1:]))])
            if self.program.keys:
                t = self.program._in[0][0][2]
                if part.shape[2] % t:
                    raise ValueError(f"clips of {part.shape[2]} frames do not split into steps of {t}")
                state = None
                for j in range(0, part.shape[2], t):
                    logits, state = self.program.step(part[:, :, j:j + t], state)
            else:
                logits = self.program(part)[0]
            out.append(logits[:n])
        return torch.cat(out)


def describe(meta: dict) -> str:
    """One line: what a ``.pte`` holds."""
    ins = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}" for i in meta["inputs"][:2])
    more = f" + {len(meta['inputs']) - 2} state tensors" if len(meta["inputs"]) > 2 else ""
    return (f"{meta['model']} ({meta['kind']}, {meta['quantize']}, XNNPACK; {meta['bytes'] / 1e6:.2f} MB): "
            f"{ins}{more}")


__all__ = ["ExecutorchModule", "ExecutorchProgram", "FORMAT", "describe", "load_executorch", "lower",
           "metadata_path", "missing_kernels", "quantize_int8", "read_metadata", "set_threads", "to_executorch"]

