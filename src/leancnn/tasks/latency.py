"""``leancnn latency run``: one configured latency measurement into a run directory (issue 11, parts 1, 2 and 5).

A run measures every model of a :class:`~leancnn.latency.config.LatencyConfig` -- a registered name, a training run or
checkpoint (rebuilt with :func:`leancnn.tasks.protocol.load_run`) or an ONNX file, resolved by
:func:`resolve_models` -- in every condition of its grid, one condition at a time, with the measurement library
:mod:`leancnn.latency.measure` (contention, warm-up, randomised blocks: see there). Every check that needs no
measurement comes first (:func:`check_run`, :func:`check_output_path`).

Files of a run directory (all appended or replaced atomically, so an interrupted run leaves a consistent state):
``run.json`` (config, planned conditions, machine, versions), ``models.json`` (what each model is),
``samples.csv`` (``condition,model,block,seq,latency_s,t_s``), ``conditions.jsonl`` (one line per finished
condition, written *after* its samples; rows of a condition without that line are dropped on resume). A run is
resumed with ``resume=True``: finished conditions are kept, the rest measured, and so is a finished condition whose
rows in samples.csv are missing or fewer than its conditions.jsonl line records (the report refuses such a run).
``leancnn latency run --resume -o DIR`` resumes with the config recorded in run.json (:func:`resume_config`).
At the end the report is written (:func:`leancnn.latency.report.write_report`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..config import dump_config, from_dict, to_dict
from ..errors import LeancnnError
from ..export import is_registration, registration_refusal
from ..io import atomic_path, ensure_writable_dir
from ..latency.config import LatencyConfig, LatencyModelConfig
from ..latency.measure import (
    SAMPLE_COLUMNS,
    Condition,
    ModelSpec,
    csv_rows,
    device_name,
    plan_conditions,
    run_condition,
    versions,
)
from ..latency.quota import quota_support
from ..loadspec import LoadSpec

RUN_FILES = ("run.json", "models.json", "samples.csv", "conditions.jsonl")


# ------------------------------------------------------------------------------------------------ models


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
    if m.pte is not None:
        from ..export.pte import read_metadata

        path = Path(m.pte).expanduser()
        try:
            meta = read_metadata(path)
        except LeancnnError as e:
            raise LeancnnError(f"{where}: {e}") from None
        shape = tuple(meta["inputs"][0]["shape"])
        kind = {"movinet_stream_step": "stream_step"}.get(meta["kind"], meta["kind"])
        if m.input is not None and tuple(m.input) != shape[1:]:
            raise LeancnnError(f"{where}: input {m.input} differs from the program's {list(shape[1:])}")
        return ModelSpec(m.label or path.stem, "pte", f"{meta['model']} ({meta['quantize']})", shape[1:], kind,
                         onnx_path=path.resolve(), onnx_batch=shape[0])
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
            with torch.random.fork_rng():  # the same weights in every process: the exports cached by weights are
                torch.manual_seed(0)  # reused by the next run, and the int8 calibration sees the same network
                module = create_model(m.name, num_classes=m.num_classes)
        except LeancnnError as e:
            raise LeancnnError(f"{where}: {e}") from None
        source, name, default = "registry", m.name, tuple(entry.input_size)
    else:
        from .protocol import get_task, load_run, task_of
        from .runs import resolve_checkpoint

        try:
            path = resolve_checkpoint(m.checkpoint, f"{where} checkpoint")
            state = load_checkpoint(path, torch.device("cpu"))
        except LeancnnError as e:
            raise LeancnnError(str(e)) from None
        spec = get_task(task_of(state))
        default = spec.input_shape(spec.config_from_state(state), state)
        if default is None:  # the task says what one sample of its network is, or that it has none
            kind = spec.kind_of(state)
            raise LeancnnError(f"{where}: '{path}' is a {kind} run, whose task gives no input shape to time "
                               f"(`leancnn latency run` measures classifier, video and registration runs); a {kind} "
                               f"run is for {spec.commands}")
        run = load_run(state)
        module, default = run.model, tuple(default)
        name = getattr(module, "model_name", None) or spec.name
        source = "checkpoint"
    module.eval()
    if is_registration(module):
        kind = "registration"
    else:
        kind = "stream_step" if _is_stream(module) and m.mode == "stream_step" else "classifier"
    if m.input is not None:
        shape = tuple(m.input)
    elif kind == "stream_step":
        shape = (default[0], 1, *default[-2:])
    else:
        shape = default
    # MoViNets take clips (C, T, H, W), registration networks volumes (C, X, Y, Z), two of them
    want = 4 if hasattr(module, "stream") or kind == "registration" else 3
    if len(shape) != want:
        raise LeancnnError(f"{where}: input {list(shape)} must have {want} dimensions (batch excluded) for "
                           f"{name}")
    if kind == "registration":
        refusal = registration_refusal(module, (1, *shape))
        if refusal:
            raise LeancnnError(f"{where}: input {list(shape)}: {refusal}")
    try:
        macs = count_macs(module, shape, num_inputs=2 if kind == "registration" else 1)
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


# ------------------------------------------------------------------------------------------------ run files


def _write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


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
                           "onnxruntime, .pte files executorch)")
    return specs, conditions, unavailable


def _may_run(spec: ModelSpec, backend: str) -> bool:
    return {"onnx": backend == "onnxruntime", "pte": backend == "executorch"}.get(spec.source, True)


def _same_run(saved: dict, cfg: LatencyConfig) -> list[str]:
    from ..config import config_changes

    old = saved.get("config") or {}
    new = to_dict(cfg)
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in config_changes(old, new, ignore=("name", "output_dir"))]


def check_output_path(out: str | Path, cfg: LatencyConfig, config_file: str | Path | None = None) -> Path:
    """``-o`` of ``latency run`` (``leancnn.outputs``): a folder, not the config file nor a model's checkpoint
    (or its run) or ONNX file, nor inside or holding one."""
    from ..outputs import check_output, check_output_dir
    from .runs import checkpoint_inputs

    inputs = [("config file", config_file)]
    for i, m in enumerate(cfg.models):
        inputs += checkpoint_inputs(m.checkpoint, f"models[{i}]") if m.checkpoint else []
        inputs += [(f"models[{i}] ONNX file", Path(m.onnx).expanduser())] if m.onnx else []
        inputs += [(f"models[{i}] ExecuTorch file", Path(m.pte).expanduser())] if m.pte else []
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
        from ..latency.report import REPORT_FILES

        for f in (*RUN_FILES, *REPORT_FILES):  # what a latency run writes; other files stay
            (out / f).unlink(missing_ok=True)
    ensure_writable_dir(out)
    done = finished_conditions(out) if resume else {}
    short = []
    if resume:  # a finished condition whose rows in samples.csv are missing or short is measured again
        from ..latency.report import sample_shortfalls

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
        from ..latency.report import describe_shortfalls

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
            _append(out / "samples.csv", csv_rows(cond.id, rows))
        _append(out / "conditions.jsonl", json.dumps(rec, allow_nan=False, default=str) + "\n")
        kinds.add(rec.get("load_kind_used"))
        log(_condition_line(k, len(conditions), cond, rec, rows))
    summary = {"run_dir": str(out), "conditions": len(conditions), "measured": len(todo),
               "seconds": time.perf_counter() - t_run}
    if report:
        from ..latency.report import write_report

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
