"""Latency statistics: variability, pairwise "A faster than B", rank reversals, ranking agreement, a recommendation.

Yang, Lu and Ren ("A Note on Latency Variability of Deep Neural Networks for Mobile Inference", arXiv 2003.00138,
2020) observe that inference latency varies much more under CPU contention and that which of two models is faster
can flip between contention levels, so the idle mean alone is a poor basis for choosing a model. This module
turns raw per-inference latencies into the numbers that claim needs; the protocol is
``../shared/reference/latency_variability.md`` §3.2 (percentile bootstrap of the median difference, a
practical-equivalence margin, Holm over all tests, Kendall τ between rankings). No reference code exists.

Input. One latency table: a column mapping (a ``dict`` of sequences, a pandas ``DataFrame``, a pyarrow
``Table``) with columns ``condition`` (any hashable id), ``model`` (converted to ``str``), ``latency`` (seconds)
and optionally ``block`` (the randomised block of the interleaved protocol); or a nested mapping
``{condition: {model: latencies}}``. Condition order is first appearance, and the first condition is the
baseline ("idle") unless one is named. Every latency must be finite and > 0. Every function returns plain
``dict``/``list``/``float``/``int``/``str``/``bool``/``None`` values (JSON-serialisable with ``allow_nan=False``).

Definitions.

* Quantiles: numpy's default ``method="linear"`` (Hyndman & Fan type 7): with the sorted sample x_0…x_{n-1} and
  h = (n-1)q, Q(q) = x_⌊h⌋ + (h-⌊h⌋)(x_⌊h⌋+1 - x_⌊h⌋). p90/p99 rest on few tail points: a quantile q is flagged
  ``few_samples`` below MLPerf LoadGen's floors, 64 samples for p90 and 662 for p99 (reference §2.5, §3.2 step 4);
  for other q below ⌈6.5 / min(q, 1-q)⌉ samples [ours: the ~6.5 expected points beyond the quantile that both
  MLPerf floors imply].
* std is the sample standard deviation (ddof=1), CV = std / mean, IQR = Q(0.75) - Q(0.25); ``iqr_rel`` =
  IQR / median is what torch.utils.benchmark warns on (≥ 10 %, ≥ 25 %); ``max_min`` = max / min and
  ``p99_p50`` = Q(0.99) / Q(0.5) as in executorch's stability script.

Confidence intervals [ours where the reference is silent].

* Quantiles (and everything built from them): the **percentile bootstrap** the reference prescribes, with the
  bootstrap replicates of the sample quantile drawn *exactly* and in O(n_boot) rather than O(n_boot·n): the sorted
  resample is x_(⌈n·U_(i)⌉) with U_(1) ≤ … ≤ U_(n) the order statistics of n uniforms, so the two order
  statistics the linear quantile needs are x at U_(k) ~ Beta(k, n+1-k) and U_(k+1) = U_(k) + (1-U_(k))·Beta(1, n-k)
  (uniform order statistics are a Markov chain). This is the same distribution as ``np.quantile(x[idx], q)`` with
  ``idx`` drawn with replacement (the tests check it), at a cost that allows the ≥ 10 000 resamples the reference
  asks for and the 10⁴–10⁵ that Holm over hundreds of tests needs (see below). BCa is not used for quantiles:
  its jackknife acceleration is inconsistent for sample quantiles.
* Mean and CV (smooth statistics, skewed under contention): **BCa** through ``scipy.stats.bootstrap``
  (vectorised). A sample whose values all coincide gets the point interval.

Comparing two models A and B on quantile q (:func:`compare`). θ = ln Q_A(q) - ln Q_B(q) (``margin_kind=
"relative"``, the default) or Δ = Q_A(q) - Q_B(q) (``"absolute"``, seconds). The tie band is |θ| < ln(1+margin)
(neither model is more than ``margin``, default 2 % as in the reference, slower than the other at that quantile)
or |Δ| < margin. From B bootstrap replicates θ*: p_A = (#{θ* ≥ -band} + 1)/(B + 1) tests "A faster beyond the
margin", p_B = (#{θ* ≤ band} + 1)/(B + 1) the reverse, and the two-sided p = min(1, 2·min(p_A, p_B)). The
verdict is "A faster" / "B faster" when p ≤ α = 1 - confidence (which is, up to Monte-Carlo resolution, the
percentile CI lying wholly beyond the tie band on that side) and "tie/undecided" otherwise. A p-value is never
below 2/(B + 1): :func:`pairwise` picks B so that this floor is well under α/m for its m tests.

Resampling units. By default each model's sample is resampled on its own (iid). The interleaved protocol runs
the models of a condition in randomised blocks so that slow drift hits all alike; independent resampling then
ignores the positive covariance drift induces between Q_A and Q_B, which widens the CI of their difference
(conservative), but it also ignores serial correlation within a model's samples (anti-conservative when
contention is bursty). ``blocks=True`` (or ``blocks_a``/``blocks_b``) uses the **block-paired bootstrap**
instead: whole blocks are resampled, the same draws for every model of the condition, so both effects are kept.
It costs O(n_boot·n) per model rather than O(n_boot) (about 3x the iid time on the grid below); the tests show
it narrows the CI when blocks share a drift and matches the iid bootstrap with one latency per block.

Speed: :func:`pairwise` on 8 models × 12 conditions × 500 latencies × 2 quantiles (672 tests, 53 760
resamples each) takes 2-4 s on one core of the shared 2-core test machine.

Multiple testing. :func:`pairwise` makes every test (conditions × model pairs × quantiles) and Holm-adjusts all
their p-values together (step-down, :func:`holm`), so P(any false "A faster" claim) ≤ α under any dependence.
A rank reversal (:func:`rank_reversals`) needs Holm-significant, opposite verdicts in two conditions; a false
reversal implies a false claim, so reversals inherit the same bound with no further correction.
:func:`order_agreement` classifies, for conditions matched as the same setting (e.g. on two machines), every
order as holding, reversing or unsettled from the same Holm verdicts, under the same bound.

Recommendation (:func:`recommend`): ``rule="minimax"`` (default) picks the model whose worst quantile over all
conditions is smallest; ``"mean_rank"`` the best average rank (1 = fastest) over conditions; ``"regret"`` the
smallest worst-case slowdown relative to the fastest model of each condition (scale-free when conditions differ
in batch size). It says whether the pick differs from the model with the lowest mean in the baseline condition.
These are point estimates: :func:`pairwise` says whether the gaps are significant.

Degenerate cases: fewer than 2 samples, an empty table, a condition with a single model, quantile / confidence /
alpha outside (0, 1), NaN, infinite, zero or negative latencies raise ``ValueError`` naming the argument. Kendall
τ between two conditions sharing fewer than 2 models is ``None``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats as sst

__all__ = [
    "VERDICTS", "quantile_label", "min_samples", "summarize", "summarize_table", "compare", "holm", "pairwise",
    "rank_reversals", "order_agreement", "rankings", "kendall_tau", "recommend", "latency_cells", "auto_n_boot",
]

VERDICTS = ("A faster", "B faster", "tie/undecided")
QUANTILE_METHOD = "linear"
MLPERF_MIN_SAMPLES = {0.9: 64, 0.99: 662}  # LoadGen floors (mlcommons/inference loadgen), reference §2.5
RULES = ("minimax", "mean_rank", "regret")
MAX_AUTO_BOOT = 200_000

_BOOTSTRAP_RNG_KW = "rng" if "rng" in inspect.signature(sst.bootstrap).parameters else "random_state"


# ------------------------------------------------------------------------------------------------ checks


def _check_unit(value: float, name: str) -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) \
            or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _check_n_boot(n_boot: int, name: str = "n_boot") -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"{name} must be an integer >= 100, got {n_boot!r}")
    return int(n_boot)


def _check_margin(margin: float, margin_kind: str) -> tuple[float, str]:
    if margin_kind not in ("relative", "absolute"):
        raise ValueError(f"margin_kind must be 'relative' (a fraction of the compared quantile) or 'absolute' "
                         f"(seconds), got {margin_kind!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)) \
            or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    return float(margin), margin_kind


def _check_samples(samples: Any, name: str, min_n: int = 2) -> np.ndarray:
    """A 1-D float64 copy of positive, finite latencies, or ValueError naming ``name``."""
    try:
        x = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of latencies in seconds, got {type(samples).__name__}") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if x.size < min_n:
        what = "is empty" if x.size == 0 else f"holds {x.size} latency"
        raise ValueError(f"{name} {what}; at least {min_n} latencies are needed")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} infinite "
                         f"values; latencies must be finite")
    if (x <= 0).any():
        raise ValueError(f"{name} contains {int((x <= 0).sum())} latencies <= 0 (smallest {x.min():.6g}); "
                         f"latencies are durations in seconds and must be positive")
    return x


def _check_quantiles(quantiles: Any, name: str = "quantiles") -> tuple[float, ...]:
    if isinstance(quantiles, (int, float, np.floating)):
        quantiles = (quantiles,)
    qs = tuple(_check_unit(q, f"{name} entry") for q in quantiles)
    if not qs:
        raise ValueError(f"{name} must name at least one quantile in (0, 1)")
    if len(set(qs)) != len(qs):
        raise ValueError(f"{name} must not repeat a quantile, got {list(qs)}")
    return qs


# ------------------------------------------------------------------------------------------------ small helpers


def quantile_label(q: float) -> str:
    """``0.5 -> "median"``, ``0.99 -> "p99"``, ``0.999 -> "p99.9"``."""
    q = _check_unit(q, "quantile")
    return "median" if q == 0.5 else f"p{round(100 * q, 6):g}"


def min_samples(q: float) -> int:
    """Samples below which the q-quantile is flagged ``few_samples``: MLPerf's 64 (p90) and 662 (p99), otherwise
    ⌈6.5 / min(q, 1 - q)⌉."""
    q = _check_unit(q, "quantile")
    for known, n in MLPERF_MIN_SAMPLES.items():
        if math.isclose(q, known):
            return n
    return math.ceil(6.5 / min(q, 1.0 - q))


def _q(x: np.ndarray, q) -> Any:
    return np.quantile(x, q, method=QUANTILE_METHOD)


def _pair(lo: float, hi: float) -> list[float]:
    return [float(lo), float(hi)]


def _rep_quantiles(sorted_x: np.ndarray, q: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` draws of the linear-interpolation q-quantile of an iid resample of ``sorted_x`` (exact
    order-statistic sampling, see the module docstring)."""
    n = sorted_x.size
    h = (n - 1) * q
    lo = math.floor(h)
    g = h - lo
    k = lo + 1  # 1-based rank of the lower order statistic
    u = rng.beta(k, n + 1 - k, size=n_boot)
    i = np.clip(np.ceil(n * u).astype(np.intp) - 1, 0, n - 1)
    low = sorted_x[i]
    if g == 0.0 or k >= n:
        return low
    u2 = u + (1.0 - u) * rng.beta(1.0, n - k, size=n_boot)
    j = np.clip(np.ceil(n * u2).astype(np.intp) - 1, 0, n - 1)
    return low + g * (sorted_x[j] - low)


def _block_counts(n_blocks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n_blocks`` blocks is drawn in each of ``n_boot`` block resamples: ``[K, n_boot]``."""
    counts = rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=n_boot)
    return np.ascontiguousarray(counts.T, dtype=np.int32)


def _rep_quantiles_blocks(x: np.ndarray, codes: np.ndarray, counts: np.ndarray,
                          qs: Sequence[float]) -> np.ndarray:
    """Linear quantiles of block resamples given the block ``counts`` ``[K, n_boot]``: ``[len(qs), n_boot]``.

    An observation of block b appears counts[b] times in a resample, so the r-th smallest value of the resample
    is the first x (sorted) whose cumulative weight reaches r: found by a bisection run on all resamples at once.
    The cumulative weights are summed row by row over the sorted observations (``np.cumsum`` along an axis is
    ~20x slower here)."""
    order = np.argsort(x, kind="stable")
    xs, cs = x[order], codes[order]
    n, n_boot = xs.size, counts.shape[1]
    if int(counts.shape[0]) * int(np.bincount(cs).max()) >= 2**31:
        raise ValueError("too many latencies per block for the block bootstrap's int32 weights")
    out = np.empty((len(qs), n_boot))
    step = max(1, (1 << 22) // n)  # [n, step] int32 work array of ~16 MB
    steps = max(1, math.ceil(math.log2(n)) + 1)
    for s in range(0, n_boot, step):
        cw = counts[:, s:s + step][cs]  # [n, rows]: the weight of each sorted observation in each resample
        for i in range(1, n):
            np.add(cw[i], cw[i - 1], out=cw[i])
        rows = np.arange(cw.shape[1])
        total = cw[-1].astype(np.float64)

        def first_reaching(rank: np.ndarray) -> np.ndarray:
            lo, hi = np.zeros(rows.size, dtype=np.intp), np.full(rows.size, n - 1, dtype=np.intp)
            for _ in range(steps):
                mid = (lo + hi) // 2
                ok = cw[mid, rows] >= rank
                hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
            return lo

        for j, q in enumerate(qs):
            h = (total - 1) * q
            lo = np.floor(h)
            low = xs[first_reaching(lo + 1)]
            high = xs[first_reaching(np.minimum(lo + 2, total))]
            out[j, s:s + step] = low + (h - lo) * (high - low)
    return out


def _block_codes(blocks: Any, n: int, name: str) -> tuple[list, np.ndarray]:
    labels = _to_list(blocks)
    if len(labels) != n:
        raise ValueError(f"{name} must give one block label per latency ({n}), got {len(labels)}")
    uniq = list(dict.fromkeys(labels))
    index = {b: i for i, b in enumerate(uniq)}
    return uniq, np.fromiter((index[b] for b in labels), dtype=np.intp, count=n)


# ------------------------------------------------------------------------------------------------ one sample


def summarize(samples: Any, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Variability statistics of one sample of latencies (seconds) with bootstrap CIs.

    Returns ``n, mean, std, cv, median, p90, p99, iqr, iqr_rel, min, max, max_min, p99_p50``, ``ci`` (a
    ``[low, high]`` for each of mean, median, p90, p99, cv at ``confidence``), ``few_samples`` (p90/p99 below the
    MLPerf floors: their CIs rest on a handful of points) and the methods used. Deterministic for a given seed.
    """
    x = _check_samples(samples, "samples")
    confidence = _check_unit(confidence, "confidence")
    n_boot = _check_n_boot(n_boot)
    xs = np.sort(x)
    n = xs.size
    mean, std = float(xs.mean()), float(xs.std(ddof=1)) if xs[0] != xs[-1] else 0.0
    p25, median, p75, p90, p99 = (float(v) for v in _q(xs, [0.25, 0.5, 0.75, 0.9, 0.99]))
    alpha = 1.0 - confidence
    rng = np.random.default_rng(seed)
    ci: dict[str, list[float]] = {}
    for name, q in (("median", 0.5), ("p90", 0.9), ("p99", 0.99)):
        ci[name] = _pair(*_q(_rep_quantiles(xs, q, n_boot, rng), [alpha / 2, 1 - alpha / 2]))
    if xs[0] == xs[-1]:
        ci["mean"], ci["cv"] = _pair(mean, mean), _pair(0.0, 0.0)
    else:
        def mean_cv(s, axis=-1):
            m = s.mean(axis=axis)
            return np.stack([m, s.std(axis=axis, ddof=1) / m])

        res = sst.bootstrap((x,), mean_cv, n_resamples=n_boot, vectorized=True, method="BCa",
                            confidence_level=confidence, batch=max(1, (1 << 21) // n), **{_BOOTSTRAP_RNG_KW: rng})
        lo, hi = res.confidence_interval
        ci["mean"], ci["cv"] = _pair(lo[0], hi[0]), _pair(lo[1], hi[1])
    return {
        "n": n, "mean": mean, "std": std, "cv": std / mean, "median": median, "p90": p90, "p99": p99,
        "iqr": p75 - p25, "iqr_rel": (p75 - p25) / median, "min": float(xs[0]), "max": float(xs[-1]),
        "max_min": float(xs[-1] / xs[0]), "p99_p50": p99 / median, "ci": ci, "confidence": confidence,
        "n_boot": n_boot, "few_samples": {"p90": n < min_samples(0.9), "p99": n < min_samples(0.99)},
        "quantile_method": QUANTILE_METHOD,
        "ci_method": {"quantiles": "percentile bootstrap (exact order-statistic sampling)",
                      "mean_cv": "BCa bootstrap (scipy.stats.bootstrap)"},
    }


# ------------------------------------------------------------------------------------------------ two samples


def _decide(est_a: float, est_b: float, rep_a: tuple[np.ndarray, np.ndarray], rep_b: tuple[np.ndarray, np.ndarray],
            margin: float, margin_kind: str, alpha: float) -> dict:
    """The test of one pair from its (replicates, log replicates) (module docstring, "Comparing two models")."""
    (rep_a, log_ra), (rep_b, log_rb) = rep_a, rep_b
    log_ratio_star = log_ra - log_rb
    delta_star = rep_a - rep_b
    if margin_kind == "relative":
        theta_star, band = log_ratio_star, math.log1p(margin)
    else:
        theta_star, band = delta_star, margin
    n_boot = theta_star.size
    p_a = (np.count_nonzero(theta_star >= -band) + 1) / (n_boot + 1)
    p_b = (np.count_nonzero(theta_star <= band) + 1) / (n_boot + 1)
    p = min(1.0, 2.0 * min(p_a, p_b))
    verdict = VERDICTS[2] if p > alpha else (VERDICTS[0] if p_a < p_b else VERDICTS[1])
    probs = [alpha / 2, 1 - alpha / 2]
    lr_lo, lr_hi = _q(log_ratio_star, probs)
    return {
        "estimate_a": float(est_a), "estimate_b": float(est_b),
        "delta": float(est_a - est_b), "delta_ci": _pair(*_q(delta_star, probs)),
        "ratio": float(est_a / est_b), "ratio_ci": _pair(math.exp(lr_lo), math.exp(lr_hi)),
        "log_ratio": float(math.log(est_a / est_b)), "log_ratio_se": float(log_ratio_star.std(ddof=1)),
        "p_a_faster": float(p_a), "p_b_faster": float(p_b), "p_value": float(p), "verdict": verdict,
    }


def _prob_faster(xa: np.ndarray, xb: np.ndarray) -> float:
    """P(L_A < L_B) + P(L_A = L_B)/2 over all (a, b) pairs: 1 - U_A/(n_A·n_B) with U_A Mann–Whitney's U of A."""
    u = sst.mannwhitneyu(xa, xb, alternative="two-sided", method="asymptotic").statistic
    return float(1.0 - u / (xa.size * xb.size))


def compare(a: Any, b: Any, quantile: float = 0.5, margin: float = 0.02, margin_kind: str = "relative",
            confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0, blocks_a: Any = None,
            blocks_b: Any = None) -> dict:
    """Is A faster than B at ``quantile``, beyond the tie ``margin``? Bootstrap CI of the difference and ratio.

    ``verdict`` is one of :data:`VERDICTS`; ``p_value`` is two-sided (``p_a_faster`` / ``p_b_faster`` are the
    one-sided ones). ``prob_a_faster`` is the probability of superiority P(L_A < L_B) (ties count half; the
    Mann–Whitney U / (n_A·n_B) of the reference §3.2), how often one inference of A beats one of B: a point
    estimate, not part of the verdict. Pass ``blocks_a`` and ``blocks_b`` (the block label of every latency; both samples must
    cover the same blocks) for the block-paired bootstrap.
    """
    xa, xb = _check_samples(a, "a"), _check_samples(b, "b")
    q = _check_unit(quantile, "quantile")
    margin, margin_kind = _check_margin(margin, margin_kind)
    confidence = _check_unit(confidence, "confidence")
    n_boot = _check_n_boot(n_boot)
    if (blocks_a is None) != (blocks_b is None):
        raise ValueError("blocks_a and blocks_b must be given together (the block-paired bootstrap needs both)")
    if blocks_a is None:
        rep_a = _rep_quantiles(np.sort(xa), q, n_boot, np.random.default_rng([seed, 0]))
        rep_b = _rep_quantiles(np.sort(xb), q, n_boot, np.random.default_rng([seed, 1]))
        resampling = "iid"
    else:
        labels_a, codes_a = _block_codes(blocks_a, xa.size, "blocks_a")
        labels_b, codes_b = _block_codes(blocks_b, xb.size, "blocks_b")
        if set(labels_a) != set(labels_b):
            raise ValueError(f"blocks_a and blocks_b must hold the same block labels for a paired bootstrap; "
                             f"only in a: {sorted(map(str, set(labels_a) - set(labels_b)))[:5]}, only in b: "
                             f"{sorted(map(str, set(labels_b) - set(labels_a)))[:5]}")
        index = {lab: i for i, lab in enumerate(labels_a)}
        codes_b = np.array([index[lab] for lab in labels_b], dtype=np.intp)[codes_b]
        counts = _block_counts(len(labels_a), n_boot, np.random.default_rng(seed))
        rep_a = _rep_quantiles_blocks(xa, codes_a, counts, [q])[0]
        rep_b = _rep_quantiles_blocks(xb, codes_b, counts, [q])[0]
        resampling = "blocks"
    out = {"quantile": q, "statistic": quantile_label(q), "n_a": int(xa.size), "n_b": int(xb.size),
           "prob_a_faster": _prob_faster(xa, xb)}
    out.update(_decide(_q(xa, q), _q(xb, q), (rep_a, np.log(rep_a)), (rep_b, np.log(rep_b)), margin, margin_kind,
                       1.0 - confidence))
    out.update({"margin": margin, "margin_kind": margin_kind, "confidence": confidence, "alpha": 1.0 - confidence,
                "n_boot": n_boot, "resampling": resampling,
                "few_samples": bool(min(xa.size, xb.size) < min_samples(q))})
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values, in the input order.

    With p sorted ascending, p_adj(i) = max_{j ≤ i} min(1, (m - j + 1)·p(j)); rejecting p_adj ≤ α keeps the
    family-wise error rate ≤ α under any dependence. (scipy's ``false_discovery_control`` is Benjamini–Hochberg,
    which controls the FDR, not the FWER.)
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    if p.size and (np.isnan(p).any() or (p < 0).any() or (p > 1).any()):
        raise ValueError("p_values must lie in [0, 1] (no NaN)")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [float(v) for v in out]


# ------------------------------------------------------------------------------------------------ tables


def _to_list(column: Any) -> list:
    if hasattr(column, "to_pylist"):  # pyarrow
        return column.to_pylist()
    if hasattr(column, "tolist"):  # numpy, pandas
        return column.tolist()
    return list(column)


def _is_columnar(table: Any) -> bool:
    if isinstance(table, Mapping):
        return "latency" in table and not isinstance(table["latency"], Mapping)
    names = getattr(table, "column_names", None)  # pyarrow
    if names is None:
        names = getattr(table, "columns", None)  # pandas
    return names is not None and "latency" in list(names)


def latency_cells(table: Any, blocks: bool = False) -> dict:
    """``{condition: {model: latencies}}`` (or ``{condition: {model: (latencies, block labels)}}`` with
    ``blocks=True``) from either accepted table form, checked; conditions and models in first-appearance order."""
    if not _is_columnar(table):
        if not isinstance(table, Mapping) or not table:
            raise ValueError("table must be a column mapping / DataFrame with columns condition, model, latency"
                             f"[, block] or a non-empty {{condition: {{model: latencies}}}} mapping, got "
                             f"{type(table).__name__}{' (empty)' if isinstance(table, Mapping) else ''}")
        if blocks:
            raise ValueError("table: blocks=True needs the column form with a 'block' column")
        cells = {}
        for cond, models in table.items():
            if not isinstance(models, Mapping) or not models:
                raise ValueError(f"table[{cond!r}] must map model names to latencies, got {type(models).__name__}"
                                 f"{' (empty)' if isinstance(models, Mapping) else ''}")
            cells[cond] = {str(m): _check_samples(v, f"table[{cond!r}][{str(m)!r}]") for m, v in models.items()}
        return cells
    try:
        conds, models, lat = (_to_list(table[k]) for k in ("condition", "model", "latency"))
        blk = _to_list(table["block"]) if blocks else None
    except (KeyError, TypeError, IndexError):
        need = "condition, model, latency" + (", block" if blocks else "")
        raise ValueError(f"table must have the columns {need}") from None
    n = len(lat)
    if n == 0:
        raise ValueError("table is empty")
    if len(conds) != n or len(models) != n or (blk is not None and len(blk) != n):
        raise ValueError("table columns condition, model, latency" + (", block" if blocks else "")
                         + " must have the same length")
    values = np.asarray(lat, dtype=np.float64)
    groups: dict = {}
    for i, (c, m) in enumerate(zip(conds, models)):
        groups.setdefault(c, {}).setdefault(str(m), []).append(i)
    cells = {}
    for c, per_model in groups.items():
        cells[c] = {}
        for m, rows in per_model.items():
            x = _check_samples(values[rows], f"table latency of condition {c!r}, model {m!r}")
            cells[c][m] = (x, [blk[i] for i in rows]) if blocks else x
    return cells


def _models_of(cells: dict) -> list[str]:
    return list(dict.fromkeys(m for per_model in cells.values() for m in per_model))


def summarize_table(table: Any, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """:func:`summarize` for every (condition, model) cell: a list of records with ``condition`` and ``model``."""
    cells = latency_cells(table)
    out = []
    for ci, (cond, per_model) in enumerate(cells.items()):
        for mi, (model, x) in enumerate(per_model.items()):
            rec = {"condition": cond, "model": model}
            rec.update(summarize(x, confidence=confidence, n_boot=n_boot, seed=seed + 7919 * ci + mi))
            out.append(rec)
    return out


def auto_n_boot(n_tests: int, alpha: float) -> int:
    """Resamples for ``n_tests`` Holm-corrected tests: the p-value floor 2/(B+1) at most α/(2·n_tests), and at
    least the reference's 10 000 (capped at 200 000)."""
    return int(min(MAX_AUTO_BOOT, max(10_000, math.ceil(4 * n_tests / alpha))))


def pairwise(table: Any, quantiles: Sequence[float] = (0.5, 0.99), alpha: float = 0.05, margin: float = 0.02,
             margin_kind: str = "relative", n_boot: int | None = None, seed: int = 0, blocks: bool = False) -> dict:
    """Every model pair in every condition at every quantile, tested as in :func:`compare`, Holm over them all.

    Returns ``tests``: one record per (condition, pair (a, b) in model order, quantile) with the fields of
    :func:`compare` plus ``condition, a, b, faster`` (a model name or ``None``), ``p_holm``, ``verdict_holm`` and
    ``significant`` (Holm-adjusted p ≤ ``alpha``); and the settings, ``n_tests``, ``p_floor`` and
    ``holm_limited`` (true when the bootstrap cannot resolve p-values small enough for Holm: raise ``n_boot``).
    CIs are per test at confidence 1 - alpha. ``n_boot=None`` picks :func:`auto_n_boot`.
    """
    qs = _check_quantiles(quantiles)
    alpha = _check_unit(alpha, "alpha")
    margin, margin_kind = _check_margin(margin, margin_kind)
    cells = latency_cells(table, blocks=blocks)
    models = _models_of(cells)
    if len(models) < 2:
        raise ValueError(f"table must hold at least 2 models to compare, got {models}")
    for cond, per_model in cells.items():
        if len(per_model) < 2:
            raise ValueError(f"table: condition {cond!r} has only the model {list(per_model)}; pairwise "
                             f"comparisons need at least 2 models in every condition")
    n_tests = sum(len(pm) * (len(pm) - 1) // 2 for pm in cells.values()) * len(qs)
    n_boot = auto_n_boot(n_tests, alpha) if n_boot is None else _check_n_boot(n_boot)
    tests = []
    for ci, (cond, per_model) in enumerate(cells.items()):
        names = list(per_model)
        if blocks:
            labels = list(dict.fromkeys(b for _, blk in per_model.values() for b in blk))
            index = {b: i for i, b in enumerate(labels)}
            for m, (_, blk) in per_model.items():
                if len(set(blk)) != len(labels):
                    raise ValueError(f"table: model {m!r} in condition {cond!r} is missing from "
                                     f"{len(labels) - len(set(blk))} of the condition's {len(labels)} blocks; the "
                                     f"block-paired bootstrap needs every model in every block")
            counts = _block_counts(len(labels), n_boot, np.random.default_rng([seed, ci]))
            reps = {m: [(r, np.log(r)) for r in
                        _rep_quantiles_blocks(x, np.array([index[b] for b in blk], dtype=np.intp), counts, qs)]
                    for m, (x, blk) in per_model.items()}
            data = {m: x for m, (x, _) in per_model.items()}
        else:
            data = per_model
            reps = {}
            for mi, (m, x) in enumerate(per_model.items()):
                rng = np.random.default_rng([seed, ci, mi])
                xs = np.sort(x)
                reps[m] = [(r, np.log(r)) for r in (_rep_quantiles(xs, q, n_boot, rng) for q in qs)]
        prob = {(a, b): _prob_faster(data[a], data[b]) for a, b in combinations(names, 2)}
        for qi, q in enumerate(qs):
            est = {m: float(_q(x, q)) for m, x in data.items()}
            for a, b in combinations(names, 2):
                rec = {"condition": cond, "a": a, "b": b, "quantile": q, "statistic": quantile_label(q),
                       "n_a": int(data[a].size), "n_b": int(data[b].size), "prob_a_faster": prob[a, b]}
                rec.update(_decide(est[a], est[b], reps[a][qi], reps[b][qi], margin, margin_kind, alpha))
                rec["few_samples"] = bool(min(data[a].size, data[b].size) < min_samples(q))
                tests.append(rec)
    for rec, p_adj in zip(tests, holm([t["p_value"] for t in tests])):
        significant = p_adj <= alpha
        rec["p_holm"] = p_adj
        rec["significant"] = bool(significant)
        rec["verdict_holm"] = rec["verdict"] if significant else VERDICTS[2]
        rec["faster"] = (rec["a"] if rec["verdict_holm"] == VERDICTS[0] else rec["b"]) if significant else None
    p_floor = 2.0 / (n_boot + 1)
    holm_limited = p_floor > alpha / max(n_tests, 1)
    if holm_limited:
        warnings.warn(f"pairwise: with n_boot={n_boot} no p-value falls below {p_floor:.2g}, above the smallest "
                      f"Holm threshold alpha/{n_tests} = {alpha / n_tests:.2g}; raise n_boot (or leave it None)",
                      stacklevel=2)
    return {"alpha": alpha, "confidence": 1.0 - alpha, "quantiles": list(qs), "margin": margin,
            "margin_kind": margin_kind, "n_boot": n_boot, "resampling": "blocks" if blocks else "iid",
            "n_tests": len(tests), "p_floor": p_floor, "holm_limited": bool(holm_limited),
            "conditions": list(cells), "models": models, "tests": tests}


def rank_reversals(results: dict, quantile: float | None = None) -> list[dict]:
    """Pairs whose order is Holm-significant in two conditions and opposite, from :func:`pairwise`'s result.

    One record per (pair, quantile, condition_1 before condition_2 in table order): the faster model and the
    ratio / difference with CIs in each condition, both Holm p-values, and the interaction: the change of the log
    ratio ln(Q_A/Q_B) from condition 1 to 2 with a normal-approximation CI from the two bootstrap SEs (the
    conditions are resampled independently).
    """
    if not isinstance(results, Mapping) or "tests" not in results:
        raise ValueError("results must be the dict returned by pairwise()")
    q_filter = None if quantile is None else _check_unit(quantile, "quantile")
    z = float(sst.norm.ppf(1 - results["alpha"] / 2))
    conditions = list(results["conditions"])
    by_key: dict = {}
    for t in results["tests"]:
        if t["significant"] and (q_filter is None or math.isclose(t["quantile"], q_filter)):
            by_key.setdefault((t["a"], t["b"], t["quantile"]), []).append((conditions.index(t["condition"]), t))
    out = []
    for (a, b, q), hits in by_key.items():
        hits.sort(key=lambda h: h[0])
        for (_, t1), (_, t2) in combinations(hits, 2):
            if t1["faster"] == t2["faster"]:
                continue
            change = t2["log_ratio"] - t1["log_ratio"]
            half = z * math.hypot(t1["log_ratio_se"], t2["log_ratio_se"])
            out.append({
                "a": a, "b": b, "quantile": q, "statistic": quantile_label(q),
                "condition_1": t1["condition"], "condition_2": t2["condition"],
                "faster_1": t1["faster"], "faster_2": t2["faster"],
                "ratio_1": t1["ratio"], "ratio_ci_1": t1["ratio_ci"], "ratio_2": t2["ratio"],
                "ratio_ci_2": t2["ratio_ci"], "delta_1": t1["delta"], "delta_ci_1": t1["delta_ci"],
                "delta_2": t2["delta"], "delta_ci_2": t2["delta_ci"], "p_holm_1": t1["p_holm"],
                "p_holm_2": t2["p_holm"], "log_ratio_change": change,
                "log_ratio_change_ci": [change - half, change + half],
            })
    return out


def order_agreement(results: dict, matches: Sequence[tuple[Hashable, Hashable]],
                    quantile: float | None = None) -> list[dict]:
    """Does each model order of one condition hold in its matched condition? From :func:`pairwise`'s result.

    ``matches`` pairs conditions that describe the same setting measured twice (e.g. the same load, threads and
    backend on two machines). For every match, model pair tested in both conditions and quantile, ``agreement``
    is "holds" (Holm-significant in both, the same model faster), "reverses" (Holm-significant in both, opposite
    models faster: these are :func:`rank_reversals` restricted to the matches) or "unsettled" (tie/undecided in one
    or both; ``settled`` says where a verdict was reached: "both", "1 only", "2 only" or "neither"). "unsettled"
    does not claim equivalence: it is a tie within the margin *or* too little evidence. Every verdict used is one
    of the tests Holm-adjusted together, so P(any false "holds" or "reverses") ≤ α with no further correction.

    Each record: ``condition_1, condition_2, a, b`` (in condition 1's test order), ``quantile, statistic,
    agreement, settled, faster_1, faster_2`` (None where undecided), ``ratio_*`` / ``ratio_ci_*`` (Q_a/Q_b, in the
    same orientation in both conditions), ``p_holm_*``, ``same_direction`` (both point estimates on the same side
    of 1, significant or not) and, as in :func:`rank_reversals`, ``log_ratio_change`` (condition 2 minus 1) with
    a normal-approximation CI.
    """
    if not isinstance(results, Mapping) or "tests" not in results:
        raise ValueError("results must be the dict returned by pairwise()")
    q_filter = None if quantile is None else _check_unit(quantile, "quantile")
    z = float(sst.norm.ppf(1 - results["alpha"] / 2))
    by_cond: dict = {}
    for t in results["tests"]:
        if q_filter is None or math.isclose(t["quantile"], q_filter):
            by_cond.setdefault(t["condition"], {})[frozenset((t["a"], t["b"])), t["quantile"]] = t
    out = []
    for c1, c2 in matches:
        if c1 == c2:
            raise ValueError(f"matches pairs condition {c1!r} with itself")
        t2s = by_cond.get(c2, {})
        for key, t1 in by_cond.get(c1, {}).items():
            t2 = t2s.get(key)
            if t2 is None:
                continue
            flip = t2["a"] != t1["a"]  # condition 2 tested (b, a): turn its ratio round
            lr2 = -t2["log_ratio"] if flip else t2["log_ratio"]
            ratio2 = 1.0 / t2["ratio"] if flip else t2["ratio"]
            ci2 = [1.0 / t2["ratio_ci"][1], 1.0 / t2["ratio_ci"][0]] if flip else list(t2["ratio_ci"])
            s1, s2 = bool(t1["significant"]), bool(t2["significant"])
            if s1 and s2:
                agreement = "holds" if t1["faster"] == t2["faster"] else "reverses"
            else:
                agreement = "unsettled"
            change = lr2 - t1["log_ratio"]
            half = z * math.hypot(t1["log_ratio_se"], t2["log_ratio_se"])
            out.append({
                "condition_1": c1, "condition_2": c2, "a": t1["a"], "b": t1["b"], "quantile": t1["quantile"],
                "statistic": t1["statistic"], "agreement": agreement,
                "settled": "both" if s1 and s2 else "1 only" if s1 else "2 only" if s2 else "neither",
                "faster_1": t1["faster"], "faster_2": t2["faster"], "ratio_1": t1["ratio"],
                "ratio_ci_1": list(t1["ratio_ci"]), "ratio_2": float(ratio2), "ratio_ci_2": _pair(*ci2),
                "p_holm_1": t1["p_holm"], "p_holm_2": t2["p_holm"],
                "same_direction": bool(np.sign(t1["log_ratio"]) == np.sign(lr2)),
                "log_ratio_change": float(change), "log_ratio_change_ci": [change - half, change + half],
            })
    return out


# ------------------------------------------------------------------------------------------------ rankings


def _statistic(name: Any) -> tuple[str, Any]:
    """("mean", None) or (label, q) for a quantile given as a number or "median"/"pNN"."""
    if isinstance(name, str):
        if name == "mean":
            return "mean", None
        if name == "median":
            return "median", 0.5
        if name.startswith("p"):
            try:
                q = float(name[1:]) / 100
            except ValueError:
                q = -1.0
            if 0 < q < 1:
                return quantile_label(q), q
        raise ValueError(f"statistic must be 'mean', 'median', 'pNN' (e.g. 'p99') or a quantile in (0, 1), "
                         f"got {name!r}")
    q = _check_unit(name, "statistic")
    return quantile_label(q), q


def rankings(table: Any, statistic: Any = "median") -> dict:
    """Each condition's model scores (``statistic``: "mean", "median", "p90", "p99" or a quantile) and order,
    fastest first: ``{"statistic", "conditions", "models", "scores": [[per model] per condition] (None where a
    model is missing), "order": [[model names] per condition]}``."""
    label, q = _statistic(statistic)
    cells = latency_cells(table)
    models = _models_of(cells)
    scores, orders = [], []
    for per_model in cells.values():
        s = {m: float(x.mean() if q is None else _q(x, q)) for m, x in per_model.items()}
        scores.append([s.get(m) for m in models])
        orders.append(sorted(s, key=lambda m: (s[m], models.index(m))))
    return {"statistic": label, "conditions": list(cells), "models": models, "scores": scores, "order": orders}


def _score_maps(rankings_: Any) -> tuple[list, list[dict]]:
    """Conditions and, for each, {model: score} (lower is faster) from any accepted rankings form."""
    if isinstance(rankings_, Mapping) and "scores" in rankings_ and "conditions" in rankings_:
        conds = list(rankings_["conditions"])
        models = list(rankings_["models"])
        maps = [{m: v for m, v in zip(models, row) if v is not None} for row in rankings_["scores"]]
        return conds, maps
    if not isinstance(rankings_, Mapping) or not rankings_:
        raise ValueError("rankings must be rankings()'s dict or a non-empty mapping condition -> {model: score} "
                         "or condition -> [models, fastest first]")
    conds, maps = [], []
    for cond, r in rankings_.items():
        if isinstance(r, Mapping):
            m = {str(k): float(v) for k, v in r.items()}
            if any(not math.isfinite(v) for v in m.values()):
                raise ValueError(f"rankings[{cond!r}] has a non-finite score")
        elif isinstance(r, Sequence) and not isinstance(r, str):
            names = [str(v) for v in r]
            if len(set(names)) != len(names):
                raise ValueError(f"rankings[{cond!r}] repeats a model: {names}")
            m = {name: float(i) for i, name in enumerate(names)}
        else:
            raise ValueError(f"rankings[{cond!r}] must be {{model: score}} or a list of models, got "
                             f"{type(r).__name__}")
        conds.append(cond)
        maps.append(m)
    return conds, maps


def kendall_tau(rankings: Any) -> dict:
    """Kendall τ-b (``scipy.stats.kendalltau``) between the model rankings of every two conditions: matrices
    (conditions × conditions) ``tau``, ``p_value``, ``spearman`` (the SRCC of the OneProxy papers),
    ``discordant`` (model pairs ordered oppositely) and ``n_models`` (models shared); ``None`` where fewer than 2
    models are shared. ``rankings`` is :func:`rankings`'s result or a mapping condition -> {model: score} (lower
    is faster) or condition -> [models, fastest first]."""
    conds, maps = _score_maps(rankings)
    k = len(conds)
    tau = [[None] * k for _ in range(k)]
    p = [[None] * k for _ in range(k)]
    rho = [[None] * k for _ in range(k)]
    disc = [[None] * k for _ in range(k)]
    shared = [[0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i, k):
            common = [m for m in maps[i] if m in maps[j]]
            shared[i][j] = shared[j][i] = len(common)
            if len(common) < 2:
                continue
            x = np.array([maps[i][m] for m in common])
            y = np.array([maps[j][m] for m in common])
            if np.ptp(x) == 0 or np.ptp(y) == 0:  # all tied: no ranking to compare
                continue
            res = sst.kendalltau(x, y)
            sr = sst.spearmanr(x, y)
            sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
            d = int(np.count_nonzero(np.triu(sx * sy < 0, 1)))
            tau[i][j] = tau[j][i] = float(res.statistic)
            p[i][j] = p[j][i] = float(res.pvalue)
            rho[i][j] = rho[j][i] = float(sr.statistic)
            disc[i][j] = disc[j][i] = d
    return {"conditions": conds, "tau": tau, "p_value": p, "spearman": rho, "discordant": disc,
            "n_models": shared}


# ------------------------------------------------------------------------------------------------ recommendation


def recommend(table: Any, quantile: float = 0.99, baseline: Hashable | None = None, rule: str = "minimax") -> dict:
    """The model with the best ``quantile`` across all conditions, and whether the baseline's mean agrees.

    ``rule`` (module docstring): "minimax" (smallest worst-case quantile), "mean_rank" or "regret"; ties go to
    the better mean rank, then table order. ``baseline`` is the idle condition (default: the first). Returns
    ``model``, ``idle_mean_model`` (lowest mean in the baseline), ``differs``, a one-line ``summary`` and a
    per-model ``table`` (worst case and where, regret, mean rank, baseline mean).
    """
    q = _check_unit(quantile, "quantile")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    cells = latency_cells(table)
    models = _models_of(cells)
    if len(models) < 2:
        raise ValueError(f"table must hold at least 2 models to recommend one, got {models}")
    conds = list(cells)
    missing = [(c, m) for c in conds for m in models if m not in cells[c]]
    if missing:
        raise ValueError(f"table lacks {len(missing)} (condition, model) cells, e.g. {missing[0]!r}; a "
                         f"recommendation across conditions needs every model in every condition")
    if baseline is None:
        baseline = conds[0]
    elif baseline not in cells:
        raise ValueError(f"baseline {baseline!r} is not a condition of the table; conditions: {conds}")
    label = quantile_label(q)
    score = np.array([[float(_q(cells[c][m], q)) for m in models] for c in conds])  # [conditions, models]
    ranks = np.vstack([sst.rankdata(row) for row in score])
    worst = score.max(axis=0)
    worst_at = score.argmax(axis=0)
    regret = (score / score.min(axis=1, keepdims=True)).max(axis=0)
    mean_rank = ranks.mean(axis=0)
    base_mean = np.array([float(cells[baseline][m].mean()) for m in models])
    primary = {"minimax": worst, "mean_rank": mean_rank, "regret": regret}[rule]
    secondary = mean_rank if rule != "mean_rank" else worst
    pick = min(range(len(models)), key=lambda i: (primary[i], secondary[i], i))
    idle = int(np.argmin(base_mean))
    what = {"minimax": f"best worst-case {label}", "mean_rank": f"best mean rank by {label}",
            "regret": f"smallest worst-case {label} slowdown against each condition's fastest"}[rule]
    summary = (f"{models[pick]} has the {what} over {len(conds)} conditions (worst {label} {worst[pick]:.4g} s in "
               f"{conds[worst_at[pick]]!r})")
    if pick != idle:
        summary += (f"; the mean in {baseline!r} alone would pick {models[idle]} (worst {label} "
                    f"{worst[idle]:.4g} s, {100 * (worst[idle] / worst[pick] - 1):+.1f} %)")
    else:
        summary += f", the same model the mean in {baseline!r} alone picks"
    rows = [{"model": m, "worst_case": float(worst[i]), "worst_condition": conds[int(worst_at[i])],
             "regret": float(regret[i]), "mean_rank": float(mean_rank[i]), "baseline_mean": float(base_mean[i])}
            for i, m in enumerate(models)]
    return {"quantile": q, "statistic": label, "rule": rule, "model": models[pick], "baseline": baseline,
            "idle_mean_model": models[idle], "differs": pick != idle, "summary": summary, "table": rows}
