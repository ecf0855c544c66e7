"""``leancnn export``: any exportable run (or a registered model, random weights) to ONNX or to an ExecuTorch
``.pte`` (XNNPACK; fp32, or int8 calibrated on the run's training data), checked against PyTorch and reported.

What each run exports (the shape its data has, :meth:`TaskSpec.export_shape`, unless ``--input-shape``):

* a classifier or a pruned classifier (``leancnn train`` / ``leancnn prune``): ``input`` ``[B, 3, 32, 32]`` →
  ``logits``;
* a video run: a stream model's step (``frames`` + ``state.*`` → ``logits`` + ``new_state.*``, ``--frames`` new
  frames per step), a clip model's whole clip;
* a registration run: ``moving``, ``fixed`` → ``ddf`` (where the format has kernels for its operators; otherwise
  one line naming the operator);
* a retrieval run: its embedding network; an RL run has no standalone network input and is refused.

The check (always): the exported program and PyTorch on the same random inputs (a stream step: 16 frames in steps
of ``--frames``, the state carried on both sides); the largest difference relative to the largest PyTorch output.
With a run whose task has a test metric (classifiers, video), ``--evaluate`` (on by default for int8) also gives
the test accuracy of the PyTorch network and of the exported program (``--limit`` samples per set, a fixed draw).

Beside the file, ``<out>.json``: for a ``.pte`` its metadata (:mod:`leancnn.export.pte`, which the loader needs),
for an ``.onnx`` the same description; both with the check under ``"check"``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import LeancnnError
from ..io import atomic_write_text
from ..models import create_model, get_model_entry
from ..outputs import check_output, check_output_file
from .protocol import load_run
from .runs import check_path_arg, checkpoint_inputs, resolve_checkpoint

FORMATS = ("onnx", "executorch")
SUFFIX = {"onnx": ".onnx", "executorch": ".pte"}
CHECK_FRAMES = 16
FP32_TOLERANCE = 1e-4  # relative: |exported - PyTorch| / max |PyTorch|


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3x32x32"`` → ``(3, 32, 32)`` (one sample, no batch)."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        raise LeancnnError(f"--input-shape must be sizes joined by x (one sample, e.g. 3x32x32), "
                           f"got '{text}'") from None
    if not shape or any(v < 1 for v in shape):
        raise LeancnnError(f"--input-shape must be positive sizes joined by x, got '{text}'")
    return shape


def _metadata_sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def check_export_output(out: str | Path, fmt: str, source: str, force: bool) -> Path:
    """``out`` names a file of the format's suffix; it is not the source run, its checkpoint, nor inside or holding
    them; an existing file (or its ``.json``) is replaced only with ``force``, and a ``.json`` that leancnn did not
    write is never replaced."""
    if fmt not in FORMATS:
        raise LeancnnError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    out = check_path_arg(out, "-o")
    inputs = checkpoint_inputs(source, "exported run") if Path(str(source)).exists() else []
    side = _metadata_sidecar(out)
    check_output(out, inputs, "-o")
    check_output(side, inputs, "-o (its .json)")
    if out.suffix != SUFFIX[fmt]:
        raise LeancnnError(f"-o must name a {SUFFIX[fmt]} file for --format {fmt}, got '{out}'")
    check_output_file(out, force, "-o")
    check_output_file(side, force, "-o (its .json)")
    if side.is_file():
        try:
            ours = str(json.loads(side.read_text(encoding="utf-8")).get("format", "")).startswith("leancnn-")
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise LeancnnError(f"'{side}' exists and was not written by leancnn export; it is not replaced")
    return out


def load_source(source: str, device: torch.device = torch.device("cpu")):
    """``(model, sample shape, run or None)`` of a run (checkpoint or run directory) or a registered model name."""
    p = Path(str(source))
    if p.exists():
        run = load_run(resolve_checkpoint(p), device, command="leancnn export", need="an exportable run")
        shape = run.task.export_shape(run.cfg, run.state)
        if shape is None:
            raise LeancnnError(f"'{source}' is a {run.task.kind_of(run.state)} run, which has no network with a "
                               f"fixed input to export (a {run.task.kind_of(run.state)} run is for "
                               f"{run.task.commands})")
        return run.task.export_network(run.cfg, run.state, run.model), tuple(shape), run
    try:
        entry = get_model_entry(str(source))
    except LeancnnError:
        raise LeancnnError(f"'{source}' is neither a checkpoint/run directory nor a registered model") from None
    model = create_model(entry.name).to(device).eval()
    shape = tuple(entry.input_size)
    from ..export import is_stream

    if is_stream(model):
        shape = (shape[0], 1, *shape[2:])
    return model, shape, None


def _random_inputs(graph_args: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(a.shape, generator=g) if a.is_floating_point() else a.clone() for a in graph_args]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


class _Runner:
    """One call of an exported file, whatever its format: ``run(*tensors) -> list of tensors``."""

    def __init__(self, path: Path, fmt: str):
        if fmt == "executorch":
            from ..export.pte import load_executorch

            self.program = load_executorch(path, threads=None)
            self.run = self.program
        else:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]

            def run(*xs):
                return [torch.from_numpy(np.asarray(o)) for o in sess.run(None, {n: x.numpy() for n, x in
                                                                                 zip(names, xs)})]

            self.run = run


def parity(model: nn.Module, path: Path, fmt: str, shape: tuple[int, ...], fuse: bool = True,
           example: torch.Tensor | None = None) -> dict:
    """The exported file against PyTorch on the same inputs: the largest relative difference of the outputs (a
    stream step: of the logits at every step over :data:`CHECK_FRAMES` frames, the state carried on both sides,
    and of the final state). The inputs are seeded random ones, or ``example`` (a batch of the run's data; an int8
    program is calibrated for that, not for noise)."""
    from ..export import model_graph

    graph = model_graph(model, shape, fuse=fuse)
    runner = _Runner(path, fmt)
    worst, steps = 0.0, 1
    with torch.no_grad():
        if graph.state_keys:
            t = shape[2]
            steps = max(1, CHECK_FRAMES // t)
            g = torch.Generator().manual_seed(0)
            clip = torch.randn((shape[0], shape[1], steps * t, *shape[3:]), generator=g)
            if example is not None and example.shape[0] >= shape[0] and example.shape[2] >= t:
                steps = example.shape[2] // t
                clip = example[:shape[0], :, :steps * t].float()
            ref_state = list(graph.args[1:])
            got_state = [s.clone() for s in ref_state]
            for j in range(steps):
                x = clip[:, :, j * t:(j + 1) * t]
                ref = graph.module(x, *ref_state)
                got = runner.run(x, *got_state)
                worst = max(worst, _rel(got[0], ref[0]))
                ref_state, got_state = list(ref[1:]), list(got[1:])
            state = max((_rel(a, b) for a, b in zip(got_state, ref_state) if b.is_floating_point()), default=0.0)
            return {"max_rel_diff": worst, "state_max_rel_diff": state, "frames": steps * t, "steps": steps}
        xs = _random_inputs(graph.args, 0)
        if example is not None and example.shape[0] >= shape[0] and tuple(example.shape[1:]) == tuple(shape[1:]):
            xs = [example[:shape[0]].float()] * len(xs)
        ref = graph.module(*xs)
        got = runner.run(*xs)[0]
        return {"max_rel_diff": _rel(got, ref), "max_abs_diff": float((got - ref).abs().max()), "steps": steps}


def export_command(source: str, out: str | Path, fmt: str = "executorch", quantize: str | None = None,
                   calibrate: int = 8, input_shape: str | None = None, batch: int = 1, frames: int = 1,
                   evaluate: bool | None = None, limit: int = 0, force: bool = False) -> dict:
    """Export ``source`` (a run or a registered model name) to ``out`` and check it (module docstring). Returns
    the report (also in ``<out>.json``)."""
    if quantize not in (None, "int8"):
        raise LeancnnError(f"--quantize must be int8 (fp32 is the default), got '{quantize}'")
    if quantize and fmt != "executorch":
        raise LeancnnError("--quantize int8 is for --format executorch (the XNNPACK quantizer); ONNX exports are fp32")
    for name, value, low in (("--calibrate", calibrate, 1), ("--batch", batch, 1), ("--frames", frames, 1),
                             ("--limit", limit, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LeancnnError(f"{name} must be a whole number >= {low}, got {value!r}")
    if evaluate and fmt != "executorch":
        raise LeancnnError("--evaluate is for --format executorch (an ONNX export is checked against PyTorch)")
    out = check_export_output(out, fmt, source, force)
    shape_arg = parse_shape(input_shape)
    model, shape, run = load_source(source)
    from ..export import is_stream

    stream = is_stream(model)
    if shape_arg is not None:
        shape = shape_arg
    if stream:
        shape = (shape[0], frames, *shape[2:]) if len(shape) == 4 else shape
    full = (batch, *shape)
    evaluate = bool(quantize) if evaluate is None else evaluate
    calibration = None
    if quantize:
        if run is None:
            raise LeancnnError("--quantize int8 calibrates on a run's training data: give a run (checkpoint or run "
                               "directory), not a registered model name")
        calibration = run.task.calibration_inputs(run.cfg, run.state, calibrate)
        if calibration is None:
            raise LeancnnError(f"a {run.task.kind_of(run.state)} run has no training inputs to calibrate int8 on")
    what = {"source": str(source), "run_task": run.task.name if run else None}
    t0 = time.perf_counter()
    try:
        if fmt == "executorch":
            from ..export.pte import describe, read_metadata, to_executorch

            to_executorch(model, out, full, quantize=quantize, calibration=calibration, metadata=what)
            meta = read_metadata(out)
            summary = describe(meta)
        else:
            from ..export import export_model, export_stream_step

            if stream:
                export_stream_step(model, out, full[3], full[4], batch=batch, frames=full[2])
            else:
                export_model(model, out, full)
            meta = {"format": "leancnn-onnx/1", "model": getattr(model, "model_name", type(model).__name__),
                    "input_shape": list(full), "bytes": out.stat().st_size, **what}
            summary = f"{meta['model']} (ONNX, fp32; {meta['bytes'] / 1e6:.2f} MB): input {'x'.join(map(str, full))}"
    except ValueError as e:
        raise LeancnnError(str(e)) from None
    seconds = time.perf_counter() - t0
    example = calibration[0] if calibration else None  # int8: checked on the run's data, as it is calibrated
    check = {"export_seconds": round(seconds, 2), "parity": {**parity(model, out, fmt, full, example=example),
                                                            "inputs": "training data" if example is not None
                                                            else "random"}}
    if quantize is None and check["parity"]["max_rel_diff"] > FP32_TOLERANCE:
        check["warning"] = (f"fp32 outputs differ from PyTorch by {check['parity']['max_rel_diff']:.2e} relative "
                            f"(> {FP32_TOLERANCE:g})")
    if evaluate:
        if run is None:
            raise LeancnnError("--evaluate needs a run (its test split), not a registered model name")
        before = run.task.evaluate_export(run.cfg, run.state, model, limit)
        if before is None:
            check["accuracy"] = None
        else:
            exported = _as_module(out, fmt)
            after = run.task.evaluate_export(run.cfg, run.state, exported, limit)
            check["accuracy"] = {"pytorch": before, "exported": after,
                                 "points_lost": {k: round(100 * (before[k] - after[k]), 2) for k in before}}
    meta["check"] = check
    atomic_write_text(_metadata_sidecar(out), json.dumps(meta, indent=2) + "\n")
    return {"path": str(out), "format": fmt, "summary": summary, "quantize": quantize or "fp32", **check,
            "outside_delegate": meta.get("outside_delegate")}


def _as_module(path: Path, fmt: str) -> nn.Module:
    from ..export.pte import ExecutorchModule, load_executorch

    return ExecutorchModule(load_executorch(path, threads=None))


def report_rows(r: dict) -> list[list]:
    """The printed table of :func:`export_command`'s report."""
    p = r["parity"]
    rows = [["file", r["path"]], ["holds", r["summary"]],
            ["vs PyTorch (max rel. diff)", f"{p['max_rel_diff']:.2e} on {p['inputs']} inputs"
             + (f" over {p['frames']} frames, state {p['state_max_rel_diff']:.2e}" if "frames" in p else "")]]
    if r.get("outside_delegate"):
        rows.append(["outside XNNPACK", ", ".join(r["outside_delegate"])])
    acc = r.get("accuracy")
    if acc:
        for k in acc["pytorch"]:
            rows.append([f"accuracy {k}", f"{100 * acc['pytorch'][k]:.2f}% PyTorch -> {100 * acc['exported'][k]:.2f}% "
                                          f"exported ({acc['points_lost'][k]:+.2f} points lost)"])
    if r.get("warning"):
        rows.append(["warning", r["warning"]])
    return rows


__all__ = ["FORMATS", "check_export_output", "export_command", "load_source", "parity", "parse_shape", "report_rows"]
