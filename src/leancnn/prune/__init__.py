"""Structural filter pruning with pluggable (and blendable) importance criteria.

``prune_model`` is the one-call API; the pieces it is made of (:func:`compute_scores`,
:func:`ratio_for_target`, :func:`prune_with_scores`, :func:`apply_plan`, :func:`global_plan`) let a search over
blended criteria compute the score table and the pruning ratio once and reuse them for every candidate.

The modules, from the bottom up: ``graph`` (the dependency graph and its prunable groups), ``criteria`` (the
criteria and the score table), ``normalise`` (score normalisation), ``plan`` (plans for a MAC budget and the
pruned copies made from them), ``cluster`` (criteria clustering), ``blend`` (the blended criterion) and ``search``
(the evolutionary search of a blend's weights).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch.nn as nn

from ..errors import LeancnnError
from ..nn.counting import count_macs, count_params
from .criteria import (
    CRITERIA,
    CompositeCriterion,
    Criterion,
    DataCriterion,
    ScoreTable,
    compute_scores,
    get_criterion,
)
from .graph import ChannelMapShortcut, GroupInfo, _input_size, prunable_groups
from .plan import apply_plan, check_round_to, global_plan, n_keep, prune_with_scores, ratio_for_target

__all__ = ["CRITERIA", "ChannelMapShortcut", "CompositeCriterion", "Criterion", "DataCriterion", "GroupInfo",
           "ScoreTable", "apply_plan", "check_round_to", "compute_scores", "get_criterion", "global_plan", "n_keep",
           "prunable_groups", "prune_model", "prune_with_scores", "ratio_for_target"]


class _ForeignBlend(CompositeCriterion):
    """A blend written outside leancnn, duck-typed (``criteria`` and ``blend(score_table)``), as a
    :class:`CompositeCriterion`."""

    def __init__(self, blend_like: Any):
        self._blend_like = blend_like
        self.criteria = tuple(getattr(blend_like, "criteria", ()))
        self.name = getattr(blend_like, "name", None)

    def blend(self, scores):
        return self._blend_like.blend(scores)


def _as_criterion(criterion: Any) -> Criterion:
    """``criterion`` as a :class:`Criterion`: a name or an instance as :func:`get_criterion` takes them; any other
    object with a ``blend`` method (prune_model's documented duck type) wrapped as a :class:`CompositeCriterion`."""
    if not isinstance(criterion, Criterion) and hasattr(criterion, "blend"):
        return _ForeignBlend(criterion)
    return get_criterion(criterion)


def _scores_for(model, example_inputs, criterion, data, ignored_layers, max_batches):
    """``(scores per group, criterion name)`` for a criterion name, a Criterion, or a blend."""
    crit = _as_criterion(criterion)
    if isinstance(crit, CompositeCriterion):
        names = list(crit.criteria)
        if not names:
            raise LeancnnError("a blended criterion must name its member criteria in '.criteria'")
        table = compute_scores(model, example_inputs, names, data, max_batches=max_batches,
                               ignored_layers=ignored_layers)
        scores = crit.blend(table)
        label = crit.name or f"blend({', '.join(names)})"
        return {g: np.asarray(s, dtype=np.float64) for g, s in scores.items()}, label
    table = compute_scores(model, example_inputs, [crit], data, max_batches=max_batches, ignored_layers=ignored_layers)
    return table.of(crit.name), crit.name


def prune_model(model: nn.Module, example_inputs: Any, target_macs: float = 0.5, criterion: Any = "l1",
                data: Iterable | None = None, global_pruning: bool = False, round_to: int | None = None,
                ignored_layers: Iterable[nn.Module | str] = (), max_batches: int = 4, max_ratio: float = 0.9,
                min_channels: int = 1) -> tuple[nn.Module, dict]:
    """Prune a copy of ``model`` to keep ``target_macs`` of its MACs (±2%), removing the channels that
    ``criterion`` scores lowest. ``model`` is not modified.

    ``criterion``: a name from :data:`CRITERIA`, a :class:`Criterion`, or a blended criterion: a
    :class:`CompositeCriterion` (e.g. :class:`leancnn.prune.blend.BlendedCriterion`) or any object with
    ``criteria`` (member criterion names) and ``blend(score_table) -> {group: scores}``. ``data``: calibration
    batches for data-driven criteria. Uniform pruning (default) removes the same fraction of channels from
    every group; ``global_pruning`` uses one threshold over per-group mean-normalised scores (no group loses
    more than ``max_ratio``). MACs are counted at ``example_inputs``' per-sample shape.

    Returns ``(pruned_model, info)`` with ``info``: ``macs_before``, ``macs_after``, ``ratio``
    (``macs_after / macs_before``), ``params_before``, ``params_after``, ``plan`` (``{group: kept indices}``,
    for :func:`apply_plan`), ``criterion`` (name), ``channel_ratio`` (uniform ratio, ``None`` when global),
    ``global_pruning``."""
    size = _input_size(example_inputs, None)
    scores, label = _scores_for(model, example_inputs, criterion, data, ignored_layers, max_batches)
    channel_ratio = None
    if global_pruning:
        plan, _ = global_plan(model, example_inputs, scores, target_macs, size, max_ratio=max_ratio,
                              round_to=round_to, min_channels=min_channels, ignored_layers=ignored_layers)
        pruned = apply_plan(model, example_inputs, plan, ignored_layers=ignored_layers)
    else:
        channel_ratio, _ = ratio_for_target(model, example_inputs, target_macs, size, round_to=round_to,
                                            min_channels=min_channels, ignored_layers=ignored_layers)
        pruned, plan = prune_with_scores(model, example_inputs, scores, channel_ratio, round_to=round_to,
                                         min_channels=min_channels, ignored_layers=ignored_layers)
    macs_before, macs_after = count_macs(model, size), count_macs(pruned, size)
    info = {
        "macs_before": macs_before,
        "macs_after": macs_after,
        "ratio": macs_after / macs_before,
        "params_before": count_params(model),
        "params_after": count_params(pruned),
        "plan": plan,
        "criterion": label,
        "channel_ratio": channel_ratio,
        "global_pruning": bool(global_pruning),
    }
    return pruned, info
