"""Measuring models under CPU contention (issue 11, parts 1 and 2): the condition grid, one timed callable per model
and backend, the timing harness and the measurement of one condition -- the library that ``leancnn latency run``
(:mod:`leancnn.tasks.latency`: models resolved, run directory, resume) runs condition after condition.

A :class:`Condition` is one cell of a :class:`~leancnn.latency.config.LatencyConfig`'s grid (contention level or CPU quota
x threads x backend x batch size; :func:`plan_conditions`). :func:`run_condition` measures every model
(:class:`ModelSpec`) of one condition:

1. the condition's contention starts (:class:`~leancnn.latency.loads.CpuLoad` or
   :class:`~leancnn.latency.quota.CpuQuota`), then ``settle_seconds`` pass;
2. every model is warmed up (``warmup`` untimed inferences; ``torch.compile`` compiles here);
3. the models are timed in **randomised blocks** (:func:`measure`): each block runs every model ``block`` times in a
   row, in a new random order, so slow drift (frequency, a neighbour's load) hits every model alike; one row per
   inference (``time.perf_counter_ns`` around the call, :func:`timed`);
4. the load's measured CPU share and run-queue wait, system snapshots before and after (load average, CPU
   frequency), and whether the load survived or the time budget cut the condition short are recorded.

:func:`make_callable` turns a model into one inference on PyTorch eager, ``torch.compile``, onnxruntime or
ExecuTorch with the XNNPACK delegate, fp32 or int8 (a model's ONNX export and ExecuTorch programs are made once and
cached: :func:`cached_export`, :func:`cached_pte`); a pair that cannot run raises :class:`Skip`.
:func:`csv_rows` formats sample rows as lines of ``samples.csv`` (:data:`SAMPLE_COLUMNS`); :func:`versions` and
:func:`device_name` say what a measurement ran on.

Every load process is stopped on normal exit, on an exception, on Ctrl-C and on SIGTERM (``latency/cleanup.py``);
a load that dies mid-run ends its condition early and is recorded (``load_died``), not ignored.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gc
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..io import cache_dir
from ..loadspec import LoadSpec, stress_ng_path
from ..train.checkpoint import state_digest
from .config import LatencyConfig, LatencyLoadConfig
from .loads import CpuLoad, LoadDiedError
from .quota import CpuQuota
from .system import system_snapshot

SAMPLE_COLUMNS = ("condition", "model", "block", "seq", "latency_s", "t_s")


# ------------------------------------------------------------------------------------------------ conditions


@dataclass
class Condition:
    """One cell of the grid. ``load`` is None for a quota condition and vice versa."""

    id: str
    load: LatencyLoadConfig | None
    quota: float | None
    threads: int
    backend: str
    batch: int
    device: str = "cpu"

    @property
    def contention(self) -> str:
        if self.quota is not None:
            return f"quota {self.quota:g} CPU"
        ld = self.load
        if ld.workers == 0:
            return "idle"
        pin = "" if ld.pin is None else f" pinned {ld.pin if isinstance(ld.pin, str) else ','.join(map(str, ld.pin))}"
        return f"load {ld.workers}x{ld.percent}%{pin}"

    @property
    def label(self) -> str:
        return f"{self.contention}, {self.threads} thr, {self.backend}, b{self.batch}"

    def record(self) -> dict:
        return {"id": self.id, "label": self.label, "device": self.device,
                "load": None if self.load is None else dataclasses.asdict(self.load), "quota": self.quota,
                "threads": self.threads, "backend": self.backend, "batch": self.batch}


def plan_conditions(cfg: LatencyConfig) -> list[Condition]:
    """Batch x backend x threads x contention, contention innermost: the levels of one (backend, threads,
    batch) are measured back to back, so a comparison across load levels spans minutes, not the whole run."""
    out = []
    g = cfg.grid
    for batch in g.batch_sizes:
        for backend in g.backends:
            for threads in g.threads:
                levels = [(ld, None) for ld in g.loads] + [(None, q) for q in g.quotas]
                for ld, q in levels:
                    out.append(Condition(f"c{len(out) + 1:02d}", ld, q, threads, backend, batch, cfg.device))
    return out


# ------------------------------------------------------------------------------------------------ models


@dataclass
class ModelSpec:
    """A model of the run, resolved: ``module`` (None for an ONNX file), ``input`` without the batch."""

    label: str
    source: str  # registry | checkpoint | onnx | pte
    name: str
    input: tuple[int, ...]
    kind: str  # classifier | stream_step | registration (two inputs of ``input``: moving, fixed)
    module: nn.Module | None = None
    onnx_path: Path | None = None  # an ONNX or .pte file (source onnx / pte)
    onnx_batch: int | None = None  # the file's fixed batch (None: dynamic)
    params: int | None = None
    macs: int | None = None

    def record(self) -> dict:
        return {"source": self.source, "name": self.name, "input": list(self.input), "kind": self.kind,
                "params": self.params, "macs": self.macs,
                "onnx": None if self.onnx_path is None else str(self.onnx_path)}


# ------------------------------------------------------------------------------------------------ callables


class Skip(Exception):
    """This model cannot run in this condition (the reason is recorded, the rest of the condition goes on)."""


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of leancnn's own source: an export cached by an older version of the code (another graph form of
    the same weights, a fixed quantizer) is made again, not reused."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_export(spec: ModelSpec, batch: int) -> Path:
    """The model's ONNX export at this batch, made once and cached under ``$LEANCNN_CACHE/latency/onnx`` (keyed
    by the weights, the input shape, the batch, torch's version and leancnn's code)."""
    from ..export import export_model, export_stream_step

    key = hashlib.sha256(json.dumps([spec.name, spec.kind, list(spec.input), batch, state_digest(spec.module.state_dict()),
                                     torch.__version__, code_digest()]).encode()).hexdigest()[:16]
    path = cache_dir() / "latency" / "onnx" / f"{spec.name}-b{batch}-{key}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        module = spec.module
        if spec.kind == "stream_step":
            c, t, h, w = spec.input
            export_stream_step(module, path, h, w, batch=batch, frames=t)
        else:
            export_model(module, path, (batch, *spec.input))
    return path


EXECUTORCH_BACKENDS = {"executorch": None, "executorch_int8": "int8"}
CALIBRATION_BATCHES = 8


def cached_pte(spec: ModelSpec, batch: int, quantize: str | None) -> Path:
    """The model's ExecuTorch program (XNNPACK; ``quantize="int8"``: calibrated on :data:`CALIBRATION_BATCHES`
    seeded random batches, enough for the timing, not for accuracy) at this batch, made once and cached under
    ``$LEANCNN_CACHE/latency/pte`` (keyed as :func:`cached_export`, plus the quantization and ExecuTorch's version)."""
    from importlib.metadata import version

    from ..export.pte import to_executorch

    key = hashlib.sha256(json.dumps([spec.name, spec.kind, list(spec.input), batch, quantize,
                                     state_digest(spec.module.state_dict()), torch.__version__,
                                     version("executorch"), code_digest()]).encode()).hexdigest()[:16]
    path = cache_dir() / "latency" / "pte" / f"{spec.name}-b{batch}-{quantize or 'fp32'}-{key}.pte"
    if not path.is_file():
        shape = (batch, *spec.input)
        calibration = None
        if quantize:
            g = torch.Generator().manual_seed(0)
            if spec.kind == "stream_step":  # whole clips of 8 steps, stepped through with the state carried
                c, t, h, w = spec.input
                calibration = [torch.randn((batch, c, 8 * t, h, w), generator=g) for _ in range(2)]
            else:
                calibration = [torch.randn(shape, generator=g) for _ in range(CALIBRATION_BATCHES)]
        to_executorch(spec.module, path, shape, quantize=quantize, calibration=calibration)
    return path


def _executorch_callable(spec: ModelSpec, cond: Condition, cache: dict) -> Callable[[], Any]:
    from ..export.pte import load_executorch, set_threads

    quantize, batch = EXECUTORCH_BACKENDS[cond.backend], cond.batch
    if spec.source == "pte" and spec.onnx_batch != batch:
        raise Skip(f"the .pte file's batch is fixed at {spec.onnx_batch}")
    from ..export.pte import pool_generation

    try:
        path = spec.onnx_path if spec.source == "pte" else cache.setdefault(("pte", spec.label, batch, quantize),
                                                                            cached_pte(spec, batch, quantize))
    except Exception as e:  # noqa: BLE001 - an export failure skips the model, with the reason
        raise Skip(f"ExecuTorch export failed: {str(e).splitlines()[0][:200]}") from None
    set_threads(cond.threads)  # ExecuTorch's thread pool (XNNPACK), process-wide: set before loading, since a
    key = ("et", spec.label, batch, quantize, pool_generation())  # program loaded before a change keeps the old pool
    if key not in cache:
        try:
            cache[key] = load_executorch(path, threads=None)
        except Exception as e:  # noqa: BLE001 - a program the runtime cannot load skips the model, with the reason
            raise Skip(f"ExecuTorch could not load it: {str(e).splitlines()[0][:200]}") from None
    program = cache[key]
    x = torch.randn((batch, *spec.input), generator=torch.Generator().manual_seed(0))
    if spec.kind == "stream_step":
        box = [program.init_state()]

        def run_stream():
            _, box[0] = program.step(x, box[0])

        return run_stream
    xs = [x] * len(program.inputs)  # a registration network: moving and fixed, the same volume
    run = program.run

    def run_pte():
        run(*xs)

    return run_pte


def _ort_options(threads: int, spinning: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def make_callable(spec: ModelSpec, cond: Condition, cfg: LatencyConfig, cache: dict) -> Callable[[], Any]:
    """A zero-argument function that runs one inference of ``spec`` in ``cond`` (a stream step carries its state
    from call to call). Raises :class:`Skip` where the pair cannot run. ``cache`` keeps compiled models and
    onnxruntime sessions between conditions."""
    backend, batch, threads = cond.backend, cond.batch, cond.threads
    device = torch.device(cfg.device)
    if spec.source == "onnx" and backend != "onnxruntime":
        raise Skip("an ONNX file runs only on the onnxruntime backend")
    if spec.source == "pte" and backend != "executorch":
        raise Skip("an ExecuTorch .pte runs as it is (fp32 or int8) on the executorch backend only")
    if backend in EXECUTORCH_BACKENDS:
        if device.type != "cpu":
            raise Skip("ExecuTorch runs on the CPU here (the XNNPACK delegate)")
        return _executorch_callable(spec, cond, cache)
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise Skip("onnxruntime runs on the CPU here (the CPU build of onnxruntime is installed)")
        import onnxruntime as ort

        if spec.source == "onnx":
            if spec.onnx_batch is not None and spec.onnx_batch != batch:
                raise Skip(f"the ONNX file's batch is fixed at {spec.onnx_batch}")
            path = spec.onnx_path
        else:
            try:
                path = cache.setdefault(("onnx", spec.label, batch), cached_export(spec, batch))
            except Exception as e:  # noqa: BLE001 - an export failure skips the model, with the reason
                raise Skip(f"ONNX export failed: {str(e).splitlines()[0][:200]}") from None
        key = ("ort", spec.label, batch, threads)
        if key not in cache:
            if spec.kind == "stream_step":
                from ..export import OnnxStream

                cache[key] = OnnxStream(path, threads=threads, config=None if cfg.protocol.ort_spinning else
                                        {"session.intra_op.allow_spinning": "0"})
            else:
                cache[key] = ort.InferenceSession(str(path), _ort_options(threads, cfg.protocol.ort_spinning),
                                                  providers=["CPUExecutionProvider"])
        sess = cache[key]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *spec.input)).astype(np.float32)
        if spec.kind == "stream_step":
            box = [sess.init_state()]

            def run_stream():
                _, box[0] = sess.step(x, box[0])

            return run_stream
        feed = {i.name: x for i in sess.get_inputs()}  # a registration network: moving and fixed, the same volume
        run = sess.run

        def run_ort():
            run(None, feed)

        return run_ort
    # eager / compile
    module = spec.module.to(device)
    x = torch.randn((batch, *spec.input), generator=torch.Generator().manual_seed(0)).to(device)
    if x.dim() == 4 and cfg.protocol.memory_format == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if backend == "compile":
        key = ("compile", spec.label, batch, device.type)
        if key not in cache:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            cache[key] = torch.compile(module)
        module = cache[key]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if spec.kind == "stream_step":
        c, t, h, w = spec.input
        base = spec.module
        box = [base.init_state(batch, h, w)]
        box[0] = {k: v.to(device) for k, v in box[0].items()}

        def run_step():
            _, box[0] = module(x, box[0])
            if sync:
                sync()

        return run_step

    if spec.kind == "registration":
        def run_pair():
            module(x, x)
            if sync:
                sync()

        return run_pair

    def run_eager():
        module(x)
        if sync:
            sync()

    return run_eager


# ------------------------------------------------------------------------------------------------ timing


def timed(fn: Callable[[], Any], n: int, clock: Callable[[], int] = time.perf_counter_ns) -> tuple[list, list]:
    """The harness's hot loop: ``n`` calls of ``fn``, each between two clock reads. Returns (starts, durations)
    in ns. Nothing else happens between the reads (overhead: docs/benchmarks.md)."""
    starts = [0] * n
    durations = [0] * n
    for i in range(n):
        t0 = clock()
        fn()
        t1 = clock()
        starts[i] = t0
        durations[i] = t1 - t0
    return starts, durations


def measure(fns: dict[str, Callable[[], Any]], samples: int, block: int, rng: np.random.Generator,
            budget_s: float | None = None, check: Callable[[], None] | None = None,
            on_block: Callable[[int, int], None] | None = None) -> dict:
    """Randomised interleaved blocks over the models of ``fns`` (already warmed up).

    Returns ``rows`` (model, block, seq, latency_s, t_s), ``truncated`` (the budget ended it early), ``blocks``
    and ``error`` (a :class:`LoadDiedError` raised by ``check`` between blocks: measurement stops there)."""
    labels = list(fns)
    n_blocks = math.ceil(samples / block)
    min_blocks = math.ceil(2 / block)  # every model needs >= 2 samples
    rows: list[tuple] = []
    seq = dict.fromkeys(labels, 0)
    t_start = time.perf_counter_ns()
    truncated, error, done = False, None, 0
    enabled = gc.isenabled()
    gc.disable()  # no collection pauses inside a timed block
    try:
        for b in range(n_blocks):
            n = min(block, samples - b * block)
            for i in rng.permutation(len(labels)):
                label = labels[i]
                starts, durs = timed(fns[label], n)
                s0 = seq[label]
                rows.extend((label, b, s0 + j, durs[j] * 1e-9, (starts[j] - t_start) * 1e-9) for j in range(n))
                seq[label] = s0 + n
            done = b + 1
            if enabled:
                gc.collect(0)  # the young generation only, between blocks: cheap (a full collection costs ~0.1 s)
            if on_block:
                on_block(done, n_blocks)
            if check is not None:
                try:
                    check()
                except LoadDiedError as e:
                    error = e
                    break
            if budget_s is not None and done >= min_blocks and done < n_blocks and \
                    (time.perf_counter_ns() - t_start) * 1e-9 > budget_s:
                truncated = True
                break
    finally:
        if enabled:
            gc.enable()
    return {"rows": rows, "truncated": truncated, "blocks": done, "planned_blocks": n_blocks, "error": error}


# ------------------------------------------------------------------------------------------------ one condition


def _contention(cond: Condition, max_seconds: float):
    if cond.quota is not None:
        return CpuQuota(cond.quota)
    return CpuLoad(LoadSpec(**dataclasses.asdict(cond.load)), max_seconds=max_seconds)


def _load_usage(ctx) -> dict:
    if isinstance(ctx, CpuQuota):
        st = ctx.stats()
        return {"load_kind_used": ctx.kind, "load_cpu_share": None, "load_wait_share": None, "quota_stats": st}
    s = ctx.sample()
    return {"load_kind_used": ctx.kind_used, "load_cpu_share": s["cpu_share"], "load_wait_share": s["wait_share"],
            "load_command": [" ".join(c) for c in ctx.command] or None}


def run_condition(cond: Condition, specs: list[ModelSpec], cfg: LatencyConfig, cache: dict,
                  rng: np.random.Generator, progress: Callable[[int, int], None] | None = None) -> tuple[dict, list]:
    """Measure one condition (contention started and stopped here). Returns its record and its sample rows."""
    p = cfg.protocol
    torch.set_num_threads(cond.threads)
    fns, skipped = {}, {}
    for s in specs:
        try:
            fns[s.label] = make_callable(s, cond, cfg, cache)
        except Skip as e:
            skipped[s.label] = str(e)
    rec = cond.record()
    rec.update(status="done", skip_reason=None, skipped_models=skipped, load_died=None, truncated=False,
               torch_threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
               ort_spinning=p.ort_spinning if cond.backend == "onnxruntime" else None)
    if len(fns) == 0:
        rec.update(status="skipped", skip_reason="no model can run in this condition", seconds=0.0,
                   samples_per_model={}, blocks=0)
        return rec, []
    start = time.perf_counter()
    budget = p.condition_seconds
    ctx = _contention(cond, max_seconds=max(600.0, 4 * budget + 300))
    with ctx:
        if p.settle_seconds:
            time.sleep(p.settle_seconds)
        rec["snapshot_before"] = system_snapshot()
        check = ctx.check if isinstance(ctx, CpuLoad) else None
        with torch.inference_mode():
            t0 = time.perf_counter()
            for label, fn in list(fns.items()):
                try:
                    for _ in range(max(p.warmup, 2 if cond.backend == "compile" else 0)):
                        fn()
                except Exception as e:  # noqa: BLE001 - a model that fails here is skipped with the reason
                    skipped[label] = f"failed in warm-up: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    del fns[label]
            rec["warmup_seconds"] = time.perf_counter() - t0
            gc.collect()  # once per condition, before timing: measure() then only collects the young generation
            if isinstance(ctx, CpuLoad):
                ctx.sample()  # the load's share is measured over the timed part only
            if fns:
                result = measure(fns, p.samples, p.block, rng, budget_s=budget,
                                 check=check, on_block=progress)
            else:
                result = {"rows": [], "truncated": False, "blocks": 0, "planned_blocks": 0, "error": None}
        rec.update(_load_usage(ctx))
        rec["snapshot_after"] = system_snapshot()
        if result["error"] is not None:
            rec["load_died"] = {"message": str(result["error"]), "status": result["error"].status}
    rec.update(truncated=result["truncated"], blocks=result["blocks"], planned_blocks=result["planned_blocks"],
               seconds=time.perf_counter() - start)
    counts = {}
    for row in result["rows"]:
        counts[row[0]] = counts.get(row[0], 0) + 1
    rec["samples_per_model"] = counts
    if not fns or min(counts.values(), default=0) < 2:
        rec.update(status="skipped", skip_reason=("the load died before two blocks were measured"
                                                  if rec["load_died"] else "no model ran"))
        return rec, []
    return rec, result["rows"]


# ------------------------------------------------------------------------------------------------ records


def versions() -> dict:
    import numpy

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = None
    try:
        from importlib.metadata import version

        out["executorch"] = version("executorch")
    except Exception:  # noqa: BLE001 - not installed: recorded as None
        out["executorch"] = None
    exe = stress_ng_path()
    if exe:
        try:
            out["stress-ng"] = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                              timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out["stress-ng"] = None
    else:
        out["stress-ng"] = None
    from .. import __version__

    out["leancnn"] = __version__
    out["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                             "KMP_BLOCKTIME") if k in os.environ}
    return out


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    from ..report import machine_description

    return f"cpu:{machine_description()}"


def csv_rows(cond_id: str, rows: list[tuple]) -> str:
    """The lines of ``samples.csv`` (:data:`SAMPLE_COLUMNS`, no header) for the rows of condition ``cond_id``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for model, block, seq, lat, t in rows:
        w.writerow((cond_id, model, block, seq, f"{lat:.9g}", f"{t:.6f}"))
    return buf.getvalue()
