"""Cross-validation splits of registration pairs: k folds by pair, or by group (e.g. patient)."""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from ...errors import LeancnnError
from .nifti import _few

__all__ = ["kfold_ids"]


def kfold_ids(ids: Sequence[str], k: int, seed: int = 0, groups: Sequence | None = None
              ) -> list[tuple[list[str], list[str]]]:
    """k-fold cross-validation by pair: ``[(train_ids, test_ids)] * k``. The ids are shuffled (seeded) and dealt
    into k test folds whose sizes differ by at most one; every id is in exactly one test fold, and each list keeps
    the input order. With ``groups`` (one per id, e.g. the patient), whole groups go to one fold (largest
    groups first, each to the currently smallest fold, ties broken by the shuffle)."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise LeancnnError(f"kfold_ids: repeated ids {_few(sorted({i for i in ids if ids.count(i) > 1}))}")
    if groups is None:
        groups = ids
    groups = list(groups)
    if len(groups) != len(ids):
        raise LeancnnError(f"kfold_ids: {len(groups)} groups for {len(ids)} ids")
    members: dict = {}
    for vid, g in zip(ids, groups):
        members.setdefault(g, []).append(vid)
    if not isinstance(k, numbers.Integral) or not 2 <= k <= len(members):
        raise LeancnnError(f"kfold_ids: k must be an int in [2, {len(members)}] (the number of "
                           f"{'groups' if len(members) < len(ids) else 'ids'}), got {k!r}")
    keys = list(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [keys[o] for o in order]
    folds: list[list[str]] = [[] for _ in range(k)]
    if len(members) == len(ids):  # one id per group: deal round-robin
        for j, g in enumerate(shuffled):
            folds[j % k].extend(members[g])
    else:
        for g in sorted(shuffled, key=lambda g: -len(members[g])):  # stable: ties keep the shuffle
            min(folds, key=len).extend(members[g])
    pos = {vid: n for n, vid in enumerate(ids)}
    out = []
    for j in range(k):
        test = sorted(folds[j], key=pos.__getitem__)
        held = set(test)
        out.append(([i for i in ids if i not in held], test))
    return out
