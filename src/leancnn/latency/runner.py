"""The measurement runner of ``leancnn latency run`` (issue 11, parts 1, 2 and 5).

A run measures every model of a :class:`~leancnn.config.LatencyConfig` in every condition of its grid
(contention level or CPU quota x threads x backend x batch size), one condition at a time:

1. the condition's contention starts (:class:`~leancnn.latency.load.CpuLoad` or
   :class:`~leancnn.latency.load.CpuQuota`), then ``settle_seconds`` pass;
2. every model is warmed up (``warmup`` untimed inferences; ``torch.compile`` compiles here);
3. the models are timed in **randomised blocks**: each block runs every model ``block`` times in a row, in a new
   random order, so slow drift (frequency, a neighbour's load) hits every model alike; one row per inference
   (``time.perf_counter_ns`` around the call);
4. the load's measured CPU share and run-queue wait, system snapshots before and after (load average, CPU
   frequency), and whether the load survived or the time budget cut the condition short are recorded.

Files of a run directory (all appended or replaced atomically, so an interrupted run leaves a consistent state):
``run.json`` (config, planned conditions, machine, versions), ``models.json`` (what each model is),
``samples.csv`` (``condition,model,block,seq,latency_s,t_s``), ``conditions.jsonl`` (one line per finished
condition, written *after* its samples; rows of a condition without that line are dropped on resume). A run is
resumed with ``resume=True``: finished conditions are kept, the rest measured, and so is a finished condition whose
rows in samples.csv are missing or fewer than its conditions.jsonl line records (the report refuses such a run).
``leancnn latency run --resume -o DIR`` resumes with the config recorded in run.json (:func:`resume_config`).

Every load process is stopped on normal exit, on an exception, on Ctrl-C and on SIGTERM (``latency/load.py``);
a load that dies mid-run ends its condition early and is recorded (``load_died``), not ignored.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..config import LatencyConfig, LatencyLoadConfig, LatencyModelConfig, dump_config, from_dict, to_dict
from ..errors import LeancnnError
from ..io import atomic_path, cache_dir, ensure_writable_dir
from ..train.checkpoint import state_digest
from .load import CpuLoad, CpuQuota, LoadDiedError, LoadSpec, quota_support, stress_ng_path, system_snapshot

SAMPLE_COLUMNS = ("condition", "model", "block", "seq", "latency_s", "t_s")
RUN_FILES = ("run.json", "models.json", "samples.csv", "conditions.jsonl")


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
    source: str  # registry | checkpoint | onnx
    name: str
    input: tuple[int, ...]
    kind: str  # classifier | stream_step
    module: nn.Module | None = None
    onnx_path: Path | None = None
    onnx_batch: int | None = None  # the ONNX file's fixed batch (None: dynamic)
    params: int | None = None
    macs: int | None = None

    def record(self) -> dict:
        return {"source": self.source, "name": self.name, "input": list(self.input), "kind": self.kind,
                "params": self.params, "macs": self.macs,
                "onnx": None if self.onnx_path is None else str(self.onnx_path)}


def _is_stream(module: nn.Module) -> bool:
    from ..models.movinet import FusedStreamMovinet, MoViNet

    return isinstance(module, FusedStreamMovinet) or (isinstance(module, MoViNet) and module.stream)


def _onnx_input(path: Path, where: str) -> tuple[tuple[int, ...], int | None]:
    """The input shape (batch excluded) and fixed batch (None: dynamic) of an ONNX classifier, checked by opening
    it with onnxruntime now: an unreadable file is an error before anything is measured."""
    import onnxruntime as ort

    if not path.is_file():
        raise LeancnnError(f"{where}: no ONNX file at '{path}'" + (" (a directory)" if path.is_dir() else ""))
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise LeancnnError(f"{where}: '{path}' is not a readable ONNX model: {str(e).splitlines()[0][:200]}") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise LeancnnError(f"{where}: '{path}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                           "only single-input classifiers are timed from ONNX files (a MoViNet stream step: give "
                           "the model or its run instead)")
    shape = list(inputs[0].shape)
    rest = shape[1:]
    if not rest or not all(isinstance(d, int) and d > 0 for d in rest):
        raise LeancnnError(f"{where}: '{path}' has the input shape {shape}; every dimension but the batch must be "
                           "fixed")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return tuple(rest), batch


def resolve_model(m: LatencyModelConfig, index: int, device: torch.device) -> ModelSpec:
    """Build (or open) model ``index`` of the config; every error names ``models[index]``."""
    from ..models import create_model, get_model_entry
    from ..nn import count_macs, count_params
    from ..train.checkpoint import load_checkpoint

    where = f"config key 'models[{index}]'"
    if m.onnx is not None:
        path = Path(m.onnx).expanduser()
        shape, batch = _onnx_input(path, where)
        if m.input is not None and tuple(m.input) != shape:
            raise LeancnnError(f"{where}: input {m.input} differs from the ONNX file's {list(shape)}")
        return ModelSpec(m.label or path.stem, "onnx", path.name, shape, "classifier", onnx_path=path.resolve(),
                         onnx_batch=batch)
    if m.name is not None:
        try:
            entry = get_model_entry(m.name)
            module = create_model(m.name, num_classes=m.num_classes)
        except LeancnnError as e:
            raise LeancnnError(f"{where}: {e}") from None
        source, name, default = "registry", m.name, tuple(entry.input_size)
    else:
        from ..tasks.runs import KIND_COMMANDS, resolve_checkpoint, run_kind

        try:
            path = resolve_checkpoint(m.checkpoint, f"{where} checkpoint")
            state = load_checkpoint(path, torch.device("cpu"))
        except LeancnnError as e:
            raise LeancnnError(str(e)) from None
        kind = run_kind(state.get("config"))
        if kind == "registration":
            raise LeancnnError(f"{where}: '{path}' is a registration run, but `leancnn latency run` measures "
                               f"classifier and video runs; a registration run is for {KIND_COMMANDS[kind]}")
        if kind == "video":
            from ..tasks.video import load_video_model

            module, vcfg, _ = load_video_model(path, torch.device("cpu"), "leancnn latency run")
            default = (3, vcfg.data.frames, vcfg.data.height, vcfg.data.width)
            name = vcfg.model.name
        else:
            from ..tasks.classify import build_model, config_from_checkpoint

            ccfg = config_from_checkpoint(state)
            module = build_model(ccfg)
            from ..train.checkpoint import load_model_state

            load_model_state(module, state, f"checkpoint '{path}'")
            default = tuple(get_model_entry(ccfg.model.name).input_size)
            name = ccfg.model.name
        source = "checkpoint"
    module.eval()
    kind = "stream_step" if _is_stream(module) and m.mode == "stream_step" else "classifier"
    if m.input is not None:
        shape = tuple(m.input)
    elif kind == "stream_step":
        shape = (default[0], 1, *default[-2:])
    else:
        shape = default
    want = 4 if hasattr(module, "stream") else 3  # MoViNets take clips (C, T, H, W)
    if len(shape) != want:
        raise LeancnnError(f"{where}: input {list(shape)} must have {want} dimensions (batch excluded) for "
                           f"{name}")
    try:
        macs = count_macs(module, shape)
    except Exception:  # noqa: BLE001 - a count that fails must not stop a measurement
        macs = None
    label = m.label or (name if m.name is not None else f"{name}:{Path(m.checkpoint).name}")
    return ModelSpec(label, source, name, shape, kind, module=module, params=count_params(module), macs=macs)


def resolve_models(cfg: LatencyConfig, device: torch.device | None = None) -> list[ModelSpec]:
    device = device or torch.device("cpu")
    specs = [resolve_model(m, i, device) for i, m in enumerate(cfg.models)]
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise LeancnnError(f"config key 'models': two models are called {dup}; give them distinct labels "
                           "(models[i].label)")
    return specs


# ------------------------------------------------------------------------------------------------ callables


class Skip(Exception):
    """This model cannot run in this condition (the reason is recorded, the rest of the condition goes on)."""


def cached_export(spec: ModelSpec, batch: int) -> Path:
    """The model's ONNX export at this batch, made once and cached under ``$LEANCNN_CACHE/latency/onnx`` (keyed
    by the weights, the input shape, the batch and torch's version)."""
    from ..export import export_model, export_stream_step

    key = hashlib.sha256(json.dumps([spec.name, spec.kind, list(spec.input), batch, state_digest(spec.module.state_dict()),
                                     torch.__version__]).encode()).hexdigest()[:16]
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
        name = sess.get_inputs()[0].name
        feed = {name: x}
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


# ------------------------------------------------------------------------------------------------ run files


def versions() -> dict:
    import numpy

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = None
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


def _write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _csv_rows(cond_id: str, rows: list[tuple]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for model, block, seq, lat, t in rows:
        w.writerow((cond_id, model, block, seq, f"{lat:.9g}", f"{t:.6f}"))
    return buf.getvalue()


def finished_conditions(run_dir: Path) -> dict[str, dict]:
    """The records of ``conditions.jsonl`` by id (a torn last line, from a kill mid-write, is ignored)."""
    out = {}
    path = run_dir / "conditions.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[rec["id"]] = rec
    return out


def _drop_unfinished_samples(run_dir: Path, keep: set[str]) -> int:
    """Rewrite samples.csv without the rows of conditions that did not finish; returns the rows dropped."""
    path = run_dir / "samples.csv"
    if not path.is_file():
        path.write_text(",".join(SAMPLE_COLUMNS) + "\n")
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [ln for ln in lines[1:] if ln.endswith("\n") and ln.split(",", 1)[0] in keep]
    dropped = len(lines) - 1 - len(kept)
    if dropped:
        with atomic_path(path) as tmp:
            tmp.write_text(",".join(SAMPLE_COLUMNS) + "\n" + "".join(kept))
    return dropped


def _sample_counts(run_dir: Path) -> dict[tuple[str, str], int]:
    """Complete rows of samples.csv per ``(condition, model)``."""
    path = run_dir / "samples.csv"
    counts: dict[tuple[str, str], int] = {}
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True)[1:] if ln.endswith("\n")]
        for row in csv.reader(lines):
            if len(row) == len(SAMPLE_COLUMNS):
                counts[row[0], row[1]] = counts.get((row[0], row[1]), 0) + 1
    return counts


def _keep_conditions(run_dir: Path, keep: set[str]) -> None:
    """Rewrite conditions.jsonl with the records of ``keep`` only (and without a torn line, onto which the next
    record would otherwise be appended)."""
    path = run_dir / "conditions.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            rec = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and rec.get("id") in keep:
            kept.append(line)
    if kept != lines:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")


def resume_config(out: str | Path, overrides: list[str] | None = None) -> LatencyConfig:
    """The config that finishes run ``out`` (``latency run --resume`` without ``-c``): the one the run recorded in
    run.json, with ``overrides`` applied (a change that alters the measurement is then refused by :func:`run`)."""
    from ..config import apply_overrides

    path = Path(out) / "run.json"
    if not path.is_file():
        raise LeancnnError(f"--resume: '{out}' holds no latency run (run.json)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LeancnnError(f"--resume: cannot read the run's config from {path}: {e}") from None
    return from_dict(LatencyConfig, apply_overrides(dict(saved), list(overrides or [])))


def resume_hint(out: str | Path) -> str:
    """The command that finishes an interrupted run (its config is read from run.json)."""
    import shlex

    return f"leancnn latency run --resume -o {shlex.quote(str(out))}"


# ------------------------------------------------------------------------------------------------ the run


def quick_config(cfg: LatencyConfig) -> LatencyConfig:
    """``--quick``: the first 3 models, idle and the first loaded level, the first threads / backend / batch,
    60 samples per model in blocks of 5: a smoke run in well under 2 minutes on 2 cores."""
    raw = to_dict(cfg)
    raw["models"] = raw["models"][:3]
    g = raw["grid"]
    loads = g["loads"]
    idle = [ld for ld in loads if ld["workers"] == 0][:1] or [{"workers": 0}]
    busy = [ld for ld in loads if ld["workers"] > 0][:1]
    g.update(loads=idle + busy, quotas=[], threads=g["threads"][:1], backends=g["backends"][:1],
             batch_sizes=g["batch_sizes"][:1])
    p = raw["protocol"]
    p.update(samples=min(p["samples"], 60), warmup=min(p["warmup"], 5), block=min(p["block"], 5),
             settle_seconds=min(p["settle_seconds"], 0.5), condition_seconds=min(p["condition_seconds"], 30.0))
    return from_dict(LatencyConfig, raw)


def check_run(cfg: LatencyConfig) -> tuple[list[ModelSpec], list[Condition], dict[str, str]]:
    """Every check that needs no measurement: models resolved (unknown names, unreadable files), conditions
    planned, and the conditions that cannot run here with the reason (a quota without a writable cgroup)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise LeancnnError("config key 'device' is cuda, but no CUDA device is available here")
    for i, ld in enumerate(cfg.grid.loads):  # the machine now (affinity, stress-ng), not when the config was read
        try:
            LoadSpec(**dataclasses.asdict(ld)).validate(f"grid.loads[{i}]")
        except LeancnnError as e:
            raise LeancnnError(str(e).replace("config key 'load.", f"config key 'grid.loads[{i}].")) from None
    if "onnxruntime" in cfg.grid.backends:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise LeancnnError("grid.backends lists onnxruntime, which is not installed (pip install onnxruntime)")
    specs = resolve_models(cfg)
    conditions = plan_conditions(cfg)
    unavailable = {}
    if cfg.grid.quotas:
        ok, why = quota_support()
        if not ok:
            for c in conditions:
                if c.quota is not None:
                    unavailable[c.id] = f"no CPU quota possible here: {why}"
    runnable = [s.label for s in specs if any(_may_run(s, b) for b in cfg.grid.backends)]
    if not runnable:
        raise LeancnnError("no model of the config can run on any backend of grid.backends (ONNX files need "
                           "onnxruntime)")
    return specs, conditions, unavailable


def _may_run(spec: ModelSpec, backend: str) -> bool:
    return spec.source != "onnx" or backend == "onnxruntime"


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


def _same_run(saved: dict, cfg: LatencyConfig) -> list[str]:
    from ..config import config_changes

    old = saved.get("config") or {}
    new = to_dict(cfg)
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in config_changes(old, new, ignore=("name", "output_dir"))]


def check_output_path(out: str | Path, cfg: LatencyConfig, config_file: str | Path | None = None) -> Path:
    """``-o`` of ``latency run`` (``leancnn.outputs``): a folder, not the config file nor a model's checkpoint
    (or its run) or ONNX file, nor inside or holding one."""
    from ..outputs import check_output, check_output_dir
    from ..tasks.runs import checkpoint_inputs

    inputs = [("config file", config_file)]
    for i, m in enumerate(cfg.models):
        inputs += checkpoint_inputs(m.checkpoint, f"models[{i}]") if m.checkpoint else []
        inputs += [(f"models[{i}] ONNX file", Path(m.onnx).expanduser())] if m.onnx else []
    return check_output_dir(check_output(out, inputs, "-o"))


def run(cfg: LatencyConfig, out: str | Path, resume: bool = False, force: bool = False,
        log: Callable[[str], None] = print, progress: bool | None = None, report: bool = True,
        command: str | None = None, config_file: str | Path | None = None) -> dict:
    """Measure ``cfg`` into run directory ``out`` (see the module docstring); returns a summary dict. With
    ``report`` the Markdown report is written at the end (:func:`leancnn.latency.report.write_report`). ``out``
    is never an input (``config_file``, the models' files); ``force`` deletes the run and report files only,
    once every check has passed."""
    out = check_output_path(out, cfg, config_file)
    specs, conditions, unavailable = check_run(cfg)
    held = [f for f in RUN_FILES if (out / f).exists()]
    if resume:
        if not (out / "run.json").is_file():
            raise LeancnnError(f"--resume: '{out}' holds no latency run (run.json)")
        saved = json.loads((out / "run.json").read_text(encoding="utf-8"))
        changes = _same_run(saved, cfg)
        if changes:
            raise LeancnnError(f"--resume: the config differs from the run's in '{out}': " + "; ".join(changes[:5]))
    elif held and not force:
        raise LeancnnError(f"'{out}' already holds a latency run ({', '.join(held)}); add --resume to finish it, "
                           "--force to replace it, or choose another --out")
    elif held:
        from .report import REPORT_FILES

        for f in (*RUN_FILES, *REPORT_FILES):  # what a latency run writes; other files stay
            (out / f).unlink(missing_ok=True)
    ensure_writable_dir(out)
    done = finished_conditions(out) if resume else {}
    short = []
    if resume:  # a finished condition whose rows in samples.csv are missing or short is measured again
        from .report import sample_shortfalls

        short = sample_shortfalls(list(done.values()), _sample_counts(out))
        for cid in {c for c, *_ in short}:
            del done[cid]
        _keep_conditions(out, set(done))
    dropped = _drop_unfinished_samples(out, set(done))
    if not resume:
        _write_json(out / "run.json", {
            "config": to_dict(cfg), "config_yaml": dump_config(cfg), "machine": device_name("cpu")[4:],
            "device": device_name(cfg.device), "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or " ".join(sys.argv),
            "conditions": [c.record() for c in conditions]})
        _write_json(out / "models.json", {s.label: s.record() for s in specs})
        (out / "conditions.jsonl").touch()
    todo = [c for c in conditions if c.id not in done]
    if resume:
        from .report import describe_shortfalls

        redo = sorted({c for c, *_ in short})
        log(f"resuming '{out}': {len(done)} of {len(conditions)} conditions done"
            + (f" ({dropped} samples of {'unfinished or short conditions' if redo else 'an unfinished condition'} "
               "dropped)" if dropped else "")
            + (f"; measuring again {', '.join(redo)}, whose samples.csv rows were short ({describe_shortfalls(short)})"
               if redo else ""))
    if progress is None:
        progress = sys.stderr.isatty()
    cache: dict = {}
    kinds = set()
    t_run = time.perf_counter()
    for k, cond in enumerate(conditions, 1):
        if cond.id in done:
            continue
        if cond.id in unavailable:
            rec = cond.record()
            rec.update(status="skipped", skip_reason=unavailable[cond.id], samples_per_model={}, skipped_models={},
                       seconds=0.0, truncated=False, load_died=None, load_kind_used="none")
            _append(out / "conditions.jsonl", json.dumps(rec, allow_nan=False) + "\n")
            log(f"[{k}/{len(conditions)}] {cond.label}: skipped ({unavailable[cond.id]})")
            continue
        rng = np.random.default_rng([cfg.protocol.seed, k])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=math.ceil(cfg.protocol.samples / cfg.protocol.block), desc=f"[{k}/{len(conditions)}]",
                       unit="block", leave=False)

        def on_block(i, n, bar=bar):
            if bar is not None:
                bar.update(1)

        try:
            rec, rows = run_condition(cond, specs, cfg, cache, rng, on_block)
        except KeyboardInterrupt:
            log(f"interrupted in condition {k} of {len(conditions)} ({cond.label}); {len(finished_conditions(out))} "
                f"finished condition(s) are kept in '{out}'; finish with: {resume_hint(out)}")
            raise
        finally:
            if bar is not None:
                bar.close()
        if rows:
            _append(out / "samples.csv", _csv_rows(cond.id, rows))
        _append(out / "conditions.jsonl", json.dumps(rec, allow_nan=False, default=str) + "\n")
        kinds.add(rec.get("load_kind_used"))
        log(_condition_line(k, len(conditions), cond, rec, rows))
    summary = {"run_dir": str(out), "conditions": len(conditions), "measured": len(todo),
               "seconds": time.perf_counter() - t_run}
    if report:
        from .report import write_report

        a = cfg.analysis
        summary["report"] = str(write_report(out, quantiles=tuple(a.quantiles), alpha=a.alpha, margin=a.margin,
                                             recommend_quantile=a.recommend_quantile, rule=a.recommend_rule))
    return summary


def _condition_line(k: int, n: int, cond: Condition, rec: dict, rows: list) -> str:
    if rec["status"] == "skipped":
        return f"[{k}/{n}] {cond.label}: skipped ({rec['skip_reason']})"
    med = {}
    for label, _, _, lat, _ in rows:
        med.setdefault(label, []).append(lat)
    parts = ", ".join(f"{m} {1e3 * float(np.median(v)):.2f}" for m, v in med.items())
    extra = []
    if rec.get("load_cpu_share") is not None and cond.load is not None and cond.load.workers:
        extra.append(f"load used {rec['load_cpu_share']:.2f} CPU ({rec['load_kind_used']})")
    if rec.get("truncated"):
        extra.append(f"time budget: {rec['blocks']} of {rec['planned_blocks']} blocks")
    if rec.get("load_died"):
        extra.append("LOAD DIED mid-run: " + rec["load_died"]["message"].splitlines()[0])
    if rec.get("skipped_models"):
        extra.append("skipped: " + "; ".join(f"{m} ({r})" for m, r in rec["skipped_models"].items()))
    return (f"[{k}/{n}] {cond.label}: median ms {parts}  ({rec['seconds']:.1f} s"
            + ("; " + "; ".join(extra) if extra else "") + ")")


def load_config_file(path: str | None, overrides: list[str]) -> LatencyConfig:
    from ..config import load_config

    return load_config(path, overrides, cls=LatencyConfig)


def default_out(cfg: LatencyConfig) -> Path:
    return Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"

