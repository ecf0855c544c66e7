"""Pruning plans: which channels of each group to keep for a MAC budget, and the pruned copies made from them.

A *plan* is ``{group name: sorted kept indices}`` (groups as :mod:`leancnn.prune.graph` finds them). Everything
that does not change between candidates of a search stays reusable:

* scores per group come from :mod:`leancnn.prune.criteria` (computed once on the unpruned model);
* :func:`ratio_for_target` finds the uniform per-group ratio for a MAC budget once per (model, target): with
  uniform pruning the MACs do not depend on which channels are kept;
* :func:`prune_with_scores` turns scores into a plan and prunes a deep copy; :func:`apply_plan` replays a plan on
  a fresh model (how a pruned checkpoint is loaded);
* :func:`global_plan` is the alternative with one threshold over scores normalised per group
  (:mod:`leancnn.prune.normalise`).

:func:`n_keep` is the rule every one of them uses for how many channels a group keeps; the MACs of a candidate
plan are predicted without pruning (``_MacsModel``), and measured on a really pruned copy where a result is
returned.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch.nn as nn

from ..errors import LeancnnError
from ..nn.counting import count_macs
from .graph import _IN_FNS, _OUT_FNS, GroupInfo, _Graph, _graph, _input_size, _probe
from .normalise import GLOBAL_NORMALISATIONS, normalise_scores

__all__ = ["apply_plan", "check_round_to", "global_plan", "n_keep", "prune_with_scores", "ratio_for_target"]


# ------------------------------------------------------------------------------------------------ counts


def n_keep(n: int, ratio: float, round_to: int | None = None, min_channels: int = 1) -> int:
    """Channels kept out of ``n`` when a fraction ``ratio`` is removed: ``n - round(ratio * n)``, rounded to a
    multiple of ``round_to`` (never to 0; a group smaller than ``round_to`` is kept whole), at least
    ``min_channels`` (or ``n`` if smaller)."""
    keep = n - int(math.floor(float(ratio) * n + 0.5))
    if round_to:
        keep = n if n < round_to else min(n, max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to))
    return int(min(n, max(keep, min(int(min_channels), n))))


class _MacsModel:
    """MACs of a pruned copy as a function of the kept channel counts per group, without pruning.

    A conv/linear's MACs scale with its output channels times its input channels per group; the channels a
    group removes from a layer's input or output are proportional to the channels it removes at its root
    (exactly: residual, concatenation and flatten mappings are linear). Depthwise convs scale with their
    channels only."""

    def __init__(self, graph: _Graph, input_size: Sequence[int]):
        self.total, per_layer = count_macs(graph.model, input_size, per_layer=True)
        self.layers: list[tuple[float, float, float, list, list, bool]] = []
        coef: dict[str, tuple[list, list]] = {}
        for g in graph.groups:
            for dep, idxs in graph.full[g.name]:
                mod = dep.target.module
                if not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
                    continue
                lname = graph.name_of[mod]
                outs, ins = coef.setdefault(lname, ([], []))
                if dep.handler in _OUT_FNS:
                    outs.append((g.name, len(idxs) / g.n_channels))
                elif dep.handler in _IN_FNS:
                    ins.append((g.name, len(idxs) / g.n_channels))
        self.fixed = 0.0
        for lname, macs in per_layer.items():
            if lname not in coef:
                self.fixed += macs
                continue
            mod = graph.model.get_submodule(lname)
            is_lin = isinstance(mod, nn.Linear)
            n_out = mod.out_features if is_lin else mod.out_channels
            n_in = mod.in_features if is_lin else mod.in_channels
            dw = (not is_lin) and mod.groups == n_out == n_in and n_out > 1
            outs, ins = coef[lname]
            self.layers.append((float(macs), float(n_out), float(n_in), outs, ins, dw))

    def fraction(self, removed: Mapping[str, int]) -> float:
        total = self.fixed
        for macs, n_out, n_in, outs, ins, dw in self.layers:
            out_kept = n_out - sum(c * removed.get(g, 0) for g, c in outs)
            f = out_kept / n_out
            if not dw:
                f *= (n_in - sum(c * removed.get(g, 0) for g, c in ins)) / n_in
            total += macs * f
        return total / self.total


# ------------------------------------------------------------------------------------------------ pruning


def _ratios(groups: list[GroupInfo], ratio: float | Mapping[str, float]) -> dict[str, float]:
    names = [g.name for g in groups]
    if isinstance(ratio, Mapping):
        unknown = set(ratio) - set(names)
        if unknown:
            raise LeancnnError(f"ratio names unknown groups {sorted(unknown)}; the model's groups are {names}")
        out = {n: float(ratio.get(n, 0.0)) for n in names}
    else:
        out = {n: float(ratio) for n in names}
    bad = {n: r for n, r in out.items() if not 0.0 <= r < 1.0}
    if bad:
        raise LeancnnError(f"pruning ratios must be in [0, 1): {bad}")
    return out


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores (ties: lower index first), sorted."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:k])


def _check_scores(groups: list[GroupInfo], scores: Mapping[str, Any], needed: Iterable[str]) -> None:
    by = {g.name: g for g in groups}
    unknown = set(scores) - set(by)
    if unknown:
        raise LeancnnError(f"scores name unknown groups {sorted(unknown)}; the model's groups are {list(by)}")
    missing = [n for n in needed if n not in scores]
    if missing:
        raise LeancnnError(f"no scores for groups {missing}")
    for n in needed:
        s = np.asarray(scores[n])
        if s.shape != (by[n].n_channels,) or not np.all(np.isfinite(s)):
            raise LeancnnError(f"scores of group '{n}' must be {by[n].n_channels} finite numbers, got shape "
                               f"{s.shape}")


def prune_with_scores(model: nn.Module, example_inputs: Any, scores: Mapping[str, Any],
                      ratio: float | Mapping[str, float], round_to: int | None = None, min_channels: int = 1,
                      ignored_layers: Iterable[nn.Module | str] = (), include_linear: bool = False
                      ) -> tuple[nn.Module, dict[str, list[int]]]:
    """Prune a deep copy of ``model``, keeping in each group its highest-scoring channels.

    ``scores``: ``{group name: array of n_channels}`` (higher = more important; see
    :func:`leancnn.prune.compute_scores`); ``ratio``: fraction of channels removed in every group, or a dict
    ``{group name: ratio}`` (groups left out are not pruned); kept counts follow :func:`n_keep`. Returns
    ``(pruned_model, plan)`` with ``plan = {group name: sorted kept indices}`` for every group (replay it with
    :func:`apply_plan`). ``model`` is not modified."""
    graph = _graph(model, example_inputs, ignored_layers, include_linear)
    ratios = _ratios(graph.groups, ratio)
    needed = [g.name for g in graph.groups if n_keep(g.n_channels, ratios[g.name], round_to, min_channels)
              < g.n_channels]
    _check_scores(graph.groups, scores, needed)
    plan = {}
    for g in graph.groups:
        k = n_keep(g.n_channels, ratios[g.name], round_to, min_channels)
        plan[g.name] = list(range(g.n_channels)) if k == g.n_channels else _top(scores[g.name], k)
    return graph.apply(plan), plan


def apply_plan(model: nn.Module, example_inputs: Any, plan: Mapping[str, Sequence[int]],
               ignored_layers: Iterable[nn.Module | str] = (), include_linear: bool = False) -> nn.Module:
    """Replay a recorded ``plan`` (``{group name: kept indices}``) on a deep copy of a model of the same
    architecture, e.g. to load a pruned checkpoint: ``apply_plan(create_model(name), x, plan)`` then
    ``load_state_dict``. Groups not in the plan are left whole. ``model`` is not modified."""
    return _graph(model, example_inputs, ignored_layers, include_linear).apply(plan)


def check_round_to(groups: Sequence[GroupInfo], round_to: int | None) -> None:
    """Refuse a ``round_to`` that leaves no group prunable: a group of ``n <= round_to`` channels is kept whole
    (:func:`n_keep`), so the range of reachable MAC fractions would be empty. The error names round_to, the
    channel counts of the smallest and the largest layer, and the values that work."""
    if not round_to or not groups:
        return
    sizes = sorted(g.n_channels for g in groups)
    if round_to >= sizes[-1]:
        have = (f"{sizes[0]} channels each" if sizes[0] == sizes[-1] else
                f"{sizes[0]} (the smallest) to {sizes[-1]} channels")
        raise LeancnnError(f"round_to={round_to} leaves no layer to prune: a layer of at most round_to channels is "
                           f"kept whole, and the prunable layers have {have}; use round_to in [1, {sizes[-1] - 1}], "
                           "or 0 for no rounding")


def _target_error(target: float, lo: float) -> LeancnnError:
    return LeancnnError(f"target_macs={target:g} cannot be reached: the fraction of MACs kept can be brought to "
                        f"[{lo:.4f}, 1) with these settings (min_channels / max ratio / round_to)")


def _bisect(frac, lo: float, hi: float, target: float, tol: float, steps: int, width: float) -> float:
    """The x in [lo, hi] whose ``frac(x)`` (decreasing in x) comes closest to ``target``, by bisection: stops
    within ``tol`` of the target, after ``steps`` halvings, or when the interval is narrower than ``width``."""
    best = min((lo, hi), key=lambda x: abs(frac(x) - target))
    for _ in range(steps):
        mid = (lo + hi) / 2
        f = frac(mid)
        if abs(f - target) < abs(frac(best) - target):
            best = mid
        if abs(f - target) <= tol:
            break
        lo, hi = (mid, hi) if f > target else (lo, mid)
        if hi - lo < width:
            break
    return best


def ratio_for_target(model: nn.Module, example_inputs: Any, target_macs: float,
                     input_size: Sequence[int] | None = None, round_to: int | None = None, tol: float = 0.005,
                     min_channels: int = 1, ignored_layers: Iterable[nn.Module | str] = (),
                     include_linear: bool = False, max_error: float = 0.02) -> tuple[float, float]:
    """The uniform per-group pruning ratio whose pruned model keeps ``target_macs`` of the MACs.

    ``target_macs`` is the fraction of MACs *kept* (0.5: half the MACs; MACs as :func:`count_macs` counts them
    at ``input_size``, default: ``example_inputs`` without its batch dimension). Bisection on the ratio
    stops within ``tol`` of the target where the channel granularity allows; the best ratio found must be
    within ``max_error`` (±2%). With a uniform ratio the MACs do not depend on *which* channels are kept, so
    the ratio is computed once per (model, target) and reused for every criterion and every candidate blend.
    Returns ``(ratio, achieved)`` where ``achieved`` is measured on a really pruned copy. A target that cannot
    be reached raises :class:`LeancnnError` with the reachable range."""
    target = float(target_macs)
    size = _input_size(example_inputs, input_size)
    graph = _probe(model, example_inputs, ignored_layers, include_linear)
    check_round_to(graph.groups, round_to)
    macs = _MacsModel(graph, size)

    def frac(r: float) -> float:
        return macs.fraction({g.name: g.n_channels - n_keep(g.n_channels, r, round_to, min_channels)
                              for g in graph.groups})

    top = 1.0 - 1e-9  # ratios are < 1: n_keep still keeps min_channels
    lo_frac = frac(top)
    if not lo_frac <= target < 1.0 or target <= 0:
        raise _target_error(target, lo_frac)
    lo, hi = 0.0, top  # frac(lo) >= target >= frac(hi) (or close)
    best = _bisect(frac, lo, hi, target, tol, steps=60, width=1e-9)
    if abs(frac(best) - target) > max_error:
        raise LeancnnError(f"target_macs={target:g}: the channel granularity (round_to={round_to}) allows no "
                           f"uniform ratio within ±{max_error}; the closest is {frac(best):.4f} at ratio {best:.4f}")
    pruned = _graph(model, example_inputs, ignored_layers, include_linear).apply(
        {g.name: list(range(n_keep(g.n_channels, best, round_to, min_channels))) for g in graph.groups})
    achieved = count_macs(pruned, size) / macs.total
    return float(best), float(achieved)


def global_plan(model: nn.Module, example_inputs: Any, scores: Mapping[str, Any], target_macs: float,
                input_size: Sequence[int] | None = None, max_ratio: float = 0.9, round_to: int | None = None,
                min_channels: int = 1, normaliser: str = "mean", tol: float = 0.005,
                ignored_layers: Iterable[nn.Module | str] = (), include_linear: bool = False,
                max_error: float = 0.02) -> tuple[dict[str, list[int]], float]:
    """Global pruning: one threshold over scores normalised per group, found by bisection so that the pruned
    model keeps ``target_macs`` of the MACs.

    Scores are normalised within each group by ``normaliser`` (:func:`~leancnn.prune.normalise.normalise_scores`:
    ``"mean"``: divided by the group mean after shifting negative scores to start at 0, as Torch-Pruning's
    default; ``"max"``; ``"zscore"``, where a constant group maps to 0); every channel below the
    threshold is removed, but no group loses more than ``max_ratio`` of its channels (nor goes below
    ``min_channels``; kept counts are rounded to ``round_to``). Here the MACs depend on the scores, so the
    threshold is searched per score table. Returns ``(plan, achieved)``: the plan for :func:`apply_plan` and the
    predicted fraction of MACs kept."""
    target = float(target_macs)
    if not 0.0 <= max_ratio < 1.0:
        raise LeancnnError(f"max_ratio must be in [0, 1), got {max_ratio}")
    graph = _probe(model, example_inputs, ignored_layers, include_linear)
    check_round_to(graph.groups, round_to)
    _check_scores(graph.groups, scores, [g.name for g in graph.groups])
    macs = _MacsModel(graph, _input_size(example_inputs, input_size))
    norm = {g.name: normalise_scores(scores[g.name], normaliser, GLOBAL_NORMALISATIONS) for g in graph.groups}
    floor = {g.name: n_keep(g.n_channels, max_ratio, round_to, min_channels) for g in graph.groups}

    def keeps(t: float) -> dict[str, int]:
        out = {}
        for g in graph.groups:
            k = int((norm[g.name] > t).sum())
            if round_to and k < g.n_channels:
                k = n_keep(g.n_channels, 1 - k / g.n_channels, round_to, min_channels)
            out[g.name] = min(g.n_channels, max(k, floor[g.name]))
        return out

    def frac(t: float) -> float:
        return macs.fraction({g.name: g.n_channels - k for g, k in zip(graph.groups, keeps(t).values())})

    allv = np.concatenate(list(norm.values()))
    lo, hi = float(allv.min()) - 1.0, float(allv.max()) + 1.0
    if not frac(hi) - max_error <= target < 1.0 or target <= 0:
        raise _target_error(target, frac(hi))
    best = _bisect(frac, lo, hi, target, tol, steps=100, width=1e-12)
    achieved = frac(best)
    if abs(achieved - target) > max_error:
        raise LeancnnError(f"target_macs={target:g}: no threshold gets within ±{max_error} (closest {achieved:.4f})")
    plan = {name: _top(scores[name], k) for name, k in keeps(best).items()}
    return plan, float(achieved)
