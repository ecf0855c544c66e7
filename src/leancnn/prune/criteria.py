"""Filter-importance criteria: one score per output channel of each prunable group (higher = more important).

Every criterion is a small class with ``name``, ``needs_data`` and ``needs_grad``. Weight criteria look at the
group's *root conv* (the classic single-layer criteria, not Torch-Pruning's group scores summed over all
coupled layers); data-driven criteria accumulate statistics of the root conv's output over calibration
batches through forward hooks (and one backward pass per batch for ``taylor``). A criterion computed from
other criteria's scores (the blend of :mod:`leancnn.prune.blend`) derives from :class:`CompositeCriterion`.

=========== ====== ========================================================================================
name        data   score of output channel ``c``
=========== ====== ========================================================================================
``l1``      no     ``sum |W_c|`` of the root conv's filter ``c`` (Li et al. 2017)
``l2``      no     ``||W_c||_2``
``fpgm``    no     ``sum_j ||W_c - W_j||_2`` over the root conv's filters, on the *signed* weights: the filter
                   nearest the geometric median scores lowest (He et al. 2019; Torch-Pruning's
                   ``FPGMImportance`` takes distances between ``|W|^p`` instead, which is not FPGM)
``bn``      no     ``|gamma_c|`` of the BatchNorm right after the root conv (Liu et al. 2017, network
                   slimming); Torch-Pruning's ``BNScaleImportance`` on that BN
``taylor``  grad   ``mean_n |sum_{h,w} a * dL/da|`` with ``a`` the root conv's output after its BatchNorm (or the
                   conv output without one) and ``L`` the cross-entropy of the classifier (summed over the batch, so
                   each sample's gradient is its own): the first-order Taylor estimate of the loss change when the
                   channel is removed (Molchanov et al. 2017/2019)
``act_mean`` yes   mean activation after the nonlinearity (Hu et al. 2016)
``apoz``    yes    ``1 - APoZ``: one minus the average percentage of zeros after the nonlinearity (Hu et al. 2016)
``entropy`` yes    entropy of the histogram (``bins`` bins between the channel's min and max) of the channel's
                   globally average-pooled activation over the calibration samples (Luo & Wu 2017)
``hrank``   yes    average rank of the channel's feature map (an ``H x W`` matrix) over the first
                   ``max_samples`` calibration samples (Lin et al. 2020)
``random``  no     uniform random numbers from a generator seeded by ``seed`` and the group name (control)
=========== ====== ========================================================================================

"After the nonlinearity" is the output of the activation module that follows the root conv (or its BN)
inside the same ``nn.Sequential`` (``ConvBnAct``, the Digits CNN's blocks). Where there is none (the last conv of
a residual block, a MobileNet projection conv, squeeze-excite convs), the root's BN output (conv output
without BN) passed through a ReLU stands in for it.

:func:`compute_scores` computes a whole :class:`ScoreTable` on the unpruned model, once.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import LeancnnError
from .graph import GroupInfo, _graph

__all__ = ["CRITERIA", "CompositeCriterion", "Criterion", "DataCriterion", "GroupContext", "ScoreTable",
           "compute_scores", "get_criterion"]


@dataclass
class GroupContext:
    """What a criterion sees of one group: its metadata, the root conv, the BatchNorm after it (or
    ``None``), the Torch-Pruning group (all indices) and, for data criteria, the accumulated statistics."""

    info: GroupInfo
    root: nn.Module
    bn: nn.Module | None
    group: Any
    stats: dict[str, Any] = field(default_factory=dict)


class Criterion:
    """Base class: ``score(ctx)`` returns a float64 array of ``ctx.info.n_channels`` (higher = keep)."""

    name = "criterion"
    needs_data = False
    needs_grad = False

    def score(self, ctx: GroupContext) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CompositeCriterion(Criterion):
    """Base class of a criterion computed from other criteria's scores instead of from the model (a blend:
    :class:`leancnn.prune.blend.BlendedCriterion`). ``criteria`` names its members; ``blend(scores)`` maps their
    score table (``{group: {member: scores}}``, e.g. a :class:`ScoreTable` of the members) to ``{group: scores}``.
    It has no score of its own per group (``score`` raises), so it is not given to :func:`compute_scores`: its
    members are, and ``blend`` combines their table; :func:`leancnn.prune.prune_model` does both steps."""

    criteria: tuple[str, ...] = ()

    def blend(self, scores) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def score(self, ctx: GroupContext) -> np.ndarray:
        raise LeancnnError(f"criterion '{self.name}' is computed from the scores of {list(self.criteria)}: compute "
                           "those with compute_scores and combine them with its blend(table)")


def _filters(ctx: GroupContext) -> torch.Tensor:
    return ctx.root.weight.detach().to(torch.float64).flatten(1).cpu()


class L1(Criterion):
    """``sum |W_c|`` of the root conv's filter ``c``: the classic single-layer ℓ1 criterion (Li et al. 2017),
    i.e. Torch-Pruning's ``MagnitudeImportance(p=1, group_reduction="first", normalizer=None)``, not its group
    ℓ1 over all coupled layers."""

    name = "l1"

    def score(self, ctx):
        return _filters(ctx).abs().sum(1).numpy()


class L2(Criterion):
    """``||W_c||_2`` of the root conv's filter ``c``: the classic single-layer ℓ2 criterion (not squared, not the
    group score over coupled layers)."""

    name = "l2"

    def score(self, ctx):
        return _filters(ctx).norm(dim=1).numpy()


class FPGM(Criterion):
    """Filter pruning via geometric median (He et al. CVPR 2019): ``sum_j ||W_c - W_j||_2`` over the root conv's
    filters, on the signed weights. Torch-Pruning's ``FPGMImportance`` measures distances between ``|W|^p``
    (a quirk that changes the criterion); it is not used."""

    name = "fpgm"

    def score(self, ctx):
        w = _filters(ctx)
        return torch.cdist(w, w).sum(1).numpy()


class BNScale(Criterion):
    """``|gamma_c|`` of the BatchNorm right after the root conv (network slimming), computed by Torch-Pruning's
    ``BNScaleImportance(group_reduction="first", normalizer=None)``: the root's BN is the first BN of the group.
    A group whose root has no affine BatchNorm after it scores every channel 1 (no preference)."""

    name = "bn"

    def score(self, ctx):
        if ctx.bn is None or not ctx.bn.affine:
            # no BatchNorm scale after this conv (the Digits-DG CNN, squeeze-excite convs): the criterion has no
            # preference there, so every channel scores the same (the clustering reports it as constant)
            return np.ones(ctx.info.n_channels)
        first_bn = next((dep.target.module for dep, _ in ctx.group
                         if isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm)), None)
        if first_bn is ctx.bn and ctx.bn.affine:
            imp = tp.importance.BNScaleImportance(group_reduction="first", normalizer=None)(ctx.group)
            return imp.detach().to(torch.float64).cpu().numpy()
        return ctx.bn.weight.detach().abs().to(torch.float64).cpu().numpy()


class Random(Criterion):
    """Seeded uniform random scores (a control): the same ``seed`` and group name give the same scores."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def score(self, ctx):
        rng = np.random.default_rng([self.seed, zlib.crc32(ctx.info.name.encode())])
        return rng.random(ctx.info.n_channels)

    def __repr__(self):
        return f"Random(seed={self.seed})"


class DataCriterion(Criterion):
    """A criterion computed from calibration data. ``tap`` is where it reads the root's output:
    ``"act"`` (after the nonlinearity) or ``"out"`` (after the root's BN, with the loss gradient).
    ``start(n_channels)`` makes the state, ``update(state, value, grad)`` accumulates a batch
    (``value``: ``(N, C, ...)``, detached float), ``finish(state)`` returns the scores."""

    needs_data = True
    tap = "act"

    def start(self, n_channels: int) -> dict:
        return {"sum": torch.zeros(n_channels, dtype=torch.float64), "n": 0}

    def update(self, state: dict, value: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def finish(self, state: dict) -> np.ndarray:
        if state["n"] == 0:
            raise LeancnnError(f"criterion '{self.name}': no calibration samples reached this layer")
        return (state["sum"] / state["n"]).numpy()

    def score(self, ctx):
        return self.finish(ctx.stats[self.name])


def _per_channel(value: torch.Tensor) -> torch.Tensor:
    """``(N, C, ...)`` -> ``(C, N * positions)`` in float64 on the CPU."""
    return value.detach().to("cpu", torch.float64).transpose(0, 1).reshape(value.shape[1], -1)


class Taylor(DataCriterion):
    """First-order Taylor importance (Molchanov et al. 2017; 2019): ``mean_n |sum_{h,w} a * dL/da|`` on the
    root's post-BN output with the classification loss."""

    name = "taylor"
    needs_grad = True
    tap = "out"

    def update(self, state, value, grad=None):
        prod = (value.detach() * grad.detach()).to("cpu", torch.float64)
        state["sum"] += prod.reshape(prod.shape[0], prod.shape[1], -1).sum(2).abs().sum(0)
        state["n"] += prod.shape[0]


class ActMean(DataCriterion):
    """Mean activation after the nonlinearity (over samples and positions)."""

    name = "act_mean"

    def update(self, state, value, grad=None):
        v = _per_channel(value)
        state["sum"] += v.sum(1)
        state["n"] += v.shape[1]


class APoZ(DataCriterion):
    """``1 - APoZ`` (Hu et al. 2016): the fraction of *non-zero* activations after the nonlinearity, so that a
    channel that is mostly zero scores low."""

    name = "apoz"

    def update(self, state, value, grad=None):
        v = _per_channel(value)
        state["sum"] += (v != 0).sum(1).to(torch.float64)
        state["n"] += v.shape[1]


class Entropy(DataCriterion):
    """Entropy-based importance (Luo & Wu 2017): each sample's activation map is globally average-pooled to
    one value per channel; the entropy (nats) of the histogram of those values over the calibration samples
    (``bins`` equal bins between the channel's min and max) is the score. A constant channel scores 0."""

    name = "entropy"

    def __init__(self, bins: int = 32):
        self.bins = int(bins)

    def start(self, n_channels):
        return {"pooled": []}

    def update(self, state, value, grad=None):
        v = value.detach().to("cpu", torch.float64)
        state["pooled"].append(v.reshape(v.shape[0], v.shape[1], -1).mean(2))

    def finish(self, state):
        if not state["pooled"]:
            raise LeancnnError("criterion 'entropy': no calibration samples reached this layer")
        x = torch.cat(state["pooled"]).numpy()  # (N, C)
        n, c = x.shape
        lo, hi = x.min(0), x.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        idx = np.clip(((x - lo) / span * self.bins).astype(np.int64), 0, self.bins - 1)
        counts = np.zeros((c, self.bins))
        np.add.at(counts, (np.broadcast_to(np.arange(c), (n, c)), idx), 1.0)
        p = counts / n
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
        return np.where(hi > lo, h, 0.0)

    def __repr__(self):
        return f"Entropy(bins={self.bins})"


class HRank(DataCriterion):
    """HRank (Lin et al. CVPR 2020): the average rank of each channel's feature map (``torch.linalg.matrix_rank``
    of the ``H x W`` matrix) over the first ``max_samples`` calibration samples. A vector output (no spatial
    map) has rank 1 where it is non-zero."""

    name = "hrank"

    def __init__(self, max_samples: int = 64):
        self.max_samples = int(max_samples)

    def update(self, state, value, grad=None):
        k = min(value.shape[0], self.max_samples - state["n"])
        if k <= 0:
            return
        v = value[:k].detach().float()
        if v.ndim == 4:
            rank = torch.linalg.matrix_rank(v)
        else:
            rank = (v.reshape(k, v.shape[1], -1) != 0).any(2)
        state["sum"] += rank.to("cpu", torch.float64).sum(0)
        state["n"] += k

    def __repr__(self):
        return f"HRank(max_samples={self.max_samples})"


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in (L1, L2, FPGM, BNScale, Taylor, ActMean, APoZ, Entropy,
                                                           HRank, Random)}


def get_criterion(name: str | Criterion, **kwargs) -> Criterion:
    """The criterion called ``name`` (an instance; ``kwargs`` go to its constructor, e.g. ``seed`` for
    ``random``). A :class:`Criterion` instance is returned as is."""
    if isinstance(name, Criterion):
        return name
    key = str(name).strip().lower()
    if key not in CRITERIA:
        raise LeancnnError(f"unknown pruning criterion '{name}'; known: {', '.join(CRITERIA)}")
    return CRITERIA[key](**kwargs)


class ScoreTable(dict):
    """``{group name: {criterion name: float64 array of n_channels}}`` with the group metadata in ``groups``
    (``{name: GroupInfo}``, in model order) and the criterion names in ``criteria``."""

    def __init__(self, scores: dict, groups: dict[str, GroupInfo], criteria: list[str]):
        super().__init__(scores)
        self.groups = groups
        self.criteria = criteria

    def of(self, criterion: str) -> dict[str, np.ndarray]:
        """``{group name: scores}`` of one criterion (the input of :func:`prune_with_scores`)."""
        if criterion not in self.criteria:
            raise LeancnnError(f"criterion '{criterion}' is not in this score table ({', '.join(self.criteria)})")
        return {g: s[criterion] for g, s in self.items()}


def _batches(data: Iterable, max_batches: int):
    for i, batch in enumerate(data):
        if i >= max_batches:
            return
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            raise LeancnnError("calibration data must yield (x, y) batches or x tensors, got "
                               f"{type(batch).__name__}")


def compute_scores(model: nn.Module, example_inputs: Any, criteria: Sequence[str | Criterion], data: Iterable | None = None,
                   max_batches: int = 4, progress: bool = False, ignored_layers: Iterable[nn.Module | str] = (),
                   include_linear: bool = False) -> ScoreTable:
    """Scores of every criterion in ``criteria`` for every prunable group of ``model`` (a deep copy is used;
    ``model`` is not modified).

    Data-driven criteria read up to ``max_batches`` batches of ``data`` (an iterable of ``(x, y)`` batches, or
    of ``x`` tensors when no criterion needs labels) in eval mode (BatchNorm running statistics, no dropout),
    with forward hooks registered once for all of them and, for ``taylor``, one backward pass of the summed
    cross-entropy per batch. A data-driven criterion without ``data`` raises :class:`LeancnnError` naming it."""
    crits: list[Criterion] = []
    for c in criteria:
        c = get_criterion(c)
        if c.name not in [k.name for k in crits]:
            crits.append(c)
    if not crits:
        raise LeancnnError("no criteria given")
    data_crits = [c for c in crits if c.needs_data]
    if data_crits and data is None:
        raise LeancnnError(f"criteria {[c.name for c in data_crits]} need calibration data (data=None given)")
    graph = _graph(model, example_inputs, ignored_layers, include_linear)
    work = graph.model
    contexts = {g.name: GroupContext(g, graph.root[g.name], work.get_submodule(g.bn) if g.bn else None,
                                     graph.full[g.name]) for g in graph.groups}
    if data_crits:
        _collect(work, graph.groups, contexts, data_crits, data, max_batches, progress)
    table = {}
    for g in graph.groups:
        ctx = contexts[g.name]
        row = {}
        for c in crits:
            s = np.asarray(c.score(ctx), dtype=np.float64).reshape(-1)
            if s.shape != (g.n_channels,):
                raise LeancnnError(f"criterion '{c.name}' gave {s.shape[0]} scores for group '{g.name}' "
                                   f"({g.n_channels} channels)")
            row[c.name] = s
        table[g.name] = row
    return ScoreTable(table, {g.name: g for g in graph.groups}, [c.name for c in crits])


def _collect(work: nn.Module, groups: list[GroupInfo], contexts: dict[str, GroupContext],
             crits: list[DataCriterion], data: Iterable, max_batches: int, progress: bool) -> None:
    for m in work.modules():  # hooks read outputs that an in-place activation would overwrite
        if hasattr(m, "inplace"):
            m.inplace = False
    act_crits = [c for c in crits if c.tap == "act"]
    out_crits = [c for c in crits if c.tap == "out"]
    grad = any(c.needs_grad for c in crits)
    for g in groups:
        contexts[g.name].stats = {c.name: c.start(g.n_channels) for c in crits}
    stash: list[tuple[str, torch.Tensor]] = []
    handles = []

    def act_hook(name):
        def hook(mod, args, out):
            value = out.detach()
            for c in act_crits:
                c.update(contexts[name].stats[c.name], value)
        return hook

    def out_hook(name, relu_for_act):
        def hook(mod, args, out):
            if relu_for_act and act_crits:
                value = F.relu(out.detach())
                for c in act_crits:
                    c.update(contexts[name].stats[c.name], value)
            if out_crits and out.requires_grad:
                stash.append((name, out))
        return hook

    for g in groups:
        out_mod = contexts[g.name].bn if contexts[g.name].bn is not None else contexts[g.name].root
        if g.act is not None and act_crits:
            handles.append(work.get_submodule(g.act).register_forward_hook(act_hook(g.name)))
        handles.append(out_mod.register_forward_hook(out_hook(g.name, g.act is None)))
    modes = {m: m.training for m in work.modules()}
    work.eval()
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    flags = {p: p.requires_grad for p in work.parameters()}
    n_batches = 0
    try:
        for p in work.parameters():
            p.requires_grad_(grad)
        for i, (x, y) in enumerate(_batches(data, max_batches)):
            x = x.to(device)
            if grad and y is None:
                raise LeancnnError(f"criteria {[c.name for c in out_crits]} need labels: give data as (x, y) batches")
            stash.clear()
            with torch.set_grad_enabled(grad):
                out = work(x)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if grad and stash:
                    loss = F.cross_entropy(out, y.to(device), reduction="sum")
                    grads = torch.autograd.grad(loss, [t for _, t in stash], allow_unused=True)
                    for (name, t), gr in zip(stash, grads):
                        gr = torch.zeros_like(t) if gr is None else gr
                        for c in out_crits:
                            c.update(contexts[name].stats[c.name], t.detach(), gr)
            stash.clear()
            n_batches += 1
            if progress:
                print(f"compute_scores: batch {i + 1}/{max_batches}", file=sys.stderr, flush=True)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for p, f in flags.items():
            p.requires_grad_(f)
    if n_batches == 0:
        raise LeancnnError("the calibration data yielded no batches")
