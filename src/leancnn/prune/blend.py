"""The blended pruning criterion: a weighted sum of normalised criteria, with calibration factors per cluster.

He et al., "Blending Pruning Criteria for Convolutional Neural Networks" (ICANN 2021, arXiv 2107.05033): inside
each criteria cluster (``cluster.py``) the selected "blending candidates" get *calibration factors*, and the blended
criterion is searched with an evolutionary algorithm on validation data (``search.py``). Only the abstract is known;
the design follows ``../shared/reference/pruning_criteria.md`` §2 steps 2, 5, 6 and §7.1. [ours] marks our choices.

Normalisation (:func:`leancnn.prune.normalise.normalise_scores`, within one group, per criterion): criteria live on
unrelated scales (weight norms, |γ|, Taylor products), so each one is mapped before blending by ``normalise``:
``"rank"`` (default, reference §2 step 2: average ranks of ties, scaled to [0, 1]), ``"scale"`` (min-max to [0, 1])
or ``"zscore"``. [ours] A constant vector (or a single channel) carries no ordering: it maps to 0.5 everywhere
under ``"rank"`` and ``"scale"`` and to 0 under ``"zscore"``, so it adds the same amount to every channel and
leaves the blend's ranking to the other criteria.

Blend (:class:`BlendedCriterion`, a :class:`~leancnn.prune.criteria.CompositeCriterion`): ``score_g = Σ_k w_k ·
normalise(score_g,k)``, with ``w ≥ 0`` renormalised to sum to 1. Calibration structure [ours]: with clusters C and
candidates k ∈ C, a per-cluster weight W_C and calibration factors a_k inside the cluster give
``Σ_C W_C Σ_{k∈C} (a_k / Σ_{j∈C} a_j) · s_k`` — linear in the scores, hence exactly one non-negative weight per
candidate, ``w_k = W_C a_k / Σ_{j∈C} a_j``. So a solution is represented as a single weight vector over the
candidates (the flat calibration factors); ``w`` summed over a cluster is that cluster's share and ``w_k`` divided
by it the within-cluster calibration (shown by ``describe()``). The per-cluster form is accepted as input (a list of
``{criterion: factor}`` mappings plus optional cluster weights) and flattened.

Depth buckets [ours, reference §2 step 5 "optionally α per stage or depth bucket"]: ``buckets = B`` splits the
groups, in network order (the score table's key order, or an explicit ``order``), into B contiguous near-equal runs
(group i of n goes to bucket ⌊i·B/n⌋), each with its own weight vector; B = 1 is one vector for the whole network.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import LeancnnError
from .criteria import CompositeCriterion
from .normalise import BLEND_NORMALISATIONS, check_normalisation, normalise_scores

__all__ = ["depth_buckets", "BlendedCriterion"]


# ----------------------------------------------------------------------------------------------------------------
# buckets


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


class BlendedCriterion(CompositeCriterion):
    """A weighted sum of normalised criteria, optionally with one weight vector per depth bucket.

    ``weights``: one non-negative number per criterion; or a (buckets, K) nested list; or a per-cluster structure, a
    list of ``{criterion: calibration factor}`` mappings (one per cluster) combined with ``cluster_weights`` (default
    equal). Weights are renormalised to sum 1 per bucket. ``clusters`` (the criteria clusters the candidates come
    from) only changes :meth:`describe`.
    """

    def __init__(self, criteria: Sequence[str] | None, weights, normalise: str = "rank", name: str | None = None,
                 clusters: Sequence[Sequence[str]] | None = None, cluster_weights: Sequence[float] | None = None):
        check_normalisation(normalise, BLEND_NORMALISATIONS)
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
        self.normalise = normalise
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
                term = wk * normalise_scores(x, self.normalise)
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
        lines = [f"blended criterion {self.name!r}: {self.normalise}-normalised scores, "
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
        return (f"BlendedCriterion({list(self.criteria)}, {np.round(w, 4).tolist()}, normalise={self.normalise!r}, "
                f"name={self.name!r})")

    def to_dict(self) -> dict:
        return {
            "type": "blended_criterion",
            "name": self.name,
            "criteria": list(self.criteria),
            "weights": self.weights[0].tolist() if self.buckets == 1 else self.weights.tolist(),
            "normalise": self.normalise,
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
        unknown = sorted(set(data) - {"type", "name", "criteria", "weights", "normalise", "normalize", "clusters"})
        if unknown:
            raise LeancnnError(f"blended criterion JSON has unknown keys {unknown}")
        # "normalize": the spelling of the files written before one spelling was kept (read, never written)
        return cls(data["criteria"], data["weights"], normalise=data.get("normalise", data.get("normalize", "rank")),
                   name=data.get("name"), clusters=data.get("clusters"))

    def __eq__(self, other) -> bool:
        if not isinstance(other, BlendedCriterion):
            return NotImplemented
        return (self.criteria == other.criteria and self.normalise == other.normalise and self.name == other.name
                and self.weights.shape == other.weights.shape and bool(np.allclose(self.weights, other.weights,
                                                                                 rtol=0, atol=1e-12))
                and self.clusters == other.clusters)

    __hash__ = None  # mutable weights
