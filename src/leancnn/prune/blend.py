"""Blended pruning criteria and the evolutionary search of their weights.

He et al., "Blending Pruning Criteria for Convolutional Neural Networks" (ICANN 2021, arXiv 2107.05033): inside
each criteria cluster (``cluster.py``) the selected "blending candidates" get *calibration factors*, and the blended
criterion is searched with an evolutionary algorithm on validation data. Only the abstract is known; the design
follows ``../shared/reference/pruning_criteria.md`` §2 steps 2, 5, 6 and §7.1. [ours] marks our choices.

Normalisation (:func:`normalize_scores`, within one group, per criterion): criteria live on unrelated scales
(weight norms, |γ|, Taylor products), so each one is mapped before blending:

* ``"rank"`` (default, reference §2 step 2): average ranks of ties, scaled to [0, 1] by (r - 1) / (n - 1);
* ``"scale"``: min-max to [0, 1];
* ``"zscore"``: (x - mean) / std (population std; not bounded).

[ours] A constant vector (or a single channel) carries no ordering: it maps to 0.5 everywhere under ``"rank"`` and
``"scale"`` and to 0 under ``"zscore"``, so it adds the same amount to every channel and leaves the blend's ranking
to the other criteria.

Blend (:class:`BlendedCriterion`): ``score_g = Σ_k w_k · normalise(score_g,k)``, with ``w ≥ 0`` renormalised to sum
to 1. Calibration structure [ours]: with clusters C and candidates k ∈ C, a per-cluster weight W_C and calibration
factors a_k inside the cluster give ``Σ_C W_C Σ_{k∈C} (a_k / Σ_{j∈C} a_j) · s_k`` — linear in the scores, hence
exactly one non-negative weight per candidate, ``w_k = W_C a_k / Σ_{j∈C} a_j``. So a solution is represented as a
single weight vector over the candidates (the flat calibration factors); ``w`` summed over a cluster is that
cluster's share and ``w_k`` divided by it the within-cluster calibration (shown by ``describe()``). The per-cluster
form is accepted as input (a list of ``{criterion: factor}`` mappings plus optional cluster weights) and flattened.

Depth buckets [ours, reference §2 step 5 "optionally α per stage or depth bucket"]: ``buckets = B`` splits the groups,
in network order (the score table's key order, or an explicit ``order``), into B contiguous near-equal runs
(group i of n goes to bucket ⌊i·B/n⌋), each with its own weight vector; B = 1 is one vector for the whole network.
A genome then has B·K genes, one simplex block per bucket.

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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import LeancnnError

NORMALIZATIONS = ("rank", "scale", "zscore")
CROSSOVERS = ("blend", "uniform")
SELECTIONS = ("plus", "comma")
BLEND_ALPHA = 0.25
_REDRAWS = 8

__all__ = [
    "NORMALIZATIONS",
    "CROSSOVERS",
    "SELECTIONS",
    "normalize_scores",
    "depth_buckets",
    "BlendedCriterion",
    "BlendSpace",
    "seed_population",
    "project_simplex",
    "EAResult",
    "evolve",
]


# ----------------------------------------------------------------------------------------------------------------
# normalisation and buckets


def normalize_scores(values: Sequence[float] | np.ndarray, method: str = "rank") -> np.ndarray:
    """One criterion's scores in one group mapped to a common scale: "rank" ([0, 1], ties averaged), "scale"
    (min-max to [0, 1]) or "zscore". A constant vector gives 0.5 ("rank", "scale") or 0 ("zscore")."""
    if method not in NORMALIZATIONS:
        raise LeancnnError(f"unknown normalisation {method!r}; use one of {', '.join(NORMALIZATIONS)}")
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise LeancnnError(f"scores to normalise must be a non-empty 1-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise LeancnnError("scores to normalise contain NaN or inf")
    n = x.size
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.full(n, 0.0 if method == "zscore" else 0.5)
    if method == "rank":
        from scipy.stats import rankdata

        return (rankdata(x, method="average") - 1.0) / (n - 1.0)
    if method == "scale":
        return (x - lo) / (hi - lo)
    std = float(x.std())
    return (x - x.mean()) / std if std > 0 else np.zeros(n)


def depth_buckets(groups: Sequence[str], buckets: int) -> dict[str, int]:
    """Group -> bucket index: ``buckets`` contiguous near-equal runs in the given (network) order."""
    if not isinstance(buckets, (int, np.integer)) or isinstance(buckets, bool) or buckets < 1:
        raise LeancnnError(f"buckets must be an integer >= 1, got {buckets!r}")
    groups = list(groups)
    n = len(groups)
    if len(set(groups)) != n:
        raise LeancnnError("group order lists a group twice")
    return {g: (i * int(buckets)) // n for i, g in enumerate(groups)}


# ----------------------------------------------------------------------------------------------------------------
# blended criterion


def _as_weights(weights, k: int, what: str = "weights") -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise LeancnnError(f"{what} must be numbers (one per criterion, or one row per depth bucket): {e}") from None
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != k or w.shape[0] < 1:
        raise LeancnnError(f"{what} must have {k} entries (one per criterion) or shape (buckets, {k}); got shape "
                           f"{np.asarray(weights).shape}")
    if not np.all(np.isfinite(w)):
        raise LeancnnError(f"{what} contain NaN or inf")
    if np.any(w < 0):
        raise LeancnnError(f"{what} must be >= 0 (calibration factors are non-negative); got {w.tolist()}")
    sums = w.sum(axis=1)
    if np.any(sums <= 0):
        raise LeancnnError(f"{what} of every depth bucket must have a positive sum; bucket(s) "
                           f"{[int(i) for i in np.flatnonzero(sums <= 0)]} are all zero")
    return w / sums[:, None]


def _flatten_clusters(calibration: Sequence[Mapping[str, float]], cluster_weights, criteria):
    """Per-cluster calibration factors (+ cluster weights) -> (criteria, flat weights, clusters)."""
    clusters = [tuple(str(c) for c in m) for m in calibration]
    names = [c for m in clusters for c in m]
    if not clusters or any(not m for m in clusters):
        raise LeancnnError("per-cluster weights must be a non-empty list of non-empty {criterion: factor} mappings")
    if len(set(names)) != len(names):
        raise LeancnnError(f"a criterion appears in two clusters: {names}")
    if cluster_weights is None:
        cw = np.full(len(clusters), 1.0 / len(clusters))
    else:
        cw = np.asarray(cluster_weights, dtype=np.float64)
        if cw.shape != (len(clusters),):
            raise LeancnnError(f"cluster_weights needs {len(clusters)} values (one per cluster), got {cw.shape}")
        if not np.all(np.isfinite(cw)) or np.any(cw < 0):
            raise LeancnnError(f"cluster_weights must be finite and >= 0, got {cw.tolist()}")
    flat: dict[str, float] = {}
    for m, wc in zip(calibration, cw):
        try:
            f = np.array([float(v) for v in m.values()])
        except (TypeError, ValueError):
            raise LeancnnError(f"calibration factors of cluster {list(m)} must be numbers") from None
        if not np.all(np.isfinite(f)) or np.any(f < 0):
            raise LeancnnError(f"calibration factors must be finite and >= 0; cluster {list(m)} has {f.tolist()}")
        f = f / f.sum() if f.sum() > 0 else f  # an all-zero cluster contributes nothing
        for c, v in zip(m, f):
            flat[str(c)] = float(wc * v)
    if criteria is None:
        criteria = names
    else:
        criteria = [str(c) for c in criteria]
        if sorted(criteria) != sorted(names):
            raise LeancnnError(f"criteria {criteria} do not match the criteria of the clusters {names}")
    return criteria, [flat[c] for c in criteria], clusters


class BlendedCriterion:
    """A weighted sum of normalised criteria, optionally with one weight vector per depth bucket.

    ``weights``: one non-negative number per criterion; or a (buckets, K) nested list; or a per-cluster structure, a
    list of ``{criterion: calibration factor}`` mappings (one per cluster) combined with ``cluster_weights`` (default
    equal). Weights are renormalised to sum 1 per bucket. ``clusters`` (the criteria clusters the candidates come
    from) only changes :meth:`describe`.
    """

    def __init__(self, criteria: Sequence[str] | None, weights, normalize: str = "rank", name: str | None = None,
                 clusters: Sequence[Sequence[str]] | None = None, cluster_weights: Sequence[float] | None = None):
        if normalize not in NORMALIZATIONS:
            raise LeancnnError(f"unknown normalisation {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
        if isinstance(weights, Sequence) and weights and all(isinstance(m, Mapping) for m in weights):
            criteria, weights, derived = _flatten_clusters(weights, cluster_weights, criteria)
            clusters = clusters if clusters is not None else derived
        elif cluster_weights is not None:
            raise LeancnnError("cluster_weights only applies to per-cluster weights (a list of {criterion: factor})")
        if criteria is None or isinstance(criteria, str):
            raise LeancnnError("criteria must be a list of criterion names")
        criteria = tuple(str(c) for c in criteria)
        if not criteria or len(set(criteria)) != len(criteria):
            raise LeancnnError(f"criteria must be distinct names, got {list(criteria)}")
        self.criteria: tuple[str, ...] = criteria
        self.weights: np.ndarray = _as_weights(weights, len(criteria))  # (buckets, K), rows sum to 1
        self.normalize = normalize
        self.name = str(name) if name is not None else "blend"
        self.clusters = None if clusters is None else [tuple(str(c) for c in m) for m in clusters]

    # --- structure

    @property
    def buckets(self) -> int:
        return int(self.weights.shape[0])

    @property
    def active(self) -> tuple[str, ...]:
        """The criteria with a positive weight in some bucket: the only ones :meth:`blend` needs."""
        used = self.weights.max(axis=0) > 0
        return tuple(c for c, u in zip(self.criteria, used) if u)

    def weight_of(self, criterion: str, bucket: int = 0) -> float:
        return float(self.weights[bucket, self.criteria.index(criterion)])

    def _cluster_rows(self) -> list[tuple[str, ...]]:
        """The candidates grouped by the cluster they come from (candidates in no cluster stand alone)."""
        if not self.clusters:
            return [(c,) for c in self.criteria]
        rows, seen = [], set()
        for m in self.clusters:
            row = tuple(c for c in self.criteria if c in m)
            if row:
                rows.append(row)
                seen.update(row)
        rows.extend((c,) for c in self.criteria if c not in seen)
        return rows

    # --- scoring

    def blend_group(self, group_scores: Mapping[str, np.ndarray], bucket: int = 0, group: str = "?") -> np.ndarray:
        """The blended score of one group's channels (``group_scores``: {criterion: scores})."""
        if not 0 <= bucket < self.buckets:
            raise LeancnnError(f"bucket {bucket} out of range for {self.buckets} bucket(s)")
        w = self.weights[bucket]
        total, n = None, None
        for c, wk in zip(self.criteria, w):
            if c not in group_scores:
                if wk > 0 or c in self.active:
                    raise LeancnnError(f"group {group!r} has no scores for criterion {c!r} (has "
                                       f"{sorted(group_scores)}); the blend {self.name!r} needs {list(self.active)}")
                continue
            if wk == 0:
                continue
            x = np.asarray(group_scores[c])
            if n is None:
                n = x.size
            elif x.size != n:
                raise LeancnnError(f"group {group!r}: criterion {c!r} has {x.size} scores, others have {n}")
            try:
                term = wk * normalize_scores(x, self.normalize)
            except LeancnnError as e:
                raise LeancnnError(f"group {group!r}, criterion {c!r}: {e}") from None
            total = term if total is None else total + term
        if total is None:  # every weight of this bucket is on criteria that need no scores: impossible (sum 1)
            raise LeancnnError(f"group {group!r}: no criterion with a positive weight")
        return total

    def blend(self, scores: Mapping[str, Mapping[str, np.ndarray]],
              order: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{group: blended per-channel score} (higher = more important).

        ``order`` is the network order of all groups used for the depth buckets (default: the key order of
        ``scores``); it may list more groups than ``scores`` has, so a subset keeps its buckets.
        """
        if not isinstance(scores, Mapping) or not scores:
            raise LeancnnError("scores must be a non-empty dict {group: {criterion: per-channel scores}}")
        order = list(scores) if order is None else [str(g) for g in order]
        missing = [g for g in scores if g not in order]
        if missing:
            raise LeancnnError(f"groups {missing[:5]} are not in the given network order")
        bucket = depth_buckets(order, self.buckets)
        return {g: self.blend_group(scores[g], bucket[g], group=g) for g in scores}

    __call__ = blend

    # --- text and JSON

    def describe(self, digits: int = 3) -> str:
        lines = [f"blended criterion {self.name!r}: {self.normalize}-normalised scores, "
                 f"{self.buckets} depth bucket{'s' if self.buckets > 1 else ''}"]
        rows = self._cluster_rows()
        sources = []
        for row in rows:
            full = next((m for m in self.clusters or () if row[0] in m), row)
            if len(full) > 1:
                sources.append(f"{', '.join(row)} from {{{', '.join(full)}}}")
        if sources:
            lines.append("  candidates from clusters: " + "; ".join(sources))
        for b in range(self.buckets):
            w = dict(zip(self.criteria, self.weights[b]))
            prefix = "  " if self.buckets == 1 else f"  bucket {b + 1}/{self.buckets}"
            if self.buckets > 1:
                where = "shallowest" if b == 0 else "deepest" if b == self.buckets - 1 else "middle"
                prefix += f" ({where}): "
            else:
                prefix += "score = "
            terms = [f"{w[c]:.{digits}f}·{c}" for c in self.criteria if w[c] > 0]
            zeros = [c for c in self.criteria if w[c] == 0]
            lines.append(prefix + " + ".join(terms) + (f"   (weight 0: {', '.join(zeros)})" if zeros else ""))
            if self.clusters:
                for row in rows:
                    share = sum(w[c] for c in row)
                    if share <= 0 or len(row) < 2:
                        continue
                    cal = ", ".join(f"{c} {w[c] / share:.0%}" for c in row)
                    lines.append(f"      cluster {{{', '.join(row)}}}: share {share:.{digits}f}; calibration {cal}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        w = self.weights[0] if self.buckets == 1 else self.weights
        return (f"BlendedCriterion({list(self.criteria)}, {np.round(w, 4).tolist()}, normalize={self.normalize!r}, "
                f"name={self.name!r})")

    def to_dict(self) -> dict:
        return {
            "type": "blended_criterion",
            "name": self.name,
            "criteria": list(self.criteria),
            "weights": self.weights[0].tolist() if self.buckets == 1 else self.weights.tolist(),
            "normalize": self.normalize,
            "clusters": None if self.clusters is None else [list(m) for m in self.clusters],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BlendedCriterion":
        if not isinstance(data, Mapping):
            raise LeancnnError(f"a blended criterion must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("criteria", "weights") if k not in data]
        if missing:
            raise LeancnnError(f"blended criterion JSON lacks {missing} (has {sorted(data)})")
        if data.get("type", "blended_criterion") != "blended_criterion":
            raise LeancnnError(f"not a blended criterion: type {data.get('type')!r}")
        unknown = sorted(set(data) - {"type", "name", "criteria", "weights", "normalize", "clusters"})
        if unknown:
            raise LeancnnError(f"blended criterion JSON has unknown keys {unknown}")
        return cls(data["criteria"], data["weights"], normalize=data.get("normalize", "rank"),
                   name=data.get("name"), clusters=data.get("clusters"))

    def __eq__(self, other) -> bool:
        if not isinstance(other, BlendedCriterion):
            return NotImplemented
        return (self.criteria == other.criteria and self.normalize == other.normalize and self.name == other.name
                and self.weights.shape == other.weights.shape and bool(np.allclose(self.weights, other.weights,
                                                                                 rtol=0, atol=1e-12))
                and self.clusters == other.clusters)

    __hash__ = None  # mutable weights


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
    normalize: str = "rank"
    clusters: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self):
        crit = tuple(str(c) for c in self.criteria) if not isinstance(self.criteria, str) else ()
        if not crit or len(set(crit)) != len(crit):
            raise LeancnnError(f"criteria must be distinct names, got {self.criteria!r}")
        object.__setattr__(self, "criteria", crit)
        depth_buckets(["x"], self.buckets)
        if self.normalize not in NORMALIZATIONS:
            raise LeancnnError(f"unknown normalisation {self.normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
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
        return BlendedCriterion(self.criteria, self.weights(genome), normalize=self.normalize, name=name,
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
    block = n_params // blocks
    rate = (1.0 / block) if mutation_rate is None else float(mutation_rate)
    rng = np.random.default_rng(seed)
    config = dict(n_params=n_params, population=population, generations=generations, mutation_sigma=mutation_sigma,
                  mutation_rate=rate, crossover=crossover, crossover_rate=crossover_rate, elitism=elitism, seed=seed,
                  workers=workers, blocks=blocks, selection=selection, mutation_decay=mutation_decay,
                  cache=bool(cache) if not isinstance(cache, dict) else True, cache_decimals=cache_decimals)

    def key(g: np.ndarray) -> tuple:
        return tuple((np.round(g, cache_decimals) + 0.0).tolist())

    store: dict | None = cache if isinstance(cache, dict) else ({} if cache else None)
    evaluated: list[tuple[np.ndarray, float]] = []
    best: list = [None, -math.inf]  # best genome seen (evaluated or from the cache) and its fitness

    # --- initial population
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
    while len(pop) < population:
        for _ in range(_REDRAWS):
            g = rng.dirichlet(np.ones(block), size=blocks).reshape(-1)
            if key(g) not in seen:
                break
        seen.add(key(g))
        pop.append(g)

    token = next(_TOKENS)
    pool = None
    if workers > 1:
        if "fork" in multiprocessing.get_all_start_methods():
            _FITNESS[token] = fitness
            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init,
                                                            initargs=(os.getpid(),))
        else:
            warnings.warn("evolve: the 'fork' start method is not available here; evaluating sequentially",
                          RuntimeWarning, stacklevel=2)

    def evaluate(genomes: list[np.ndarray]) -> list[float]:
        if store is None:
            todo = genomes
        else:
            todo, pending = [], set()
            for g in genomes:
                k = key(g)
                if k not in store and k not in pending:
                    pending.add(k)
                    todo.append(g)
        if pool is not None and len(todo) > 1:
            values = pool.map(functools.partial(_call_registered, token), todo, chunksize=1)
        else:
            values = [_to_float(fitness(g.copy())) for g in todo]
        for g, f in zip(todo, values):
            evaluated.append((g.copy(), f))
            if store is not None:
                store[key(g)] = f
        out = list(values) if store is None else [store[key(g)] for g in genomes]
        for g, f in zip(genomes, out):
            if best[0] is None or f > best[1]:  # ties keep the earlier genome
                best[0], best[1] = g.copy(), f
        return out

    def tournament(n: int) -> int:
        a, b = rng.integers(n), rng.integers(n)
        return int(min(a, b))  # the population is kept sorted best first (ties: earlier)

    def make_child(parents: list[np.ndarray], sigma: float) -> np.ndarray:
        p1, p2 = parents[tournament(len(parents))], parents[tournament(len(parents))]
        child = p1.copy()
        if rng.random() < crossover_rate:
            if crossover == "blend":
                u = rng.uniform(-BLEND_ALPHA, 1.0 + BLEND_ALPHA)
                child = p1 + u * (p2 - p1)
            else:
                child = np.where(rng.random(n_params) < 0.5, p1, p2)
        mask = rng.random(n_params) < rate
        if not mask.any():
            mask[rng.integers(n_params)] = True
        child = child + mask * rng.normal(0.0, sigma, n_params) if sigma > 0 else child
        return project_simplex(child, blocks)

    def sort(genomes, values):
        order = sorted(range(len(genomes)), key=lambda i: -values[i])  # stable: ties keep the earlier genome
        return [genomes[i] for i in order], [values[i] for i in order]

    bar = None
    start = time.perf_counter()
    finished = False
    try:
        fit = evaluate(pop)
        pop, fit = sort(pop, fit)
        history = []

        def record(gen: int):
            finite = [f for f in fit if math.isfinite(f)]
            history.append({"generation": gen, "best": float(best[1]), "population_best": float(fit[0]),
                            "mean": float(np.mean(finite)) if finite else -math.inf,
                            "evaluations": len(evaluated)})

        record(0)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=generations, desc="blend search", unit="gen")
        sigma = float(mutation_sigma)
        for gen in range(1, generations + 1):
            known = {key(g) for g in pop} | ({key(g) for g, _ in evaluated} if store is not None else set())
            children = []
            for _ in range(population):
                for _ in range(_REDRAWS):
                    child = make_child(pop, sigma)
                    if key(child) not in known:
                        break
                known.add(key(child))
                children.append(child)
            child_fit = evaluate(children)
            elite, elite_fit = pop[:elitism], fit[:elitism]
            if selection == "plus":
                rest, rest_fit = sort(pop[elitism:] + children, fit[elitism:] + child_fit)
            else:
                rest, rest_fit = sort(children, child_fit)
            pop, fit = elite + rest[:population - elitism], elite_fit + rest_fit[:population - elitism]
            pop, fit = sort(pop, fit)
            sigma *= mutation_decay
            record(gen)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{history[-1]['best']:.4g}", evals=len(evaluated))
        finished = True
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            if finished:
                pool.close()
            else:  # an error or an interrupt: the workers' unfinished evaluations are dropped, not waited for
                pool.terminate()
            pool.join()
        _FITNESS.pop(token, None)
    wall = time.perf_counter() - start
    return EAResult(best_genome=best[0], best_fitness=float(best[1]), history=history, evaluated=evaluated,
                    wall_time=wall, population=[g.copy() for g in pop], population_fitness=list(fit), config=config)
