"""Score normalisation: one criterion's scores in one group mapped to a common scale.

Criteria live on unrelated scales (weight norms, |γ|, Taylor products), so scores are normalised before they are
compared across criteria (a blend, :mod:`leancnn.prune.blend`) or across groups (one global threshold,
:func:`leancnn.prune.global_plan`). One function, :func:`normalise_scores`, holds every method; each user accepts
its own subset:

=========== ======================== ========================================================================
method      used by                  maps the scores ``x`` of one group to
=========== ======================== ========================================================================
``rank``    blend (default)          average ranks of ties, scaled to [0, 1] by (r - 1) / (n - 1) (reference
                                     ``pruning_criteria.md`` §2 step 2)
``scale``   blend                    min-max to [0, 1]
``zscore``  blend, global pruning    (x - mean) / std (population std; not bounded)
``mean``    global pruning (default) x divided by its mean, after shifting negative scores to start at
                                     0 (Torch-Pruning's default normaliser)
``max``     global pruning           x divided by its max, after the same shift
=========== ======================== ========================================================================

[ours] A constant vector (or a single channel) carries no ordering: it maps to 0.5 everywhere under ``"rank"`` and
``"scale"`` and to 0 under ``"zscore"``, so in a blend it adds the same amount to every channel and leaves the
ranking to the other criteria. Under ``"mean"`` and ``"max"`` a constant positive vector maps to 1 and one that is
shifted to all zeros (a constant ``<= 0``) to 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import LeancnnError

BLEND_NORMALISATIONS = ("rank", "scale", "zscore")  # across criteria, within a group, before a blend
GLOBAL_NORMALISATIONS = ("mean", "max", "zscore")  # across groups, before one global pruning threshold

__all__ = ["BLEND_NORMALISATIONS", "GLOBAL_NORMALISATIONS", "check_normalisation", "normalise_scores"]


def check_normalisation(method: str, allowed: Sequence[str] = BLEND_NORMALISATIONS) -> None:
    """Refuse a ``method`` that is not in ``allowed``, naming the allowed ones."""
    if method not in allowed:
        raise LeancnnError(f"unknown normalisation {method!r}; use one of {', '.join(allowed)}")


def normalise_scores(values: Sequence[float] | np.ndarray, method: str = "rank",
                     allowed: Sequence[str] = BLEND_NORMALISATIONS) -> np.ndarray:
    """One criterion's scores in one group (a non-empty, finite 1-D array) normalised by ``method`` (one of
    ``allowed``; see the module docstring). Returns float64."""
    check_normalisation(method, allowed)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise LeancnnError(f"scores to normalise must be a non-empty 1-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise LeancnnError("scores to normalise contain NaN or inf")
    if method in ("mean", "max"):
        x = x - min(0.0, x.min())
        m = x.mean() if method == "mean" else x.max()
        return x / m if m > 0 else np.zeros_like(x)
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
