"""The evolutionary search of a blended criterion's weights, and the search space it runs in.

He et al. (ICANN 2021, see ``blend.py``) search the blend of the selected candidates with an evolutionary algorithm on
validation data. A solution is a *genome*: the flat weights of a :class:`~leancnn.prune.blend.BlendedCriterion`,
one simplex block of K genes per depth bucket (B·K genes); :class:`BlendSpace` maps genomes to criteria and back,
:func:`seed_population` gives the starting genomes, :func:`evolve` runs the search.

Search (:func:`evolve`): a real-coded genetic algorithm on the product of simplices, fitness *maximised*:

* genes: non-negative weights, each block projected back onto the simplex after every operator (negatives clipped to
  0 — so exact zeros and single-criterion corners are reachable — then divided by the block sum; an all-zero block
  becomes uniform);
* initial population: ``init`` genomes first (e.g. :func:`seed_population`: the single-criterion corners and the
  uniform blend, so the best evaluated blend is never worse than the best single candidate on the fitness), the
  rest drawn from a flat Dirichlet(1) per block;
* each generation makes λ = ``population`` children: two parents by binary tournament, ``crossover`` with
  probability ``crossover_rate`` — ``"blend"`` (a point on the line through the parents, p1 + u (p2 - p1) with
  u ~ U(-0.25, 1.25), BLX-0.25 along one direction) or ``"uniform"`` (each gene from either parent) — then Gaussian
  mutation: each gene with probability ``mutation_rate`` (default 1 / genes per block; at least one gene per child)
  gets N(0, ``mutation_sigma``) added, in absolute simplex units [ours]; ``mutation_decay`` multiplies sigma after
  every generation. A child identical (after rounding) to a current member, a sibling or an already-evaluated genome
  is redrawn (up to 8 times) to keep the population diverse;
* survivors (``selection="plus"``, default, (μ+λ)): the ``elitism`` best parents always survive, the other
  ``population - elitism`` places go to the best of the remaining parents and the children; ``"comma"``: the
  ``elitism`` best parents plus the best ``population - elitism`` children (non-elite parents die). Ties keep the
  earlier genome;
* cache: fitness values are stored under the genome rounded to ``cache_decimals`` (default 4) decimals; a genome
  with a stored value is not evaluated again (``cache=False`` evaluates every child; a ``dict`` is used as the
  cache and filled, to share it between runs). A non-finite fitness counts as -inf;
* parallel: ``workers > 1`` evaluates each generation's new genomes in a ``multiprocessing`` pool with the
  ``"fork"`` start method. The fitness callable is registered in a module-level table before the pool forks, so
  the children inherit it and it need not be picklable (closures work); the genomes sent and the values returned
  must be picklable (numpy arrays and floats). Where ``fork`` is not available (Windows) the run is sequential with
  a warning. A fitness that uses CUDA must run with ``workers=1`` (CUDA cannot be used in forked children). All
  random draws happen in the parent, so the run is deterministic for a seed and identical for any ``workers``
  (given a deterministic fitness).

:func:`evolve` runs as a sequence of steps: the initial population (``_initial_population``), then per generation
the children (``_offspring``, bred by ``_Breeder``), their fitness (``_Evaluator``: cache, pool, log of calls, best
genome) and the survivors (``_survivors``).
"""

from __future__ import annotations

import functools
import itertools
import math
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import LeancnnError
from .blend import BlendedCriterion, depth_buckets
from .normalise import BLEND_NORMALISATIONS, check_normalisation

CROSSOVERS = ("blend", "uniform")
SELECTIONS = ("plus", "comma")
BLEND_ALPHA = 0.25
_REDRAWS = 8

__all__ = [
    "CROSSOVERS",
    "SELECTIONS",
    "BlendSpace",
    "seed_population",
    "project_simplex",
    "EAResult",
    "evolve",
]


# ----------------------------------------------------------------------------------------------------------------
# search space


def project_simplex(genome: Sequence[float] | np.ndarray, blocks: int = 1) -> np.ndarray:
    """Clip negatives to 0 and scale each of ``blocks`` equal blocks to sum 1 (an all-zero block becomes uniform)."""
    g = np.clip(np.asarray(genome, dtype=np.float64), 0.0, None)
    if g.ndim != 1 or g.size == 0 or g.size % blocks:
        raise LeancnnError(f"a genome of {g.size} genes cannot be split into {blocks} equal blocks")
    g = g.reshape(blocks, -1)
    s = g.sum(axis=1, keepdims=True)
    g = np.where(s > 0, g / np.where(s > 0, s, 1.0), 1.0 / g.shape[1])
    return g.reshape(-1)


def _candidate_count(candidates: int | Sequence[str]) -> int:
    if isinstance(candidates, (int, np.integer)) and not isinstance(candidates, bool):
        k = int(candidates)
    elif isinstance(candidates, Sequence) and not isinstance(candidates, str):
        k = len(candidates)
    else:
        raise LeancnnError(f"candidates must be a count or a list of criterion names, got {candidates!r}")
    if k < 1:
        raise LeancnnError("there must be at least one candidate criterion")
    return k


def seed_population(candidates: int | Sequence[str], buckets: int = 1, corners: bool = True, uniform: bool = True,
                    extra: Sequence[Sequence[float]] = ()) -> list[np.ndarray]:
    """Initial genomes: each candidate alone (its corner, in every bucket), the uniform blend, then ``extra``.

    Evaluating these first means the search's best blend is at least as good on the fitness as the best single
    candidate (and the uniform blend).
    """
    k = _candidate_count(candidates)
    depth_buckets(["x"], buckets)  # validates buckets
    out = []
    if corners:
        for i in range(k):
            row = np.zeros(k)
            row[i] = 1.0
            out.append(np.tile(row, buckets))
    if uniform and (k > 1 or not corners):
        out.append(np.full(k * buckets, 1.0 / k))
    for g in extra:
        out.append(project_simplex(np.asarray(g, dtype=np.float64), buckets))
    return out


@dataclass(frozen=True)
class BlendSpace:
    """The search space of a blend: candidate criteria × depth buckets; genome <-> :class:`BlendedCriterion`."""

    criteria: tuple[str, ...]
    buckets: int = 1
    normalise: str = "rank"
    clusters: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self):
        crit = tuple(str(c) for c in self.criteria) if not isinstance(self.criteria, str) else ()
        if not crit or len(set(crit)) != len(crit):
            raise LeancnnError(f"criteria must be distinct names, got {self.criteria!r}")
        object.__setattr__(self, "criteria", crit)
        depth_buckets(["x"], self.buckets)
        check_normalisation(self.normalise, BLEND_NORMALISATIONS)
        if self.clusters is not None:
            object.__setattr__(self, "clusters", tuple(tuple(str(c) for c in m) for m in self.clusters))

    @property
    def n_params(self) -> int:
        return len(self.criteria) * self.buckets

    @property
    def blocks(self) -> int:
        return self.buckets

    def weights(self, genome: Sequence[float] | np.ndarray) -> np.ndarray:
        g = np.asarray(genome, dtype=np.float64)
        if g.shape != (self.n_params,):
            raise LeancnnError(f"genome has {g.size} genes; this space needs {self.n_params} "
                               f"({len(self.criteria)} criteria x {self.buckets} bucket(s))")
        return project_simplex(g, self.buckets).reshape(self.buckets, len(self.criteria))

    def criterion(self, genome: Sequence[float] | np.ndarray, name: str = "blend") -> BlendedCriterion:
        return BlendedCriterion(self.criteria, self.weights(genome), normalise=self.normalise, name=name,
                                clusters=self.clusters)

    def genome(self, criterion: BlendedCriterion) -> np.ndarray:
        """The genome of a blended criterion over the same candidates (one bucket is repeated over all buckets)."""
        if set(criterion.criteria) != set(self.criteria):
            raise LeancnnError(f"criterion uses {list(criterion.criteria)}, the space {list(self.criteria)}")
        idx = [criterion.criteria.index(c) for c in self.criteria]
        w = criterion.weights[:, idx]
        if w.shape[0] == 1:
            w = np.repeat(w, self.buckets, axis=0)
        if w.shape[0] != self.buckets:
            raise LeancnnError(f"criterion has {criterion.buckets} buckets, the space {self.buckets}")
        return w.reshape(-1)

    def seed_population(self, corners: bool = True, uniform: bool = True, extra=()) -> list[np.ndarray]:
        return seed_population(self.criteria, self.buckets, corners=corners, uniform=uniform, extra=extra)


# ----------------------------------------------------------------------------------------------------------------
# evolutionary algorithm


@dataclass
class EAResult:
    """The outcome of :func:`evolve`."""

    best_genome: np.ndarray
    best_fitness: float
    history: list[dict]  # per generation (0 = initial population): best so far, population best/mean, evaluations
    evaluated: list[tuple[np.ndarray, float]]  # every fitness call, in order
    wall_time: float
    population: list[np.ndarray] = field(default_factory=list)  # final population, best first
    population_fitness: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return len(self.evaluated)

    def to_dict(self) -> dict:
        def num(x: float):
            return float(x) if math.isfinite(x) else None

        return {
            "best_genome": self.best_genome.tolist(), "best_fitness": num(self.best_fitness),
            "history": [{k: (num(v) if isinstance(v, float) else v) for k, v in h.items()} for h in self.history],
            "evaluations": self.evaluations,
            "evaluated": [[g.tolist(), num(f)] for g, f in self.evaluated],
            "wall_time": self.wall_time, "config": dict(self.config),
        }


_FITNESS: dict[int, Callable] = {}
_TOKENS = itertools.count()


def _call_registered(token: int, genome: np.ndarray) -> float:
    return _to_float(_FITNESS[token](genome))


def _worker_init(parent: int) -> None:
    """Pool workers leave interrupts to the parent: SIGINT (Ctrl-C reaches the whole process group) is ignored,
    SIGTERM kills them (the parent's handler, inherited by fork, would raise inside them), and they die with the
    parent (PR_SET_PDEATHSIG, Linux) if it is killed outright. The parent terminates the pool on any error."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)


def _to_float(value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise LeancnnError(f"the fitness must return a number, got {type(value).__name__}") from None
    return f if math.isfinite(f) else -math.inf


def _check_ea_args(n_params, population, generations, mutation_sigma, mutation_rate, crossover, crossover_rate,
                   elitism, workers, blocks, selection, mutation_decay, cache_decimals):
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not is_int(n_params) or n_params < 1:
        raise LeancnnError(f"n_params must be an integer >= 1, got {n_params!r}")
    if not is_int(blocks) or blocks < 1 or n_params % blocks:
        raise LeancnnError(f"blocks must be an integer >= 1 dividing n_params={n_params}, got {blocks!r}")
    if not is_int(population) or population < 2:
        raise LeancnnError(f"population must be an integer >= 2, got {population!r}")
    if not is_int(generations) or generations < 0:
        raise LeancnnError(f"generations must be an integer >= 0, got {generations!r}")
    if not is_int(elitism) or not 0 <= elitism < population:
        raise LeancnnError(f"elitism must be an integer with 0 <= elitism < population ({population}), got "
                           f"{elitism!r}")
    if not (isinstance(mutation_sigma, (int, float)) and math.isfinite(mutation_sigma) and mutation_sigma >= 0):
        raise LeancnnError(f"mutation_sigma must be a finite number >= 0, got {mutation_sigma!r}")
    if not (isinstance(mutation_decay, (int, float)) and 0 < mutation_decay <= 1):
        raise LeancnnError(f"mutation_decay must be in (0, 1], got {mutation_decay!r}")
    if mutation_rate is not None and not (isinstance(mutation_rate, (int, float)) and 0 <= mutation_rate <= 1):
        raise LeancnnError(f"mutation_rate must be in [0, 1] (or None for 1 / genes per block), got "
                           f"{mutation_rate!r}")
    if crossover not in CROSSOVERS:
        raise LeancnnError(f"unknown crossover {crossover!r}; use one of {', '.join(CROSSOVERS)}")
    if not (isinstance(crossover_rate, (int, float)) and 0 <= crossover_rate <= 1):
        raise LeancnnError(f"crossover_rate must be in [0, 1], got {crossover_rate!r}")
    if selection not in SELECTIONS:
        raise LeancnnError(f"unknown selection {selection!r}; use one of {', '.join(SELECTIONS)}")
    if not is_int(workers) or workers < 1:
        raise LeancnnError(f"workers must be an integer >= 1, got {workers!r}")
    if not is_int(cache_decimals) or not 0 <= cache_decimals <= 15:
        raise LeancnnError(f"cache_decimals must be an integer in [0, 15], got {cache_decimals!r}")


def _genome_key(decimals: int) -> Callable[[np.ndarray], tuple]:
    """The cache key of a genome: its genes rounded to ``decimals`` (``+ 0.0`` makes -0.0 and 0.0 one key)."""

    def key(g: np.ndarray) -> tuple:
        return tuple((np.round(g, decimals) + 0.0).tolist())

    return key


def _initial_population(init, n_params: int, blocks: int, population: int, rng: np.random.Generator,
                        key: Callable) -> list[np.ndarray]:
    """The ``init`` genomes (checked, projected onto the simplex), then flat Dirichlet(1) draws per block up to
    ``population`` genomes; a draw that repeats a genome is redrawn (up to ``_REDRAWS`` times)."""
    pop: list[np.ndarray] = []
    for i, g in enumerate(init or []):
        arr = np.asarray(g, dtype=np.float64)
        if arr.shape != (n_params,):
            raise LeancnnError(f"init genome {i} has shape {arr.shape}, expected ({n_params},)")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise LeancnnError(f"init genome {i} must be finite and >= 0, got {arr.tolist()}")
        pop.append(project_simplex(arr, blocks))
    if len(pop) > population:
        raise LeancnnError(f"init has {len(pop)} genomes but the population is {population}; raise population")
    seen = {key(g) for g in pop}
    block = n_params // blocks
    while len(pop) < population:
        for _ in range(_REDRAWS):
            g = rng.dirichlet(np.ones(block), size=blocks).reshape(-1)
            if key(g) not in seen:
                break
        seen.add(key(g))
        pop.append(g)
    return pop


def _fork_pool(fitness: Callable, token: int, workers: int):
    """A pool of ``workers`` forked processes that inherit ``fitness`` (registered under ``token``), or ``None``
    for one worker or where ``fork`` is not available (with a warning pointing at the caller of :func:`evolve`)."""
    if workers <= 1:
        return None
    if "fork" not in multiprocessing.get_all_start_methods():
        warnings.warn("evolve: the 'fork' start method is not available here; evaluating sequentially",
                      RuntimeWarning, stacklevel=3)
        return None
    _FITNESS[token] = fitness
    return multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))


class _Evaluator:
    """Fitness values of genomes: looked up in the cache (``store``; ``None``: no cache) or computed, in the pool
    when there is one and more than one genome to compute. Logs every fitness call (``evaluated``) and keeps the
    best genome seen, evaluated or from the cache (ties keep the earlier genome)."""

    def __init__(self, fitness: Callable, key: Callable, store: dict | None, pool, token: int):
        self.fitness, self.key, self.store, self.pool, self.token = fitness, key, store, pool, token
        self.evaluated: list[tuple[np.ndarray, float]] = []
        self.best_genome: np.ndarray | None = None
        self.best_fitness = -math.inf

    def __call__(self, genomes: list[np.ndarray]) -> list[float]:
        key, store = self.key, self.store
        if store is None:
            todo = genomes
        else:
            todo, pending = [], set()
            for g in genomes:
                k = key(g)
                if k not in store and k not in pending:
                    pending.add(k)
                    todo.append(g)
        if self.pool is not None and len(todo) > 1:
            values = self.pool.map(functools.partial(_call_registered, self.token), todo, chunksize=1)
        else:
            values = [_to_float(self.fitness(g.copy())) for g in todo]
        for g, f in zip(todo, values):
            self.evaluated.append((g.copy(), f))
            if store is not None:
                store[key(g)] = f
        out = list(values) if store is None else [store[key(g)] for g in genomes]
        for g, f in zip(genomes, out):
            if self.best_genome is None or f > self.best_fitness:  # ties keep the earlier genome
                self.best_genome, self.best_fitness = g.copy(), f
        return out

    def known(self) -> set:
        """The keys of every evaluated genome (none without a cache: then repeats are evaluated again anyway)."""
        return {self.key(g) for g, _ in self.evaluated} if self.store is not None else set()

    def close(self, finished: bool) -> None:
        """Close the pool (``finished``) or terminate it: after an error or an interrupt the workers' unfinished
        evaluations are dropped, not waited for. Unregisters the fitness."""
        if self.pool is not None:
            if finished:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
        _FITNESS.pop(self.token, None)


class _Breeder:
    """Makes one child from a population sorted best first: binary tournaments, crossover, Gaussian mutation,
    projection onto the simplex. Every random draw comes from ``rng``, in a fixed order."""

    def __init__(self, rng: np.random.Generator, n_params: int, blocks: int, rate: float, crossover: str,
                 crossover_rate: float):
        self.rng, self.n_params, self.blocks, self.rate = rng, n_params, blocks, rate
        self.crossover, self.crossover_rate = crossover, crossover_rate

    def tournament(self, n: int) -> int:
        a, b = self.rng.integers(n), self.rng.integers(n)
        return int(min(a, b))  # the population is kept sorted best first (ties: earlier)

    def child(self, parents: list[np.ndarray], sigma: float) -> np.ndarray:
        rng, n_params = self.rng, self.n_params
        p1, p2 = parents[self.tournament(len(parents))], parents[self.tournament(len(parents))]
        child = p1.copy()
        if rng.random() < self.crossover_rate:
            if self.crossover == "blend":
                u = rng.uniform(-BLEND_ALPHA, 1.0 + BLEND_ALPHA)
                child = p1 + u * (p2 - p1)
            else:
                child = np.where(rng.random(n_params) < 0.5, p1, p2)
        mask = rng.random(n_params) < self.rate
        if not mask.any():
            mask[rng.integers(n_params)] = True
        child = child + mask * rng.normal(0.0, sigma, n_params) if sigma > 0 else child
        return project_simplex(child, self.blocks)


def _offspring(pop: list[np.ndarray], population: int, breeder: _Breeder, sigma: float, key: Callable,
               known: set) -> list[np.ndarray]:
    """``population`` children; a child whose key is ``known`` (a current member, a sibling, an evaluated genome)
    is redrawn, up to ``_REDRAWS`` times. ``known`` is extended with the children."""
    children = []
    for _ in range(population):
        for _ in range(_REDRAWS):
            child = breeder.child(pop, sigma)
            if key(child) not in known:
                break
        known.add(key(child))
        children.append(child)
    return children


def _sort(genomes: list[np.ndarray], values: list[float]) -> tuple[list[np.ndarray], list[float]]:
    """Best first; stable: ties keep the earlier genome."""
    order = sorted(range(len(genomes)), key=lambda i: -values[i])
    return [genomes[i] for i in order], [values[i] for i in order]


def _survivors(pop: list[np.ndarray], fit: list[float], children: list[np.ndarray], child_fit: list[float],
               elitism: int, selection: str) -> tuple[list[np.ndarray], list[float]]:
    """The next population, best first: the ``elitism`` best parents, then the best of the other parents and the
    children (``"plus"``) or of the children alone (``"comma"``), to the same size."""
    size = len(pop)
    elite, elite_fit = pop[:elitism], fit[:elitism]
    if selection == "plus":
        rest, rest_fit = _sort(pop[elitism:] + children, fit[elitism:] + child_fit)
    else:
        rest, rest_fit = _sort(children, child_fit)
    return _sort(elite + rest[:size - elitism], elite_fit + rest_fit[:size - elitism])


def _generation_record(gen: int, evaluator: _Evaluator, fit: list[float]) -> dict:
    finite = [f for f in fit if math.isfinite(f)]
    return {"generation": gen, "best": float(evaluator.best_fitness), "population_best": float(fit[0]),
            "mean": float(np.mean(finite)) if finite else -math.inf, "evaluations": len(evaluator.evaluated)}


def evolve(fitness: Callable[[np.ndarray], float], n_params: int, population: int = 16, generations: int = 10,
           mutation_sigma: float = 0.2, mutation_rate: float | None = None, crossover: str = "blend",
           crossover_rate: float = 0.9, elitism: int = 2, seed: int = 0, workers: int = 1,
           init: Sequence[Sequence[float]] | None = None, progress: bool = False, cache: bool | dict = True,
           blocks: int = 1, selection: str = "plus", mutation_decay: float = 1.0,
           cache_decimals: int = 4) -> EAResult:
    """Maximise ``fitness(genome)`` over genomes of ``n_params`` non-negative weights, each of ``blocks`` equal
    blocks on the simplex (see the module docstring for the operators). Returns an :class:`EAResult`."""
    _check_ea_args(n_params, population, generations, mutation_sigma, mutation_rate, crossover, crossover_rate,
                   elitism, workers, blocks, selection, mutation_decay, cache_decimals)
    if not callable(fitness):
        raise LeancnnError(f"fitness must be callable, got {type(fitness).__name__}")
    n_params, blocks = int(n_params), int(blocks)
    rate = (1.0 / (n_params // blocks)) if mutation_rate is None else float(mutation_rate)
    rng = np.random.default_rng(seed)
    config = dict(n_params=n_params, population=population, generations=generations, mutation_sigma=mutation_sigma,
                  mutation_rate=rate, crossover=crossover, crossover_rate=crossover_rate, elitism=elitism, seed=seed,
                  workers=workers, blocks=blocks, selection=selection, mutation_decay=mutation_decay,
                  cache=bool(cache) if not isinstance(cache, dict) else True, cache_decimals=cache_decimals)
    key = _genome_key(cache_decimals)
    store: dict | None = cache if isinstance(cache, dict) else ({} if cache else None)
    pop = _initial_population(init, n_params, blocks, population, rng, key)
    token = next(_TOKENS)
    evaluator = _Evaluator(fitness, key, store, _fork_pool(fitness, token, workers), token)
    breeder = _Breeder(rng, n_params, blocks, rate, crossover, crossover_rate)

    bar = None
    start = time.perf_counter()
    finished = False
    try:
        pop, fit = _sort(pop, evaluator(pop))
        history = [_generation_record(0, evaluator, fit)]
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=generations, desc="blend search", unit="gen")
        sigma = float(mutation_sigma)
        for gen in range(1, generations + 1):
            known = {key(g) for g in pop} | evaluator.known()
            children = _offspring(pop, population, breeder, sigma, key, known)
            pop, fit = _survivors(pop, fit, children, evaluator(children), elitism, selection)
            sigma *= mutation_decay
            history.append(_generation_record(gen, evaluator, fit))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{history[-1]['best']:.4g}", evals=len(evaluator.evaluated))
        finished = True
    finally:
        if bar is not None:
            bar.close()
        evaluator.close(finished)
    wall = time.perf_counter() - start
    return EAResult(best_genome=evaluator.best_genome, best_fitness=float(evaluator.best_fitness), history=history,
                    evaluated=evaluator.evaluated, wall_time=wall, population=[g.copy() for g in pop],
                    population_fitness=list(fit), config=config)
