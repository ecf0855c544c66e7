"""Pareto bookkeeping: which points no other point beats, and which one of them to take.

A point *dominates* another when it is at least as good in every objective and better in one (``directions``:
"maximize" / "minimize" per objective). :func:`pareto_front` returns the indices of the points nobody dominates
(exact duplicates all stay). :func:`front_rank` gives each point its non-dominated sorting rank (0 = on the front,
1 = on the front once rank 0 is removed, ...), which is how a reference such as MoViNet-A0 is placed.
:func:`choose` takes a trade-off from the front: the best first objective among the points whose second objective
is within a budget (e.g. the most accurate model under 5 ms at p99), or, without a budget, the knee: the front point
farthest from the straight line between the front's two extremes, with both objectives scaled to [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import LeancnnError


def _signed(values, directions: Sequence[str]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(directions):
        raise LeancnnError(f"values must be [n points, {len(directions)} objectives], got shape {v.shape}")
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise LeancnnError(f"direction must be maximize or minimize, got {d!r}")
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return v * sign  # everything minimised


def dominates(a, b, directions: Sequence[str]) -> bool:
    s = _signed([a, b], directions)
    return bool(np.all(s[0] <= s[1]) and np.any(s[0] < s[1]))


def pareto_front(values, directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated points of ``values`` ([n, k])."""
    s = _signed(values, directions) if len(values) else np.zeros((0, len(directions)))
    keep = []
    for i in range(len(s)):
        le = np.all(s <= s[i], axis=1)
        lt = np.any(s < s[i], axis=1)
        if not np.any(le & lt):
            keep.append(i)
    return keep


def front_rank(values, directions: Sequence[str]) -> list[int]:
    """Non-dominated sorting rank of every point (0: on the Pareto front)."""
    n = len(values)
    rank = [-1] * n
    left = list(range(n))
    r = 0
    while left:
        sub = [values[i] for i in left]
        front = {left[j] for j in pareto_front(sub, directions)}
        for i in front:
            rank[i] = r
        left = [i for i in left if i not in front]
        r += 1
    return rank


def choose(values, directions: Sequence[str], budget: float | None = None) -> int | None:
    """Index of the chosen trade-off among ``values`` (2 objectives): with ``budget``, the best first objective
    among the points whose second objective is within it (None if none is); without, the knee of the front."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return None
    if v.shape[1] != 2:
        raise LeancnnError("choose() needs two objectives")
    front = pareto_front(v, directions)
    s = _signed(v, directions)
    if budget is not None:
        ok = [i for i in front if s[i, 1] <= (budget if directions[1] == "minimize" else -budget)]
        return min(ok, key=lambda i: (s[i, 0], s[i, 1])) if ok else None
    if len(front) <= 2:
        return min(front, key=lambda i: (s[i, 0], s[i, 1]))
    f = s[front]
    lo, hi = f.min(0), f.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    z = (f - lo) / span
    a, b = z[np.argmin(z[:, 0])], z[np.argmin(z[:, 1])]  # the two extremes
    d = b - a
    norm = float(np.hypot(*d)) or 1.0
    dist = np.abs(d[0] * (a[1] - z[:, 1]) - d[1] * (a[0] - z[:, 0])) / norm
    return front[int(np.argmax(dist))]


__all__ = ["choose", "dominates", "front_rank", "pareto_front"]
