"""One search engine on Optuna: a space (data), an evaluation (code), objectives; resumable, shareable studies.

:func:`run_search` runs one *worker* of a study. A study lives in a storage: ``sqlite:///<out>/study.db`` by default
(resumable: ``resume=True`` continues it), any SQLAlchemy database URL (``postgresql://user@host/db``,
``mysql+pymysql://...``) so workers on several machines share one study, or ``None`` for memory only. Several
workers (processes, machines) started with the same ``storage`` and ``study_name`` share the work: each asks the
sampler for the next point, evaluates it and stores the result; the study stops when it holds ``trials`` finished
trials (or at this worker's ``timeout``).

What the engine adds to Optuna, and why:

* **the space is stored with the study** (its fingerprint, the objectives, the task's settings): a worker or a
  resume with a different space or different settings is refused in one line, instead of mixing two searches;
* **killed workers**: RDB storages get a heartbeat (``heartbeat_s``); a trial whose worker stopped beating for
  ``grace_s`` is marked FAIL by the next worker that starts a trial (Optuna's ``fail_stale_trials``), and its
  point is queued again once (Optuna's retry callback) and evaluated before the study stops, so a kill loses
  neither the study nor the point;
* **early rejection** (Optuna's pruning of bad trials, in the form a multi-objective study allows): an evaluation
  raises :class:`Reject` (e.g. the measured latency is over the ceiling, before any training), the trial is stored
  as PRUNED with the reason and the metrics measured so far;
* **no point evaluated twice**: a point equal to a completed trial's is not evaluated again; its values are
  copied (``duplicate_of``), as the evolutionary search's cache does;
* **fixed points first** (``enqueue``, e.g. the published MoViNet-A0 as a reference on the same protocol), with a
  ``label`` each;
* **accounting**: per trial the seconds inside the evaluation (training, measurement) and the engine's own
  overhead (sampling, storage, bookkeeping; the gap since the previous trial included), so the overhead can be
  checked against the goal (< 5% of a trial);
* a progress bar (TTY) or one line per trial.

Samplers: ``nsga2`` (NSGA-II, the default for two or more objectives), ``tpe`` (multivariate TPE; with
``constant_liar`` when workers share a study), ``random``. The evolutionary search of a pruning blend (He et al.,
``leancnn.prune.search.evolve``) is the strategy :func:`run_evolve`: the exact algorithm drives, every evaluation is
stored as a trial of a study, and a resumed study replays its stored evaluations into the algorithm's cache, so a
resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import LeancnnError
from .space import SearchSpace

SAMPLERS = ("nsga2", "tpe", "random")
DIRECTIONS = ("maximize", "minimize")


class Reject(Exception):
    """Raised by an evaluation to stop a trial early (stored as PRUNED) with a reason and what was measured."""

    def __init__(self, reason: str, metrics: dict | None = None):
        super().__init__(reason)
        self.reason, self.metrics = reason, dict(metrics or {})


@dataclass(frozen=True)
class Objective:
    """An objective: the name of a metric the evaluation returns, and its direction."""

    name: str
    direction: str = "maximize"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise LeancnnError(f"objective {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")


@dataclass
class TrialInfo:
    """What an evaluation is told about its trial: the study's trial number, a label for fixed points, and the
    Optuna trial (to store extra attributes)."""

    number: int
    label: str | None
    trial: Any = None


@dataclass
class SearchSettings:
    study_name: str
    storage: str | None  # database URL; None: in memory
    trials: int = 20  # finished trials the study should hold (all workers together)
    timeout: float | None = None  # seconds this worker may start new trials for
    sampler: str = "nsga2"
    population: int = 8  # NSGA-II's population size
    seed: int | None = 0  # the sampler's seed (a joining worker adds its process id)
    resume: bool = False  # continue a study that exists (else refuse it)
    join: bool = False  # join a study another worker started (a second worker); implies nothing is created twice
    heartbeat_s: int = 10
    grace_s: int = 30
    enqueue: Sequence[tuple[str, dict]] = ()  # (label, point): evaluated first
    attrs: dict = field(default_factory=dict)  # settings that must match on resume (task, data, protocol)
    attr_defaults: dict = field(default_factory=dict)  # the settings' defaults (keys added later resume at these)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise LeancnnError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.trials < 1:
            raise LeancnnError(f"trials must be >= 1, got {self.trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise LeancnnError(f"timeout must be > 0 seconds, got {self.timeout}")


def _optuna():
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - declared in pyproject
        raise LeancnnError("the search needs optuna (pip install 'optuna>=4'); it is a dependency of leancnn") from e
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported by leancnn (its error, or Ctrl-C)
    return optuna


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_storage(url: str | None, heartbeat_s: int = 10, grace_s: int = 30):
    """An Optuna storage for ``url`` (None: in memory), with a heartbeat on database storages."""
    optuna = _optuna()
    if url is None or url == ":memory:":
        return optuna.storages.InMemoryStorage()
    import warnings

    from optuna.storages import RDBStorage

    kw = {}
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat_s:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the heartbeat API is marked experimental in Optuna
            try:
                from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

                kw["heartbeat_stale_trial_callback"] = Retry(max_retry=1)
            except ImportError:  # Optuna < 4.9
                from optuna.storages import RetryFailedTrialCallback as Retry

                kw["failed_trial_callback"] = Retry(max_retry=1)
        kw.update(heartbeat_interval=heartbeat_s, grace_period=grace_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return RDBStorage(url, **kw)
    except Exception as e:  # noqa: BLE001 - a bad URL or an unreachable database: one line
        raise LeancnnError(f"cannot open the study storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}"
                           ) from None


def make_sampler(name: str, seed: int, n_objectives: int, shared: bool, population: int = 8):
    optuna = _optuna()
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=shared, n_startup_trials=8)
    return optuna.samplers.RandomSampler(seed=seed)


def study_attrs(space: SearchSpace, objectives: Sequence[Objective], settings: SearchSettings) -> dict:
    return {"leancnn.space": space.to_dict(), "leancnn.space_fingerprint": space.fingerprint(),
            "leancnn.objectives": [[o.name, o.direction] for o in objectives],
            "leancnn.settings": settings.attrs}


def open_study(space: SearchSpace, objectives: Sequence[Objective], settings: SearchSettings):
    """Create, resume or join the study (see :class:`SearchSettings`); a stored space, objectives or settings
    that differ from these are refused in one line."""
    optuna = _optuna()
    storage = make_storage(settings.storage, settings.heartbeat_s, settings.grace_s)
    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage)} if settings.storage else set()
    exists = settings.study_name in names
    # a worker that joins draws from its own stream (the same seed would propose the first worker's points again)
    seed = settings.seed if not settings.join or settings.seed is None else (settings.seed * 100_003 + os.getpid()) % 2**31
    sampler = make_sampler(settings.sampler, seed, len(objectives), shared=settings.storage is not None,
                           population=settings.population)
    want = study_attrs(space, objectives, settings)
    if exists and not (settings.resume or settings.join):
        raise LeancnnError(f"study {settings.study_name!r} already exists in {settings.storage}; add --resume to "
                           "continue it (or --join to add a worker to it), or choose another study name / -o")
    if not exists and settings.resume:
        raise LeancnnError(f"--resume: there is no study {settings.study_name!r} in {settings.storage}")
    if exists:
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler)
        have = study.user_attrs
        for key, what in (("leancnn.space_fingerprint", "search space"), ("leancnn.objectives", "objectives")):
            if have.get(key) != want[key]:
                raise LeancnnError(f"study {settings.study_name!r} in {settings.storage} was made with other {what}; "
                                   "resume it with the same command, or start another study")
        keys = settings_changes(have.get("leancnn.settings") or {}, want["leancnn.settings"], settings.attr_defaults)
        if keys:
            a, b = _flat(have.get("leancnn.settings") or {}), _flat(want["leancnn.settings"])
            diff = ", ".join(f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys[:3])
            raise LeancnnError(f"study {settings.study_name!r} in {settings.storage} was made with other settings "
                               f"({diff}); resume it with the same command, or start another study")
        return study
    directions = [o.direction for o in objectives]
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                    directions=directions, load_if_exists=settings.join)
    except optuna.exceptions.DuplicatedStudyError:  # pragma: no cover - a race between two first workers
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler)
    if not study.user_attrs:
        for k, v in want.items():
            study.set_user_attr(k, v)
        for label, point in settings.enqueue:
            space.check(point, f"fixed point {label!r}")
            study.enqueue_trial(point, user_attrs={"label": label})
    return study


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_changes(stored: dict, wanted: dict, defaults: dict | None = None) -> list[str]:
    """The keys (dotted) whose values differ between a study's stored settings and this run's. A key the stored
    settings lack (added to the schema later) counts only when this run's value is not its default, so a study
    made by an earlier version still resumes."""
    a, b, dflt = _flat(stored), _flat(wanted), _flat(defaults or {})
    keys = []
    for k in sorted(set(a) | set(b)):
        if k not in a and k in dflt and b.get(k) == dflt[k]:
            continue
        if a.get(k, object()) != b.get(k, object()):
            keys.append(k)
    return keys


def finished_states():
    """The states that count towards a study's ``trials``: complete and rejected (a failed trial, e.g. one whose
    worker was killed, does not use up the budget; its point is queued again)."""
    optuna = _optuna()
    s = optuna.trial.TrialState
    return (s.COMPLETE, s.PRUNED)


def _key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, default=str)


@dataclass
class WorkerLog:
    """What one worker did: the trials it evaluated (numbers), copied, rejected, and its time accounts."""

    evaluated: list[int] = field(default_factory=list)
    copied: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    eval_seconds: float = 0.0
    overhead_seconds: float = 0.0


def run_search(evaluate: Callable[[dict, TrialInfo], dict], space: SearchSpace, objectives: Sequence[Objective],
               settings: SearchSettings, progress: bool = False, log: Callable[[str], None] | None = print,
               describe: Callable[[dict], str] | None = None):
    """Run one worker of the study (see the module docstring). ``evaluate(point, info)`` returns a dict of
    metrics holding every objective's name (finite numbers); it may raise :class:`Reject`. Returns
    ``(study, WorkerLog)``."""
    optuna = _optuna()
    study = open_study(space, objectives, settings)
    wlog = WorkerLog()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    states = finished_states()
    clock = {"last": time.perf_counter()}

    def n_finished() -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    def queued() -> bool:  # fixed points and the points of killed workers' trials, still to be evaluated
        return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.trials, initial=min(n_finished(), settings.trials), desc=settings.study_name,
                   unit="trial", dynamic_ncols=True, file=sys.stdout)

    def objective(trial):
        t_enter = time.perf_counter()
        gap = t_enter - clock["last"]
        point = space.suggest(trial)
        label = trial.user_attrs.get("label")
        trial.set_user_attr("worker", worker)
        done: dict = {}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            done.setdefault(_key(t.params), t)  # the first, evaluated one (copies point at it)
        twin = done.get(_key(point))
        t_eval = 0.0
        if twin is not None and twin.number != trial.number:
            metrics = dict(twin.user_attrs.get("metrics", {}))
            trial.set_user_attr("duplicate_of", twin.number)
            wlog.copied.append(trial.number)
        else:
            t0 = time.perf_counter()
            try:
                metrics = evaluate(point, TrialInfo(trial.number, label, trial))
            except Reject as r:
                t_eval = time.perf_counter() - t0
                trial.set_user_attr("metrics", _jsonable(r.metrics))
                trial.set_user_attr("reject_reason", r.reason)
                trial.set_user_attr("eval_seconds", t_eval)
                trial.set_user_attr("overhead_seconds", gap + (time.perf_counter() - t_enter) - t_eval)
                wlog.rejected.append(trial.number)
                wlog.eval_seconds += t_eval
                raise optuna.TrialPruned(r.reason) from None
            t_eval = time.perf_counter() - t0
            wlog.evaluated.append(trial.number)
        values = []
        for o in objectives:
            v = metrics.get(o.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise LeancnnError(f"the evaluation returned no finite {o.name!r} (got {v!r})")
            values.append(float(v))
        trial.set_user_attr("metrics", _jsonable(metrics))
        trial.set_user_attr("eval_seconds", t_eval)
        overhead = gap + (time.perf_counter() - t_enter) - t_eval
        trial.set_user_attr("overhead_seconds", overhead)
        wlog.eval_seconds += t_eval
        wlog.overhead_seconds += overhead
        return values[0] if len(values) == 1 else values

    def after(study_, trial):
        clock["last"] = time.perf_counter()
        n = n_finished()
        if bar is not None:
            bar.n = min(n, settings.trials)
            bar.refresh()
        elif log is not None:
            what = describe(trial.user_attrs.get("metrics", {})) if describe else ""
            tag = trial.user_attrs.get("label") or ""
            state = trial.state.name.lower()
            extra = f" ({trial.user_attrs.get('reject_reason')})" if trial.user_attrs.get("reject_reason") else ""
            log(f"trial {trial.number:3d} {tag:>4} {state:8s} {what}{extra}  [{n}/{settings.trials}]")
        if n >= settings.trials and not queued():  # a queued point is evaluated before the study stops
            study_.stop()

    try:
        if n_finished() < settings.trials or queued():
            study.optimize(objective, n_trials=None, timeout=settings.timeout, callbacks=[after],
                           catch=(), gc_after_trial=False)
    finally:
        if bar is not None:
            bar.close()
    return study, wlog


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


__all__ = ["DIRECTIONS", "SAMPLERS", "Objective", "Reject", "SearchSettings", "TrialInfo", "WorkerLog",
           "finished_states", "make_sampler", "make_storage", "open_study", "run_search", "sqlite_url", "study_attrs"]


# ------------------------------------------------------------------------------------------------ evolutionary strategy


def run_evolve(fitness: Callable, n_params: int, settings: SearchSettings, objective: str = "fitness",
               space_name: str = "blend", **evolve_kw):
    """The evolutionary search of :func:`leancnn.prune.search.evolve`, unchanged, as a strategy of the engine:
    every fitness call is stored as a trial (params ``g0 .. g{n-1}``, the genome; value: the fitness) of the
    study ``settings`` names, with the EA's settings in the study's attributes. With ``settings.resume`` the
    stored evaluations are given back to the algorithm instead of being computed again, so the resumed run makes
    the same draws, reaches the same result and evaluates only what the interrupted one had not. Returns
    ``(EAResult, study)``."""
    import numpy as np

    from ..prune.search import evolve
    from .space import real

    optuna = _optuna()
    space = SearchSpace(space_name, tuple(real(f"g{i}", 0.0, 1.0) for i in range(int(n_params))))
    attrs = dict(settings.attrs)
    attrs["evolve"] = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                       for k, v in sorted(evolve_kw.items()) if k not in ("progress", "workers", "init")}
    settings = SearchSettings(**{**settings.__dict__, "attrs": attrs, "enqueue": (), "heartbeat_s": 0})
    study = open_study(space, [Objective(objective, "maximize")], settings)
    dists = {p.name: optuna.distributions.FloatDistribution(0.0, 1.0) for p in space.params}
    decimals = int(evolve_kw.get("cache_decimals", 4))

    def key(g) -> tuple:
        return tuple(np.round(np.asarray(g, dtype=np.float64), decimals).tolist())

    stored = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        stored[key([t.params[f"g{i}"] for i in range(n_params)])] = t.value

    def logged(genome):
        k = key(genome)
        if k in stored:
            return stored[k]
        t0 = time.perf_counter()
        value = fitness(genome)
        return _store(genome, value, time.perf_counter() - t0)

    def _store(genome, value, eval_s):
        k = key(genome)
        study.enqueue_trial({f"g{i}": float(min(max(g, 0.0), 1.0))
                             for i, g in enumerate(np.asarray(genome, dtype=np.float64))})
        trial = study.ask(dists)  # the enqueued genome: params stored exactly, not drawn
        trial.set_user_attr("eval_seconds", eval_s)
        v = float(value)
        if math.isfinite(v):
            study.tell(trial, v)
        else:
            trial.set_user_attr("reject_reason", "non-finite fitness")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        stored[k] = v
        return v

    if evolve_kw.get("workers", 1) > 1:  # forked evaluations: stored in the study once the search ends
        result = evolve(lambda g: stored[key(g)] if key(g) in stored else fitness(g), n_params, **evolve_kw)
        for genome, value in result.evaluated:
            if key(genome) not in stored:
                _store(genome, value, None)
        return result, study
    result = evolve(logged, n_params, **evolve_kw)
    return result, study


__all__ += ["run_evolve"]
