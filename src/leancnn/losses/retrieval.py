"""Instance retrieval (re-identification): the ranking protocol (CMC and mAP) and the batch-hard triplet loss.

**Protocol** (:func:`evaluate_ranking`, as torchreid's ``eval_market1501`` and the re-ID literature compute it):
every query ranks the whole gallery by distance (ascending; ties keep the gallery order, i.e. a stable sort). Gallery
samples of the **same identity seen by the same camera (view)** as the query are removed from its ranking ("junk":
finding the same shot again is not re-identification); samples of other identities stay as distractors. Of what is
left, the *matches* are the samples of the query's identity.

* CMC rank-k of a query: 1 if a match is among its first k remaining gallery samples, else 0; the CMC curve is the
  mean over the **valid** queries (those with at least one match left); rank-1/5/10 are its entries 1, 5, 10.
* AP of a query: the mean, over its matches, of the precision at each match's rank (matches above / rank);
  mAP is the mean AP over the valid queries.
* A query with no match left after the junk removal is skipped and counted (``skipped``); when none is valid the
  evaluation refuses (one line).

Distances (:func:`pairwise_distance`): Euclidean, not squared (``euclidean``), or ``cosine`` (1 - cosine
similarity of L2-normalised features), as torchreid's ``compute_distance_matrix`` (its euclidean is squared; the
ranking is the same).

**Batch-hard triplet loss** (:class:`TripletLoss`, Hermans et al. 2017, the form torchreid trains with): for every
anchor of a batch, its hardest positive (the farthest sample of its identity, itself excluded) and hardest negative
(the nearest sample of another identity), ``max(0, d_ap - d_an + margin)`` averaged over the anchors that have both
(an anchor alone with its identity has no positive and is left out, as an anchor in a batch of one identity has no
negative). ``margin=None`` gives the soft-margin form ``log(1 + exp(d_ap - d_an))``. Meant for P x K batches
(:class:`leancnn.data.samplers.PKSampler`). Under DDP each rank mines within its own batch (as torchreid).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LeancnnError

METRICS = ("euclidean", "cosine")


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``[n, m]`` distances between the rows of ``a`` ``[n, d]`` and ``b`` ``[m, d]``."""
    if metric not in METRICS:
        raise LeancnnError(f"metric must be one of {METRICS}, got {metric!r}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise LeancnnError(f"features must be [n, d] and [m, d] with the same d, got {tuple(a.shape)} and "
                           f"{tuple(b.shape)}")
    if metric == "cosine":
        return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    return torch.cdist(a, b)


def _as_array(x, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise LeancnnError(f"{name} must be a 1-D array of {n if n is not None else 'the'} labels, got shape "
                           f"{arr.shape}")
    return arr


def evaluate_ranking(distmat, q_pids: Sequence, g_pids: Sequence, q_camids: Sequence | None = None,
                     g_camids: Sequence | None = None, max_rank: int = 50) -> dict:
    """CMC and mAP of a query x gallery distance matrix (module docstring). Camera ids ``None``: every sample its
    own camera, nothing is junk. Returns ``{"cmc": [max_rank floats], "rank1", "rank5", "rank10", "mAP",
    "queries": valid queries, "skipped": queries without a match}``."""
    d = np.asarray(distmat.detach().cpu() if isinstance(distmat, torch.Tensor) else distmat, dtype=np.float64)
    if d.ndim != 2 or 0 in d.shape:
        raise LeancnnError(f"the distance matrix must be [queries, gallery] and not empty, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise LeancnnError("the distance matrix holds NaN or inf (features diverged?)")
    nq, ng = d.shape
    qp, gp = _as_array(q_pids, "q_pids", nq), _as_array(g_pids, "g_pids", ng)
    qc = _as_array(q_camids, "q_camids", nq) if q_camids is not None else np.arange(nq) - nq - 1
    gc = _as_array(g_camids, "g_camids", ng) if g_camids is not None else np.arange(ng) + 1
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise LeancnnError(f"max_rank must be a positive int, got {max_rank!r}")
    order = np.argsort(d, axis=1, kind="stable")
    cmcs, aps, skipped = [], [], 0
    for i in range(nq):
        ranked = order[i]
        keep = ~((gp[ranked] == qp[i]) & (gc[ranked] == qc[i]))
        hits = (gp[ranked][keep] == qp[i]).astype(np.float64)
        if not hits.any():
            skipped += 1
            continue
        cmc = np.minimum(hits.cumsum(), 1.0)
        cmcs.append(np.pad(cmc[:max_rank], (0, max(0, max_rank - len(cmc))), mode="edge"))
        positions = np.flatnonzero(hits) + 1.0  # 1-based ranks of the matches
        aps.append(float(np.mean(np.arange(1, len(positions) + 1) / positions)))
    if not cmcs:
        raise LeancnnError(f"no query has a match in the gallery (all {nq} skipped): are the query and gallery "
                           "identities the same, and do they come from other cameras/views?")
    cmc = np.mean(cmcs, axis=0)
    pick = {k: float(cmc[min(k, max_rank) - 1]) for k in (1, 5, 10)}
    return {"cmc": cmc.tolist(), "rank1": pick[1], "rank5": pick[5], "rank10": pick[10], "mAP": float(np.mean(aps)),
            "queries": len(cmcs), "skipped": skipped}


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on features ``[B, d]`` and identity labels ``[B]`` (module docstring)."""

    def __init__(self, margin: float | None = 0.3, metric: str = "euclidean"):
        super().__init__()
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0):
            raise LeancnnError(f"margin must be a number >= 0 or None (soft margin), got {margin!r}")
        if metric not in METRICS:
            raise LeancnnError(f"metric must be one of {METRICS}, got {metric!r}")
        self.margin, self.metric = margin, metric

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or labels.ndim != 1 or len(labels) != len(features):
            raise LeancnnError(f"features must be [B, d] and labels [B], got {tuple(features.shape)} and "
                               f"{tuple(labels.shape)}")
        if self.metric == "euclidean":  # the gradient of sqrt at 0 (the diagonal) is inf: clamp as torchreid
            sq = (features.unsqueeze(1) - features.unsqueeze(0)).pow(2).sum(-1)
            dist = sq.clamp_min(1e-12).sqrt()
        else:
            dist = pairwise_distance(features, features, "cosine")
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            raise LeancnnError("the triplet loss needs, in one batch, an identity with two samples and another "
                               "identity (use P x K batches: data.sampler=pk)")
        d_ap = dist.masked_fill(~pos, float("-inf")).amax(1)[valid]
        d_an = dist.masked_fill(~neg, float("inf")).amin(1)[valid]
        if self.margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()


__all__ = ["METRICS", "TripletLoss", "evaluate_ranking", "pairwise_distance"]
