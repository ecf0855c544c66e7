"""``leancnn search movinet | prune | report``: architecture and pruning searches scored by *measured* latency.

Both searches run on the engine of :mod:`leancnn.search` (Optuna; a study in ``<out>/study.db`` by default, any
database URL to share it between workers and machines) and score every trial by two objectives: accuracy
(maximised) and a latency statistic measured with the latency runner (:func:`leancnn.latency.measure.run_condition`:
warm-up, randomised blocks, real co-running CPU hogs), minimised.

**The latency statistic** (``latency.*``, :class:`SearchLatencyConfig`): each trial is measured at every load level
of ``latency.loads`` (0 = idle, n = n co-running CPU hogs) and the objective is ``latency.statistic`` (p50 or p99)
at ``latency.condition``: ``idle`` (load 0), ``load`` (the highest load level) or ``minimax`` (the worst over all
levels, as ``leancnn latency`` recommends). Every level's p50 and p99 are stored with the trial, so the front under
another statistic can be read from the same study (``search report --condition ...``). With more than one
``latency.threads`` the thread count becomes a searched variable: the search chooses how to run the model as well
as the model. A trial whose latency is over ``latency.max_ms`` is rejected before any training (stored as pruned).

**``search movinet``** samples the MoViNet stream search space (:func:`leancnn.search.movinet_space.movinet_space`;
the published A0 is evaluated first, on the same protocol, as the reference), measures the fused stream step (one
frame, batch 1; the form ``StreamingMovinet(fuse=True)`` runs), then trains the architecture from scratch with a
short schedule on the moving-digits actions (``<out>/trials/<n>``, an ordinary video run) and scores it by its best
validation accuracy (the test split is only reported). Short schedules rather than weight sharing: with tens of
trials on a CPU a weight-sharing supernet would cost more to train than the trials it replaces, and its
inherited-weight accuracies rank architectures less reliably than a short training of each (the MoViNet paper's
TuNAS search needed a TPU pod).

**``search prune``** (latency-aware pruning) searches per-layer pruning ratios (one variable per depth bucket of
prunable groups, ``space.buckets``; 0 = one per group), ``round_to`` (channel counts kept multiples of it) and
optionally the weights of a criteria blend, on a trained digit classifier (the source run is only read). A trial
prunes a copy, recalibrates BatchNorm and measures validation accuracy (as ``leancnn prune``'s search does) and the
pruned network's latency. The chosen plan (best accuracy within ``target_speedup`` of the unpruned network measured
in the same run, else the knee of the front) is written as ``pruned.pt`` (``leancnn evaluate`` and fine-tuning read
it), optionally fine-tuned.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn as nn

from ..config import SEED_MAX, derive, dump_config, load_config, rule, to_dict
from ..errors import LeancnnError
from ..io import atomic_write_json, atomic_write_text
from ..nn.counting import count_macs, count_params
from ..outputs import check_output, check_output_dir, record_outputs, remove_outputs
from ..search.engine import Objective, Reject, SearchSettings, run_search, sqlite_url
from ..search.report import REPORT_FILES, write_report
from ..search.space import SearchSpace, categorical, real

# ------------------------------------------------------------------------------------------------ schema


@dataclass
class SearchEngineConfig:
    """The study: how many trials, how long, which sampler, where it is stored."""

    trials: int = rule(24, ge=1)  # finished trials the study should hold (all workers together)
    timeout_minutes: float = rule(0.0, ge=0.0)  # this worker starts no trial after this long (0: no limit)
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    population: int = rule(8, ge=2)  # NSGA-II's population per generation (random draws until the first is full)
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    storage: str = ""  # a database URL (sqlite:///..., postgresql://...); "": sqlite:///<out>/study.db
    study: str = ""  # the study's name in the storage ("": the config's name)
    heartbeat_seconds: int = rule(10, ge=1)  # a worker silent for 3x this long is taken as killed


@dataclass
class SearchLatencyConfig:
    """How each trial's latency is measured and which statistic is the objective (module docstring)."""

    backend: Literal["eager", "onnxruntime"] = "eager"
    threads: list[int] = rule(factory=lambda: [1], ge=1, min_len=1, unique=True)  # more than one: searched
    batch: int = rule(1, ge=1)  # inputs per inference (1: one image / one frame; more: a serving batch)
    loads: list[int] = rule(factory=lambda: [0, 1], ge=0, min_len=1, unique=True)  # co-running CPU hogs measured
    statistic: Literal["p50", "p99"] = "p99"
    condition: Literal["idle", "load", "minimax"] = "minimax"
    samples: int = rule(100, ge=10)  # timed inferences per load level
    warmup: int = rule(5, ge=0)
    block: int = rule(10, ge=1)
    settle_seconds: float = rule(0.3, ge=0.0)
    hog: Literal["auto", "stress-ng", "python"] = "auto"
    max_ms: float = rule(0.0, ge=0.0)  # reject a trial over this before training (0: no ceiling)
    budget_ms: float = rule(0.0, ge=0.0)  # the chosen trade-off: best accuracy within this (0: the knee)

    def _check(self) -> None:
        from ..errors import ConfigError

        if self.condition == "idle" and 0 not in self.loads:
            raise ConfigError("config key 'latency.condition' is idle but 'latency.loads' has no 0 (idle) level")
        if self.condition == "load" and max(self.loads) == 0:
            raise ConfigError("config key 'latency.condition' is load but 'latency.loads' has no level above 0")


@dataclass
class MovinetSearchData:
    """The moving-digits actions as each trial trains on them (fewer clips and frames than a full run)."""

    frames: int = rule(16, ge=4, le=512)
    frame_step: int = rule(2, ge=1)  # 8 of the 16 frames: half the cost, the actions still read
    height: int = rule(32, ge=16, le=512)
    width: int = rule(32, ge=16, le=512)
    train: int = rule(400, ge=10)
    val: int = rule(200, ge=10)
    test: int = rule(300, ge=10)
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    batch_size: int = rule(16, ge=1)


@dataclass
class MovinetSearchTrain:
    epochs: int = rule(4, ge=1)
    lr: float = rule(3e-3, gt=0.0)
    weight_decay: float = rule(0.05, ge=0.0)
    threads: int = rule(1, ge=1)  # torch threads of each trial's training
    seed: int = rule(0, ge=0, lt=SEED_MAX)


@dataclass
class MovinetSearchConfig:
    """``leancnn search movinet``: MoViNet stream architectures, accuracy vs measured stream-step latency."""

    name: str = rule("search-movinet", name=True)
    space: Literal["small", "full"] = "small"
    references: list[str] = rule(factory=lambda: ["a0"], unique=True)  # published models evaluated first
    search: SearchEngineConfig = field(default_factory=SearchEngineConfig)
    latency: SearchLatencyConfig = field(default_factory=SearchLatencyConfig)
    data: MovinetSearchData = field(default_factory=MovinetSearchData)
    train: MovinetSearchTrain = field(default_factory=MovinetSearchTrain)


@dataclass
class PruneSpaceConfig:
    buckets: int = rule(4, ge=0)  # pruning-ratio variables: contiguous depth buckets of groups (0: one per group)
    max_ratio: float = rule(0.8, gt=0.0, lt=1.0)
    ratio_step: float = rule(0.05, gt=0.0, lt=1.0)
    round_to: list[int] = rule(factory=lambda: [1, 4, 8], ge=1, min_len=1, unique=True)  # 1: no rounding
    criteria: list[str] = rule(factory=lambda: ["l1"], min_len=1, unique=True)
    blend: bool = False  # with several criteria: search their blend weights too


@dataclass
class LatencyPruneConfig:
    """``leancnn search prune``: per-layer pruning ratios (and round_to) against measured latency."""

    name: str = rule("search-prune", name=True)
    search: SearchEngineConfig = field(default_factory=SearchEngineConfig)
    latency: SearchLatencyConfig = field(default_factory=SearchLatencyConfig)
    space: PruneSpaceConfig = field(default_factory=PruneSpaceConfig)
    target_speedup: float = rule(0.0, ge=0.0)  # the chosen plan: best accuracy at >= this speed-up (0: the knee)
    val_images: int = rule(1000, ge=10)
    bn_batches: int = rule(10, ge=1)
    calib_batches: int = rule(4, ge=1)
    finetune_epochs: int = rule(0, ge=0)
    finetune_lr: float = rule(0.01, gt=0.0)
    seed: int = rule(0, ge=0, lt=SEED_MAX)


# ------------------------------------------------------------------------------------------------ latency objective


def condition_name(load: int) -> str:
    return "idle" if load == 0 else f"load{load}"


def objective_key(lat: SearchLatencyConfig) -> str:
    return f"{lat.condition}_{lat.statistic}_ms"


def measure_latency(module: nn.Module, kind: str, input_shape: tuple[int, ...], lat: SearchLatencyConfig,
                    threads: int, batch: int = 1, seed: int = 0) -> dict[str, float]:
    """One model measured at every load level of ``lat.loads`` with the latency runner: ``{<level>_p50_ms,
    <level>_p99_ms, ..., <objective key>, latency_ms}`` (``latency_ms`` = the objective statistic). The caller's
    torch thread count is restored."""
    return measure_many({"m": module}, kind, input_shape, lat, threads, batch, seed)["m"]


def measure_many(modules: dict[str, nn.Module], kind: str, input_shape: tuple[int, ...], lat: SearchLatencyConfig,
                 threads: int, batch: int = 1, seed: int = 0) -> dict[str, dict[str, float]]:
    """Several models measured together (the same randomised interleaved blocks per load level, so their ratios
    are fair); per model the dict of :func:`measure_latency`."""
    from ..latency.config import LatencyConfig, LatencyLoadConfig, LatencyProtocolConfig
    from ..latency.measure import Condition, ModelSpec, run_condition

    proto = LatencyProtocolConfig(warmup=lat.warmup, samples=lat.samples, block=lat.block,
                                  settle_seconds=lat.settle_seconds, condition_seconds=max(30.0, lat.samples * 0.5),
                                  seed=seed)
    cfg = LatencyConfig(protocol=proto)
    specs = [ModelSpec(label=k, source="registry", name=k, input=tuple(input_shape), kind=kind, module=m)
             for k, m in modules.items()]
    out: dict[str, dict[str, float]] = {k: {} for k in modules}
    saved = torch.get_num_threads()
    rng = np.random.default_rng(seed)
    cache: dict = {}
    try:
        for i, n in enumerate(lat.loads):
            cond = Condition(f"c{i}", LatencyLoadConfig(workers=n, kind=lat.hog), None, threads, lat.backend, batch)
            rec, rows = run_condition(cond, specs, cfg, cache, rng)
            if rec["status"] != "done" and not rows:
                raise LeancnnError(f"latency at {condition_name(n)}: {rec.get('skip_reason') or rec['skipped_models']}")
            by: dict[str, list[float]] = {}
            for label, _, _, sec, _ in rows:
                by.setdefault(label, []).append(sec * 1e3)
            for k in modules:
                if k not in by:
                    raise LeancnnError(f"latency of {k} at {condition_name(n)}: {rec['skipped_models'].get(k)}")
                x = np.asarray(by[k])
                out[k][f"{condition_name(n)}_p50_ms"] = float(np.median(x))
                out[k][f"{condition_name(n)}_p99_ms"] = float(np.quantile(x, 0.99))
    finally:
        torch.set_num_threads(saved)
    for k, d in out.items():
        d.update(objective_values(d, lat))
    return out


def objective_values(d: dict, lat: SearchLatencyConfig, condition: str | None = None,
                     statistic: str | None = None) -> dict[str, float]:
    """The objective statistic from one trial's per-level values (``condition`` / ``statistic`` override the
    config's: the same trial read under another statistic)."""
    cond, stat = condition or lat.condition, statistic or lat.statistic
    levels = [condition_name(n) for n in lat.loads]
    if cond == "idle":
        v = d[f"idle_{stat}_ms"]
    elif cond == "load":
        v = d[f"{condition_name(max(lat.loads))}_{stat}_ms"]
    else:
        v = max(d[f"{lv}_{stat}_ms"] for lv in levels)
    return {f"{cond}_{stat}_ms": v, "latency_ms": v}


# ------------------------------------------------------------------------------------------------ output folder

STUDY_DB = "study.db"


def prepare_out(out: str | Path, inputs: list, resume: bool, join: bool, force: bool, storage: str) -> Path:
    """``-o`` checked against the inputs; a new search needs an empty folder (``force``: the files an earlier
    search wrote there are removed, nothing else); ``resume``/``join`` continue the one it holds."""
    out = check_output_dir(check_output(out, inputs, "-o"))
    if resume or join:
        if not storage and not (out / STUDY_DB).is_file():
            raise LeancnnError(f"{'--resume' if resume else '--join'}: '{out}' holds no {STUDY_DB}; give the -o of "
                               "the search to continue (or search.storage=<database URL>)")
        return out
    if out.exists() and any(out.iterdir()):
        if not force:
            raise LeancnnError(f"'{out}' already holds files; --resume continues the search it holds, --force "
                               "replaces the files an earlier search wrote there (other files are kept)")
        remove_outputs(out, (STUDY_DB, *REPORT_FILES))
        trials = out / "trials"  # the trials' training runs: only the run files leancnn wrote in each
        if trials.is_dir():
            from .runs import clear_run_files

            for run in trials.iterdir():
                if run.is_dir() and run.name.isdigit():
                    clear_run_files(run)
                    with contextlib.suppress(OSError):  # a file leancnn did not write keeps its folder
                        run.rmdir()
            with contextlib.suppress(OSError):
                trials.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    return out


def engine_settings(cfg, out: Path, resume: bool, join: bool, attrs: dict, enqueue=()) -> SearchSettings:
    s = cfg.search
    storage = s.storage or sqlite_url(out / STUDY_DB)
    return SearchSettings(study_name=s.study or cfg.name, storage=storage, trials=s.trials,
                          timeout=s.timeout_minutes * 60 or None, sampler=s.sampler, seed=s.seed,
                          population=s.population, resume=resume,
                          join=join, heartbeat_s=s.heartbeat_seconds, grace_s=3 * s.heartbeat_seconds,
                          enqueue=enqueue, attrs=attrs, attr_defaults=_attrs(type(cfg)()))


def _attrs(cfg) -> dict:
    """The settings a resumed or joined study must share (runtime keys left out)."""
    d = to_dict(cfg)
    d.pop("search", None)
    d["search"] = {k: v for k, v in to_dict(cfg.search).items() if k in ("sampler", "seed", "population")}
    return d


def _ms(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _mega(v) -> str:
    return "–" if v is None else f"{v / 1e6:.2f}M"


# ------------------------------------------------------------------------------------------------ movinet


def movinet_objective(cfg: MovinetSearchConfig, out: Path):
    """``evaluate(point, info)`` for :func:`leancnn.search.engine.run_search`: latency first (reject over the
    ceiling), then a short training; metrics include params, MACs per frame, every latency level."""
    from ..models import create_model
    from ..search.movinet_space import decode
    from .lifecycle import train_task
    from .protocol import get_task

    video = get_task("video")
    d = cfg.data
    frame = (3, 1, d.height, d.width)

    def evaluate(point: dict, info) -> dict:
        point = dict(point)
        threads = point.pop("threads", cfg.latency.threads[0])
        arch = decode(point).to_string()
        model = create_model("movinet_arch_stream", arch=arch, num_classes=10)
        metrics: dict[str, Any] = {"arch": arch, "threads": threads, "params": count_params(model),
                                   "macs_per_frame": count_macs(model, frame)}
        fused = model.eval().fuse_for_inference()
        metrics.update(measure_latency(fused, "stream_step", frame, cfg.latency, threads, cfg.latency.batch,
                                       seed=info.number))
        if cfg.latency.max_ms and metrics["latency_ms"] > cfg.latency.max_ms:
            raise Reject(f"latency {metrics['latency_ms']:.2f} ms > max_ms {cfg.latency.max_ms:g}", metrics)
        vcfg = derive(video.config_cls(), {
            "name": f"{cfg.name}-trial{info.number}", "model.name": "movinet_arch_stream",
            "model.kwargs": {"arch": arch}, "model.bn_momentum": 0.1,
            "data.frames": d.frames, "data.frame_step": d.frame_step, "data.height": d.height, "data.width": d.width,
            "data.train": d.train, "data.val": d.val, "data.test": d.test, "data.seed": d.seed,
            "data.batch_size": d.batch_size, "optim.lr": cfg.train.lr, "optim.weight_decay": cfg.train.weight_decay,
            "train.epochs": cfg.train.epochs, "train.seed": cfg.train.seed, "train.threads": cfg.train.threads,
            "train.grad_clip": 1.0, "schedule.warmup_epochs": min(1.0, cfg.train.epochs / 4)})
        run = out / "trials" / f"{info.number:04d}"
        t0 = time.perf_counter()
        summary = train_task(video, vcfg, out=run, quiet=True, force=True)
        metrics.update(train_seconds=time.perf_counter() - t0, val_acc=float(summary["best_val_acc"]),
                       test_acc=float(summary["test"]["forward"]["acc"]), run=str(run))
        return metrics

    return evaluate


def movinet_space_for(cfg: MovinetSearchConfig) -> SearchSpace:
    from ..search.movinet_space import movinet_space

    space = movinet_space(cfg.space)
    if len(cfg.latency.threads) > 1:
        space = SearchSpace(space.name + "+threads", (*space.params, categorical("threads", cfg.latency.threads)))
    return space


def movinet_references(cfg: MovinetSearchConfig, space: SearchSpace) -> list[tuple[str, dict]]:
    from ..models.movinet import SPECS
    from ..search.movinet_space import encode

    refs = []
    for name in cfg.references:
        if name not in SPECS:
            raise LeancnnError(f"config key 'references': unknown MoViNet {name!r}; known: {', '.join(SPECS)}")
        point = encode(SPECS[name])
        if "threads" in space.names:
            point["threads"] = cfg.latency.threads[0]
        space.check(point, f"reference {name.upper()}")
        refs.append((name.upper(), point))
    return refs


def describe_arch(point: dict) -> str:
    from ..search.movinet_space import decode

    p = {k: v for k, v in point.items() if k != "threads"}
    try:
        text = decode(p).to_string()
    except Exception:  # noqa: BLE001 - a report of a foreign study still prints
        text = str(p)
    return text + (f" @{point['threads']}thr" if "threads" in point else "")


MOVINET_OBJECTIVES = (Objective("val_acc", "maximize"), Objective("latency_ms", "minimize"))


def movinet_columns(lat: SearchLatencyConfig) -> list[tuple[str, str, Callable]]:
    cols = [("val_acc", "val acc", _pct), ("test_acc", "test acc", _pct), ("latency_ms", f"objective ms ({lat.condition} {lat.statistic})", _ms)]
    cols += [(f"{condition_name(n)}_{s}_ms", f"{condition_name(n)} {s} ms", _ms) for n in lat.loads
             for s in ("p50", "p99")]
    cols += [("params", "params", _mega), ("macs_per_frame", "MACs/frame", _mega)]
    return cols


def search_movinet(cfg: MovinetSearchConfig, out: str | Path, resume: bool = False, join: bool = False,
                   force: bool = False, progress: bool = False, log: Callable[[str], None] = print,
                   config_file: str | Path | None = None, command: str = "") -> dict:
    from .runs import data_inputs

    inputs = [*data_inputs("digits", "video")] + ([("config file", Path(config_file))] if config_file else [])
    out = prepare_out(out, inputs, resume, join, force, cfg.search.storage)
    space = movinet_space_for(cfg)
    refs = movinet_references(cfg, space)
    settings = engine_settings(cfg, out, resume, join, _attrs(cfg), enqueue=refs)
    atomic_write_text(out / "search.yaml", dump_config(cfg))
    record_outputs(out, ["search.yaml", STUDY_DB])
    log(f"search {settings.study_name}: {settings.trials} trials, sampler {settings.sampler}, space "
        f"{space.name} ({len(space)} variables), objective val_acc vs {objective_key(cfg.latency)} "
        f"({cfg.latency.backend}, threads {cfg.latency.threads}, loads {cfg.latency.loads}); study in {settings.storage}")

    def line(m: dict) -> str:
        if "val_acc" not in m:
            return f"latency {_ms(m.get('latency_ms'))} ms"
        return f"val {_pct(m['val_acc'])}  {_ms(m['latency_ms'])} ms  {_mega(m.get('params'))} params"

    study, wlog = run_search(movinet_objective(cfg, out), space, MOVINET_OBJECTIVES, settings,
                             progress=progress, log=log, describe=line)
    return movinet_report(study, cfg, out, command)


def movinet_report(study, cfg: MovinetSearchConfig, out: Path, command: str = "") -> dict:
    lat = cfg.latency
    summary = write_report(study, out, MOVINET_OBJECTIVES, lat.budget_ms or None,
                           f"MoViNet stream search: validation accuracy vs {lat.condition} {lat.statistic} latency",
                           f"{lat.condition} {lat.statistic} per frame (ms, {lat.backend})", "validation accuracy (%)",
                           describe_arch, movinet_columns(lat),
                           intro=f"Each trial: the fused stream step measured (1 frame, batch 1, {lat.backend}, loads "
                                 f"{lat.loads}), then trained for {cfg.train.epochs} epochs on {cfg.data.train} "
                                 f"moving-digits clips ({cfg.data.frames // cfg.data.frame_step} frames of "
                                 f"{cfg.data.height}x{cfg.data.width}).", command=command)
    record_outputs(out, [*REPORT_FILES])
    return summary


# ------------------------------------------------------------------------------------------------ prune


@dataclass
class PruneProblem:
    """What every prune trial shares: the source model, its data batches, the score table, the groups' buckets."""

    cfg: Any
    model: nn.Module
    ckpt: Path
    example: torch.Tensor
    table: Any
    groups: list[str]
    bucket: dict[str, int]
    bn_batches: list
    val_batches: list
    tests: Any
    macs: int


def prune_problem(source: str | Path, pcfg: LatencyPruneConfig, log: Callable[[str], None] = print) -> PruneProblem:
    from ..prune import compute_scores, get_criterion, prunable_groups
    from ..prune.blend import depth_buckets
    from .digits import build_datasets
    from .pruning import INPUT, fixed_batches, load_source

    for c in pcfg.space.criteria:
        get_criterion(c)
    cfg, model, ckpt = load_source(source)
    example = torch.zeros(1, *INPUT)
    with torch.enable_grad():
        groups = [g.name for g in prunable_groups(model, example)]
    train_ds, val_ds, tests = build_datasets(cfg.data, label_seed=cfg.train.seed)
    bs = cfg.data.batch_size
    torch.manual_seed(pcfg.seed)
    calib = fixed_batches(train_ds, pcfg.calib_batches * bs, bs, pcfg.seed)
    bn = fixed_batches(train_ds, pcfg.bn_batches * bs, bs, pcfg.seed + 1)
    val = fixed_batches(val_ds, pcfg.val_images, 256, pcfg.seed + 2)
    with torch.enable_grad():
        table = compute_scores(model, example, pcfg.space.criteria, calib, max_batches=pcfg.calib_batches)
    n_b = pcfg.space.buckets or len(groups)
    bucket = depth_buckets(groups, min(n_b, len(groups)))
    log(f"{cfg.model.name} ({ckpt}): {len(groups)} prunable groups in {len(set(bucket.values()))} ratio variables")
    return PruneProblem(cfg, model.eval(), ckpt, example, table, groups, bucket, bn, val, tests,
                        count_macs(model, INPUT))


def prune_space(pcfg: LatencyPruneConfig, problem: PruneProblem) -> SearchSpace:
    s = pcfg.space
    top = round(round(s.max_ratio / s.ratio_step) * s.ratio_step, 10)  # on the step grid, no float residue
    params = [real(f"r{b}", 0.0, top, step=s.ratio_step) for b in sorted(set(problem.bucket.values()))]
    if len(s.round_to) > 1:
        params.append(categorical("round_to", s.round_to))
    if s.blend and len(s.criteria) > 1:
        params += [real(f"w_{c}", 0.0, 1.0, step=0.05) for c in s.criteria]
    if len(pcfg.latency.threads) > 1:
        params.append(categorical("threads", pcfg.latency.threads))
    return SearchSpace("prune", tuple(params))


def prune_plan(point: dict, pcfg: LatencyPruneConfig, problem: PruneProblem):
    """The pruned copy of the source model for ``point`` and its plan."""
    from ..prune import prune_with_scores
    from ..prune.search import BlendSpace

    s = pcfg.space
    ratios = {g: float(point[f"r{problem.bucket[g]}"]) for g in problem.groups}
    round_to = int(point.get("round_to", s.round_to[0]))
    if s.blend and len(s.criteria) > 1:
        w = np.array([point[f"w_{c}"] for c in s.criteria], dtype=np.float64)
        w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        scores = BlendSpace(list(s.criteria)).criterion(w, "blend").blend(problem.table, order=list(problem.table))
    else:
        scores = problem.table.of(s.criteria[0])
    with torch.enable_grad():
        return prune_with_scores(problem.model, problem.example, scores, ratios,
                                 round_to=round_to if round_to > 1 else None)


def prune_objective(pcfg: LatencyPruneConfig, problem: PruneProblem):
    from .pruning import INPUT, accuracy, recalibrate_bn

    def evaluate(point: dict, info) -> dict:
        threads = point.get("threads", pcfg.latency.threads[0])
        pruned, plan = prune_plan(point, pcfg, problem)
        macs = count_macs(pruned, INPUT)
        metrics: dict[str, Any] = {"threads": threads, "macs": macs, "macs_ratio": macs / problem.macs,
                                   "params": count_params(pruned)}
        metrics.update(measure_latency(pruned.eval(), "classifier", INPUT, pcfg.latency, threads, pcfg.latency.batch,
                                       seed=info.number))
        if pcfg.latency.max_ms and metrics["latency_ms"] > pcfg.latency.max_ms:
            raise Reject(f"latency {metrics['latency_ms']:.3f} ms > max_ms {pcfg.latency.max_ms:g}", metrics)
        recalibrate_bn(pruned, problem.bn_batches)
        metrics["val_acc"] = accuracy(pruned, problem.val_batches)
        return metrics

    return evaluate


def describe_plan(point: dict) -> str:
    rs = [f"{point[k]:.2f}" for k in sorted((k for k in point if k.startswith("r") and k[1:].isdigit()),
                                            key=lambda k: int(k[1:]))]
    text = "ratios " + "/".join(rs)
    if "round_to" in point:
        text += f", round_to {point['round_to']}"
    ws = {k[2:]: v for k, v in point.items() if k.startswith("w_")}
    if ws:
        text += ", blend " + " ".join(f"{k} {v:.2f}" for k, v in ws.items())
    if "threads" in point:
        text += f", {point['threads']} thr"
    return text


PRUNE_OBJECTIVES = (Objective("val_acc", "maximize"), Objective("latency_ms", "minimize"))
PRUNE_FILES = ("pruned.pt", "config.yaml", "search.yaml", "chosen.json")


def prune_columns(lat: SearchLatencyConfig) -> list[tuple[str, str, Callable]]:
    return [("val_acc", "val acc (BN recal.)", _pct), ("latency_ms", f"objective ms ({lat.condition} {lat.statistic})", _ms),
            ("speedup", "speed-up", lambda v: "–" if v is None else f"{v:.2f}×"),
            ("macs_ratio", "MACs kept", _pct), ("params", "params", _mega)]


def search_prune(source: str | Path, pcfg: LatencyPruneConfig, out: str | Path, resume: bool = False,
                 join: bool = False, force: bool = False, progress: bool = False,
                 log: Callable[[str], None] = print, config_file: str | Path | None = None, command: str = "") -> dict:
    from ..prune import get_criterion
    from .pruning import finetune, recalibrate_bn, save_pruned
    from .runs import checkpoint_inputs, data_inputs

    for c in pcfg.space.criteria:  # an unknown name fails before anything is written, listing the known ones
        get_criterion(c)
    inputs = [*checkpoint_inputs(source, "source"), *data_inputs("digits")]
    if config_file:
        inputs.append(("config file", Path(config_file)))
    out = prepare_out(out, inputs, resume, join, force, pcfg.search.storage)
    problem = prune_problem(source, pcfg, log)
    space = prune_space(pcfg, problem)
    unpruned = {p.name: 0.0 for p in space.params if p.name.startswith("r")}
    if "round_to" in space.names:
        unpruned["round_to"] = pcfg.space.round_to[0]
    if "threads" in space.names:
        unpruned["threads"] = pcfg.latency.threads[0]
    for c in pcfg.space.criteria if "w_" + pcfg.space.criteria[0] in space.names else ():
        unpruned[f"w_{c}"] = 1.0
    attrs = _attrs(pcfg)
    attrs["source"] = str(problem.ckpt)
    settings = engine_settings(pcfg, out, resume, join, attrs, enqueue=[("unpruned", unpruned)])
    atomic_write_text(out / "search.yaml", dump_config(pcfg))
    record_outputs(out, ["search.yaml", STUDY_DB])
    def line(m: dict) -> str:
        return f"val {_pct(m.get('val_acc'))}  {_ms(m.get('latency_ms'))} ms  MACs {_pct(m.get('macs_ratio'))}"

    study, _ = run_search(prune_objective(pcfg, problem), space, PRUNE_OBJECTIVES, settings, progress=progress,
                          log=log, describe=line)
    summary = prune_report(study, pcfg, out, f"`{problem.ckpt}`", command)
    if summary["chosen"] is not None:
        chosen = next(t for t in study.get_trials(deepcopy=False) if t.number == summary["chosen"])
        pruned, plan = prune_plan(chosen.params, pcfg, problem)
        recalibrate_bn(pruned, problem.bn_batches)
        pruned_cfg = save_pruned(out / "pruned.pt", problem.cfg, pruned, plan, problem.ckpt,
                                 f"{problem.cfg.name}-searched")
        atomic_write_text(out / "config.yaml", dump_config(pruned_cfg))
        atomic_write_json(out / "chosen.json", {"trial": chosen.number, "point": chosen.params,
                                                "metrics": chosen.user_attrs.get("metrics", {})})
        record_outputs(out, ["pruned.pt", "config.yaml", "chosen.json"])
        summary["checkpoint"] = str(out / "pruned.pt")
        if pcfg.finetune_epochs:
            ft = finetune(out / "pruned.pt", problem.cfg, pcfg.finetune_epochs, pcfg.finetune_lr, out / "finetune")
            summary["finetune"] = {"run_dir": ft["run_dir"], "test": ft["test"]}
    return summary


def unpruned_latency(study) -> float | None:
    """The objective latency of the study's unpruned trial (the first, fixed point): the baseline of the speed-ups
    and of ``target_speedup``, measured on the same protocol as every trial and stored with the study, so a
    resumed or joined search keeps the same target."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("label") == "unpruned" and t.state.name == "COMPLETE":
            return float(t.user_attrs["metrics"]["latency_ms"])
    return None


def prune_report(study, pcfg: LatencyPruneConfig, out: Path, source: str = "", command: str = "") -> dict:
    lat = pcfg.latency
    base = unpruned_latency(study)
    target = base / pcfg.target_speedup if base and pcfg.target_speedup else None

    def speedup(m: dict) -> dict:
        return {"speedup": base / m["latency_ms"]} if base and m.get("latency_ms") else {}

    intro = (f"Source: {source}; " if source else "") + (
        f"unpruned {objective_key(lat)} {base:.3f} ms (trial 0, measured as every trial)" if base else "") + (
        f"; target {pcfg.target_speedup:g}x faster: {target:.3f} ms." if target else ".")
    summary = write_report(study, out, PRUNE_OBJECTIVES, target,
                           f"Latency-aware pruning: accuracy vs {lat.condition} {lat.statistic}",
                           f"{lat.condition} {lat.statistic} latency (ms, {lat.backend}, batch {lat.batch})",
                           "validation accuracy after BN recalibration (%)", describe_plan, prune_columns(lat),
                           intro=intro, command=command, augment=speedup)
    record_outputs(out, [*REPORT_FILES])
    summary["base_latency_ms"], summary["target_ms"] = base, target
    return summary


# ------------------------------------------------------------------------------------------------ commands


def search_command(kind: str, source: str | None, config: str | None, overrides: list[str], out: str | None,
                   resume: bool, join: bool, force: bool, trials: int | None, timeout_minutes: float | None,
                   storage: str | None, command: str = "") -> int:
    from ..train.distributed import DistContext
    from ..train.engine import progress_enabled

    extra = []
    if trials is not None:
        extra.append(f"search.trials={trials}")
    if timeout_minutes is not None:
        extra.append(f"search.timeout_minutes={timeout_minutes}")
    if storage is not None:
        extra.append(f"search.storage={storage}")
    cls = MovinetSearchConfig if kind == "movinet" else LatencyPruneConfig
    if (resume or join) and out and config is None and (Path(out) / "search.yaml").is_file():
        # the search's own settings, read now (the file lies in -o, so it is not passed on as an input)
        cfg = load_config(Path(out) / "search.yaml", [*overrides, *extra], cls=cls)
    else:
        cfg = load_config(config, [*overrides, *extra], cls=cls)
    out_dir = Path(out) if out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = progress_enabled(DistContext())
    try:
        if kind == "movinet":
            summary = search_movinet(cfg, out_dir, resume, join, force, progress, config_file=config,
                                     command=command)
        else:
            if not source:
                raise LeancnnError("search prune needs the trained classifier to prune (a run directory or checkpoint)")
            summary = search_prune(source, cfg, out_dir, resume, join, force, progress, config_file=config,
                                   command=command)
    except KeyboardInterrupt:
        if (out_dir / STUDY_DB).is_file() or cfg.search.storage:
            where = f"{source} " if kind == "prune" else ""
            print(f"search stopped; the finished trials are kept: leancnn search {kind} {where}-o {out_dir} --resume "
                  "continues it", file=sys.stderr, flush=True)
        raise
    print(summary["table"])
    print(f"report: {out_dir / 'report.md'}" + (f"; pruned checkpoint: {summary['checkpoint']}"
                                                 if summary.get("checkpoint") else ""))
    return 0


def report_command(out: str, condition: str | None, statistic: str | None) -> int:
    """Rewrite the report of a search folder, optionally reading its trials under another latency statistic."""
    import optuna

    out = Path(out)
    cfg_path = out / "search.yaml"
    if not cfg_path.is_file():
        raise LeancnnError(f"'{out}' holds no search.yaml: give the -o of a search")
    import yaml

    raw = yaml.safe_load(cfg_path.read_text()) or {}
    kind = "prune" if "space" in raw and isinstance(raw["space"], dict) else "movinet"
    from ..config import from_dict

    cfg = from_dict(LatencyPruneConfig if kind == "prune" else MovinetSearchConfig, raw)
    storage = cfg.search.storage or sqlite_url(out / STUDY_DB)
    study = optuna.load_study(study_name=cfg.search.study or cfg.name, storage=storage)
    lat = cfg.latency
    if condition or statistic:
        lat = derive(lat, {"condition": condition or lat.condition, "statistic": statistic or lat.statistic})
        cfg = derive(cfg, {"latency.condition": lat.condition, "latency.statistic": lat.statistic})
        study = relabelled(study, lat)
    summary = movinet_report(study, cfg, out) if kind == "movinet" else prune_report(study, cfg, out)
    print(summary["table"])
    return 0


class _Relabelled:
    """A study's trials with ``latency_ms`` read under another statistic (for reports only)."""

    def __init__(self, study, lat: SearchLatencyConfig):
        self._study, self._lat = study, lat

    def get_trials(self, deepcopy: bool = False, states=None):
        import copy

        out = []
        for t in self._study.get_trials(deepcopy=False, states=states):
            t = copy.deepcopy(t)
            m = dict(t.user_attrs.get("metrics", {}))
            if all(f"{condition_name(n)}_{self._lat.statistic}_ms" in m for n in self._lat.loads):
                m.update(objective_values(m, self._lat))
                t.user_attrs["metrics"] = m
            out.append(t)
        return out


def relabelled(study, lat: SearchLatencyConfig):
    return _Relabelled(study, lat)


__all__ = ["LatencyPruneConfig", "MovinetSearchConfig", "PruneProblem", "SearchEngineConfig", "SearchLatencyConfig",
           "condition_name", "measure_latency", "measure_many", "movinet_objective", "objective_values",
           "prune_objective", "prune_plan", "prune_problem", "prune_space", "report_command", "search_command",
           "search_movinet", "search_prune"]
