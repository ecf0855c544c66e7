"""Criteria clustering: which pruning criteria rank the filters of a layer the same way.

He et al., "Blending Pruning Criteria for Convolutional Neural Networks" (ICANN 2021, arXiv 2107.05033) condense a
pool of filter-pruning criteria layer by layer ("layerwise") by clustering them on the *rank* of their importance
scores, then blend selected candidates from the clusters. Only the abstract is known; the steps below follow the
reconstruction in ``../shared/reference/pruning_criteria.md`` §2 (steps 2-4) and §7. Everything marked [ours] is
a choice of this module where the paper is silent; each one is a parameter.

Input. A score table ``scores: {group: {criterion: np.ndarray}}``: one entry per prunable group (e.g.
``"layer1.0.conv1"``) in network order, each with one float score per output channel for every criterion (higher
= more important). Every group must have the same criteria and equal-length, finite, 1-D arrays. The criterion
order is the key order of the first group; every result below keeps it.

Steps.

1. :func:`correlations` — per group, the K x K rank correlation between the criteria: ``"spearman"``
   (:func:`scipy.stats.spearmanr`, ties get average ranks) or ``"kendall"`` (:func:`scipy.stats.kendalltau`,
   τ-b). A criterion that is constant in a group (all channels tied) has no ranking there: its correlations are
   NaN, which [ours] are set to 0 (diagonal 1), and the group is recorded in ``constant`` / ``notes``. A group
   with a single channel is treated the same way. The network matrix is the plain mean of the per-group
   matrices, or [option] their mean weighted by channel count (``weighted=True``). [ours] We average ρ directly
   (no Fisher z): the values are used only for a distance cut.
2. :func:`cluster_criteria` — agglomerative clustering (:func:`scipy.cluster.hierarchy.linkage`, default
   ``"average"``; ``"single"``, ``"complete"``, ``"weighted"`` allowed — the centroid-type linkages need
   Euclidean data and are refused) on the distance ``1 - ρ`` in [0, 2], cut with ``fcluster(criterion=
   "distance")`` at ``1 - threshold``: with average linkage two clusters merge when their mean ρ is
   ``>= threshold`` (default 0.9, reference §2 step 4). [ours] Anti-correlated criteria are *far* apart (distance
   up to 2): they order the filters oppositely, which is not redundancy. Done on every group (``per_layer=True``,
   the paper's "layerwise") and on the network-mean matrix. Clusters are numbered by their first member in
   criterion order, so results do not depend on scipy's label numbering.
3. Representatives (the "selected blending candidates"): per cluster, chosen by ``representative``:
   ``"least_correlated"`` (default, reference §2 step 4: the member with the lowest mean ρ to the criteria
   outside its cluster, i.e. the most complementary one; with a single cluster there is nothing outside, so
   [ours] the first member), ``"central"`` (the highest mean ρ to its own cluster), ``"first"`` (first member in
   criterion order) or a preference list of names (the first listed member; unlisted members come after, in
   criterion order). Ties go to the earlier criterion. :meth:`ClusterResult.candidates` gives the network-level
   representatives (optionally the ``n`` best per cluster by the same rule): [ours] one candidate set for the
   whole network, so that a single weight vector (``blend.py``) applies to every layer; the per-layer
   clusterings describe how stable that grouping is (``summary()``, ``co_occurrence``, ``together()``).
4. :func:`plot_correlations` — a heatmap of the network-mean matrix with cluster boxes, plus small panels for a
   few layers (first, middle, last by default), values annotated.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import LeancnnError

CORRELATION_METHODS = ("spearman", "kendall")
LINKAGES = ("average", "single", "complete", "weighted")
REPRESENTATIVE_RULES = ("least_correlated", "central", "first")

__all__ = [
    "CORRELATION_METHODS",
    "LINKAGES",
    "REPRESENTATIVE_RULES",
    "Correlations",
    "Clustering",
    "ClusterResult",
    "validate_scores",
    "correlations",
    "cluster_matrix",
    "cluster_criteria",
    "plot_correlations",
]


# ----------------------------------------------------------------------------------------------------------------
# input


def validate_scores(scores: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[list[str], list[str]]:
    """Check a score table; return (groups in order, criteria in the first group's order)."""
    if not isinstance(scores, Mapping) or not scores:
        raise LeancnnError("scores must be a non-empty dict {group: {criterion: per-channel scores}}")
    groups = [str(g) for g in scores]
    criteria: list[str] | None = None
    for g, table in scores.items():
        if not isinstance(table, Mapping) or not table:
            raise LeancnnError(f"scores[{g!r}] must be a non-empty dict {{criterion: per-channel scores}}")
        names = [str(c) for c in table]
        if criteria is None:
            criteria = names
        elif set(names) != set(criteria):
            missing = sorted(set(criteria) - set(names))
            extra = sorted(set(names) - set(criteria))
            raise LeancnnError(f"group {g!r} has criteria {names}; expected the same as the first group "
                               f"{criteria} (missing {missing}, extra {extra})")
        length = None
        for c, values in table.items():
            arr = np.asarray(values)
            if arr.ndim != 1 or arr.size == 0:
                raise LeancnnError(f"scores[{g!r}][{c!r}] must be a non-empty 1-D array (one score per output "
                                   f"channel), got shape {arr.shape}")
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise LeancnnError(f"scores[{g!r}][{c!r}] must hold real numbers, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise LeancnnError(f"scores[{g!r}][{c!r}] has {int(np.sum(~np.isfinite(arr)))} non-finite "
                                   f"value(s) (NaN/inf)")
            if length is None:
                length = arr.size
            elif arr.size != length:
                raise LeancnnError(f"group {g!r}: criterion {c!r} has {arr.size} scores, others have {length}")
    assert criteria is not None
    return groups, criteria


def _matrix(table: Mapping[str, np.ndarray], criteria: Sequence[str]) -> np.ndarray:
    return np.stack([np.asarray(table[c], dtype=np.float64) for c in criteria], axis=1)  # (channels, K)


# ----------------------------------------------------------------------------------------------------------------
# correlations


@dataclass
class Correlations:
    """Rank correlations between criteria: one K x K matrix per group and their (weighted) mean."""

    criteria: tuple[str, ...]
    groups: tuple[str, ...]
    method: str
    per_group: dict[str, np.ndarray]
    mean: np.ndarray
    channels: dict[str, int]
    weighted: bool = False
    constant: dict[str, list[str]] = field(default_factory=dict)  # criterion -> groups where it is constant

    @property
    def notes(self) -> list[str]:
        n = len(self.groups)
        return [f"{c} is constant in {len(gs)} of {n} group(s) (e.g. {gs[0]}): no ranking there, its correlations "
                f"set to 0" for c, gs in self.constant.items() if gs]

    def to_dict(self) -> dict:
        return {
            "criteria": list(self.criteria), "groups": list(self.groups), "method": self.method,
            "weighted": self.weighted, "channels": dict(self.channels),
            "mean": self.mean.round(6).tolist(),
            "per_group": {g: m.round(6).tolist() for g, m in self.per_group.items()},
            "constant": {c: list(gs) for c, gs in self.constant.items()}, "notes": self.notes,
        }


def _group_correlation(x: np.ndarray, method: str) -> np.ndarray:
    """K x K rank correlation of the columns of x (channels, K); NaN where a column is constant."""
    n, k = x.shape
    out = np.full((k, k), np.nan)
    if n < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input; handled by the caller
        if method == "spearman":
            from scipy.stats import spearmanr

            if k == 1:
                return np.ones((1, 1))
            rho = spearmanr(x, axis=0).statistic
            out = np.array([[1.0, rho], [rho, 1.0]]) if k == 2 else np.asarray(rho, dtype=np.float64)
        else:
            from scipy.stats import kendalltau

            np.fill_diagonal(out, 1.0)
            for i in range(k):
                for j in range(i + 1, k):
                    out[i, j] = out[j, i] = kendalltau(x[:, i], x[:, j]).statistic
    return out


def correlations(scores: Mapping[str, Mapping[str, np.ndarray]], method: str = "spearman",
                 weighted: bool = False, criteria: Sequence[str] | None = None) -> Correlations:
    """Per-group K x K rank correlations (Spearman ρ or Kendall τ-b) between criteria, and their mean over groups.

    A criterion constant in a group gets correlation 0 there (diagonal 1), listed in ``constant``. ``weighted``
    weights the mean by each group's channel count. ``criteria`` picks and orders a subset (default: all, in the
    first group's order).
    """
    if method not in CORRELATION_METHODS:
        raise LeancnnError(f"unknown correlation method {method!r}; use one of {', '.join(CORRELATION_METHODS)}")
    groups, all_criteria = validate_scores(scores)
    if criteria is None:
        criteria = all_criteria
    else:
        criteria = [str(c) for c in criteria]
        unknown = [c for c in criteria if c not in all_criteria]
        if unknown or not criteria or len(set(criteria)) != len(criteria):
            raise LeancnnError(f"criteria must be distinct names from {all_criteria}; got {criteria}")
    k = len(criteria)
    per_group, channels = {}, {}
    constant: dict[str, list[str]] = {c: [] for c in criteria}
    for g in groups:
        x = _matrix(scores[g], criteria)
        m = _group_correlation(x, method)
        for i, c in enumerate(criteria):
            if x.shape[0] < 2 or np.ptp(x[:, i]) == 0:
                constant[c].append(g)
        m = np.where(np.isnan(m), 0.0, m)
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        per_group[g] = np.clip(m, -1.0, 1.0)
        channels[g] = x.shape[0]
    w = np.array([channels[g] if weighted else 1.0 for g in groups], dtype=np.float64)
    mean = np.tensordot(w / w.sum(), np.stack([per_group[g] for g in groups]), axes=1)
    np.fill_diagonal(mean, 1.0)
    assert mean.shape == (k, k)
    return Correlations(criteria=tuple(criteria), groups=tuple(groups), method=method, per_group=per_group,
                        mean=mean, channels=channels, weighted=weighted,
                        constant={c: gs for c, gs in constant.items() if gs})


# ----------------------------------------------------------------------------------------------------------------
# clustering


@dataclass
class Clustering:
    """The clusters of one correlation matrix (a group, or the network mean)."""

    scope: str  # group name, or "network"
    criteria: tuple[str, ...]
    corr: np.ndarray
    clusters: list[tuple[str, ...]]  # members in criterion order; clusters ordered by first member
    ranked: list[tuple[str, ...]]  # members of each cluster, best representative first

    @property
    def representatives(self) -> list[str]:
        return [r[0] for r in self.ranked]

    @property
    def labels(self) -> dict[str, int]:
        """criterion -> cluster index (0-based, in ``clusters`` order)."""
        return {c: i for i, members in enumerate(self.clusters) for c in members}

    def cluster_of(self, criterion: str) -> tuple[str, ...]:
        return self.clusters[self.labels[criterion]]

    def to_dict(self) -> dict:
        return {"scope": self.scope, "clusters": [list(c) for c in self.clusters],
                "representatives": self.representatives, "ranked": [list(r) for r in self.ranked]}


def _rank_members(members: Sequence[str], criteria: Sequence[str], corr: np.ndarray,
                  rule: str | Sequence[str]) -> tuple[str, ...]:
    idx = {c: i for i, c in enumerate(criteria)}
    members = sorted(members, key=idx.__getitem__)
    if isinstance(rule, str):
        if rule == "first":
            return tuple(members)
        if rule == "least_correlated":
            outside = [idx[c] for c in criteria if c not in members]
            if not outside:
                return tuple(members)
            key = {c: float(np.mean(corr[idx[c], outside])) for c in members}
            return tuple(sorted(members, key=lambda c: (key[c], idx[c])))
        if rule == "central":
            if len(members) == 1:
                return tuple(members)
            key = {c: float(np.mean([corr[idx[c], idx[o]] for o in members if o != c])) for c in members}
            return tuple(sorted(members, key=lambda c: (-key[c], idx[c])))
        raise LeancnnError(f"unknown representative rule {rule!r}; use one of {', '.join(REPRESENTATIVE_RULES)} "
                           f"or a preference list of criterion names")
    order = {c: i for i, c in enumerate(rule)}
    return tuple(sorted(members, key=lambda c: (order.get(c, len(order)), idx[c])))


def _check_rule(rule, criteria: Sequence[str]):
    if isinstance(rule, str):
        if rule not in REPRESENTATIVE_RULES:
            raise LeancnnError(f"unknown representative rule {rule!r}; use one of "
                               f"{', '.join(REPRESENTATIVE_RULES)} or a preference list of criterion names")
        return rule
    rule = [str(c) for c in rule]
    unknown = [c for c in rule if c not in criteria]
    if unknown:
        raise LeancnnError(f"representative preference list names unknown criteria {unknown}; known: "
                           f"{list(criteria)}")
    return rule


def cluster_matrix(corr: np.ndarray, criteria: Sequence[str], threshold: float = 0.9, linkage: str = "average",
                   representative: str | Sequence[str] = "least_correlated", scope: str = "network") -> Clustering:
    """Agglomerative clustering of one K x K correlation matrix on 1 - ρ, cut where clusters have ρ >= threshold."""
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as scipy_linkage
    from scipy.spatial.distance import squareform

    if linkage not in LINKAGES:
        raise LeancnnError(f"unknown linkage {linkage!r}; use one of {', '.join(LINKAGES)} (distances are 1 - rho, "
                           f"not Euclidean, so centroid/median/ward are not offered)")
    if not (isinstance(threshold, (int, float)) and -1.0 <= threshold <= 1.0):
        raise LeancnnError(f"threshold must be a correlation in [-1, 1], got {threshold!r}")
    criteria = [str(c) for c in criteria]
    rule = _check_rule(representative, criteria)
    corr = np.asarray(corr, dtype=np.float64)
    k = len(criteria)
    if corr.shape != (k, k):
        raise LeancnnError(f"correlation matrix has shape {corr.shape}, expected ({k}, {k}) for {criteria}")
    if k == 1:
        labels = np.array([1])
    else:
        dist = np.clip(1.0 - (corr + corr.T) / 2, 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        z = scipy_linkage(squareform(dist, checks=False), method=linkage)
        labels = fcluster(z, t=(1.0 - threshold) + 1e-9, criterion="distance")
    members: dict[int, list[str]] = {}
    for c, lab in zip(criteria, labels):
        members.setdefault(int(lab), []).append(c)
    clusters = sorted((tuple(m) for m in members.values()), key=lambda m: criteria.index(m[0]))
    ranked = [_rank_members(m, criteria, corr, rule) for m in clusters]
    return Clustering(scope=scope, criteria=tuple(criteria), corr=corr, clusters=clusters, ranked=ranked)


def _fmt_set(members: Sequence[str]) -> str:
    return "{" + ", ".join(members) + "}"


@dataclass
class ClusterResult:
    """Network-level and per-layer clusterings of the criteria, with a summary of their agreement."""

    criteria: tuple[str, ...]
    method: str
    threshold: float
    linkage: str
    representative: str | list[str]
    correlations: Correlations
    network: Clustering
    layers: dict[str, Clustering]  # empty unless per_layer
    co_occurrence: np.ndarray | None  # K x K: in how many layers criteria i and j share a cluster

    @property
    def clusters(self) -> list[tuple[str, ...]]:
        """The network-level clusters."""
        return self.network.clusters

    @property
    def representatives(self) -> list[str]:
        """One network-level representative per cluster."""
        return self.network.representatives

    def candidates(self, per_cluster: int = 1) -> list[str]:
        """The blending candidates: the ``per_cluster`` best-ranked members of each network-level cluster."""
        if not isinstance(per_cluster, int) or per_cluster < 1:
            raise LeancnnError(f"per_cluster must be an integer >= 1, got {per_cluster!r}")
        return [c for r in self.network.ranked for c in r[:per_cluster]]

    def together(self, names: Sequence[str]) -> int:
        """In how many layers all ``names`` fall in one cluster (needs ``per_layer=True``)."""
        unknown = [c for c in names if c not in self.criteria]
        if unknown:
            raise LeancnnError(f"unknown criteria {unknown}; known: {list(self.criteria)}")
        if not self.layers:
            raise LeancnnError("no per-layer clustering: run cluster_criteria(..., per_layer=True)")
        return sum(len({lay.labels[c] for c in names}) <= 1 for lay in self.layers.values())

    def layer_partitions(self) -> list[tuple[tuple[str, ...], int]]:
        """Each distinct multi-member layer cluster and in how many layers it occurs, most frequent first."""
        counts: dict[tuple[str, ...], int] = {}
        for lay in self.layers.values():
            for members in lay.clusters:
                if len(members) > 1:
                    counts[members] = counts.get(members, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], [self.criteria.index(c) for c in kv[0]]))

    def summary(self, top: int = 6) -> str:
        cor = self.correlations
        n = len(cor.groups)
        lines = [f"criteria clustering: {cor.method} rank correlation, {self.linkage} linkage, cut at "
                 f"rho >= {self.threshold:g}, {len(self.criteria)} criteria over {n} group(s)"
                 + (" (channel-weighted mean)" if cor.weighted else ""),
                 f"network (mean correlation): {len(self.network.clusters)} cluster(s)"]
        for members, ranked in zip(self.network.clusters, self.network.ranked):
            line = f"  {_fmt_set(members)} -> {ranked[0]}"
            if len(members) > 1:
                idx = [self.criteria.index(c) for c in members]
                sub = cor.mean[np.ix_(idx, idx)]
                line += f"   mean rho {sub[np.triu_indices(len(idx), 1)].mean():.2f}"
                if self.layers:
                    line += f", together in {self.together(members)} of {len(self.layers)} layers"
            lines.append(line)
        if self.layers:
            sizes = [len(lay.clusters) for lay in self.layers.values()]
            lines.append(f"per layer: {min(sizes)} to {max(sizes)} clusters (median {float(np.median(sizes)):g})")
            parts = self.layer_partitions()
            if parts:
                lines.append("most frequent layer clusters:")
                for members, count in parts[:top]:
                    lines.append(f"  {', '.join(members)} together in {count} of {len(self.layers)} layers")
            else:
                lines.append("no two criteria share a cluster in any layer")
        lines.extend(f"note: {s}" for s in cor.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "criteria": list(self.criteria), "method": self.method, "threshold": self.threshold,
            "linkage": self.linkage, "representative": self.representative,
            "network": self.network.to_dict(), "candidates": self.candidates(),
            "layers": {g: lay.to_dict() for g, lay in self.layers.items()},
            "co_occurrence": None if self.co_occurrence is None else self.co_occurrence.astype(int).tolist(),
            "layer_partitions": [[list(m), c] for m, c in self.layer_partitions()],
            "correlations": self.correlations.to_dict(),
            "summary": self.summary(),
        }


def cluster_criteria(scores: Mapping[str, Mapping[str, np.ndarray]] | Correlations, threshold: float = 0.9,
                     linkage: str = "average", method: str = "spearman", per_layer: bool = True,
                     representative: str | Sequence[str] = "least_correlated", weighted: bool = False,
                     criteria: Sequence[str] | None = None) -> ClusterResult:
    """Cluster the criteria on the network-mean correlation and (``per_layer``) in every group.

    ``scores`` is a score table, or a :class:`Correlations` already computed (then ``method``, ``weighted`` and
    ``criteria`` are taken from it). See the module docstring for the rules.
    """
    cor = scores if isinstance(scores, Correlations) else correlations(scores, method=method, weighted=weighted,
                                                                      criteria=criteria)
    crit = list(cor.criteria)
    rule = _check_rule(representative, crit)
    network = cluster_matrix(cor.mean, crit, threshold=threshold, linkage=linkage, representative=rule,
                             scope="network")
    layers: dict[str, Clustering] = {}
    co = None
    if per_layer:
        k = len(crit)
        co = np.zeros((k, k), dtype=np.int64)
        for g in cor.groups:
            lay = cluster_matrix(cor.per_group[g], crit, threshold=threshold, linkage=linkage, representative=rule,
                                 scope=g)
            layers[g] = lay
            lab = np.array([lay.labels[c] for c in crit])
            co += (lab[:, None] == lab[None, :]).astype(np.int64)
    return ClusterResult(criteria=tuple(crit), method=cor.method, threshold=float(threshold), linkage=linkage,
                         representative=rule, correlations=cor, network=network, layers=layers, co_occurrence=co)


# ----------------------------------------------------------------------------------------------------------------
# figure


def _pick_layers(result: ClusterResult, layers) -> list[str]:
    groups = list(result.correlations.groups)
    if layers is None:
        n = len(groups)
        idx = sorted({0, (n - 1) // 2, n - 1}) if n > 1 else []
        return [groups[i] for i in idx]
    out = []
    for item in layers:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -len(groups) <= item < len(groups):
                raise LeancnnError(f"layer index {item} out of range for {len(groups)} groups")
            out.append(groups[item])
        elif str(item) in groups:
            out.append(str(item))
        else:
            raise LeancnnError(f"unknown layer {item!r}; groups are e.g. {groups[:5]}")
    return out


def _heatmap(ax, corr: np.ndarray, labels: Sequence[str], clusters: Sequence[Sequence[str]] | None,
             fontsize: float, title: str, bold: Sequence[str] = ()):
    from matplotlib.patches import Rectangle

    order = [c for members in clusters for c in members] if clusters else list(labels)
    idx = [list(labels).index(c) for c in order]
    m = corr[np.ix_(idx, idx)]
    k = len(order)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(order, rotation=45, ha="right", fontsize=fontsize + 1)
    ax.set_yticklabels(order, fontsize=fontsize + 1)
    for tick in list(ax.get_xticklabels()) + list(ax.get_yticklabels()):
        if tick.get_text() in bold:
            tick.set_fontweight("bold")
    for i in range(k):
        for j in range(k):
            v = m[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if abs(v) > 0.6 else "black")
    if clusters:
        start = 0
        for members in clusters:
            size = len(members)
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor="black",
                                   linewidth=2.0))
            start += size
    ax.set_title(title, fontsize=fontsize + 3)
    return im


def plot_correlations(result: ClusterResult, path: str | Path, layers: Sequence[str | int] | None = None) -> Path:
    """Heatmap PNG (or any figure suffix): the network-mean correlation with cluster boxes (criteria reordered so
    each cluster is a block; representatives in bold), and small panels for ``layers`` (default first, middle,
    last group; ``[]`` for none), each ordered and boxed by its own clustering when ``per_layer`` was used."""
    from ..report import _pyplot, save_figure

    plt = _pyplot()
    names = _pick_layers(result, layers)
    k = len(result.criteria)
    cor = result.correlations
    n = len(names)
    main = max(4.5, 0.75 * k + 1.5)
    fs = max(6.0, 10 - k * 0.25)
    if n:
        cols = 1 if n == 1 else 2
        rows = math.ceil(n / cols)
        side = main / max(rows, 2) * 1.1
        fig = plt.figure(figsize=(main * 1.3 + side * cols, max(main, side * rows)))
        outer = fig.add_gridspec(1, 2, width_ratios=[main * 1.3, side * cols])
        ax_main = fig.add_subplot(outer[0])
        inner = outer[1].subgridspec(rows, cols)
        panel_axes = [fig.add_subplot(inner[i // cols, i % cols]) for i in range(n)]
    else:
        fig, ax_main = plt.subplots(figsize=(main * 1.3, main))
        panel_axes = []
    label = "Spearman ρ" if cor.method == "spearman" else "Kendall τ"
    im = _heatmap(ax_main, cor.mean, result.criteria, result.network.clusters, fontsize=fs,
                  title=f"network mean {label} over {len(cor.groups)} groups: {len(result.network.clusters)} "
                        f"clusters at ≥ {result.threshold:g} (bold: representatives)", bold=result.representatives)
    fig.colorbar(im, ax=ax_main, fraction=0.046, pad=0.04, label=label)
    small = max(4.5, fs * (side / main) * 1.5) if n else fs
    for ax, g in zip(panel_axes, names):
        lay = result.layers.get(g)
        title = f"{g} ({cor.channels[g]} ch" + (f", {len(lay.clusters)} clusters)" if lay else ")")
        _heatmap(ax, cor.per_group[g], result.criteria, lay.clusters if lay else None, fontsize=small, title=title,
                 bold=lay.representatives if lay else ())
    return save_figure(fig, path)
