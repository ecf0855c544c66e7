"""DomainBalancedSampler: [A | B] layout per (local) batch, epochs, determinism, DDP dealing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from leancnn.data.samplers import DomainBalancedSampler

LABELS = torch.tensor([0] * 50 + [1] * 40 + [2] * 70)  # three domains of unequal size


def blocks(batch: list[int], k: int) -> list[set[int]]:
    return [set(LABELS[batch[i:i + k]].tolist()) for i in range(0, len(batch), k)]


def test_layout_two_domains_contiguous():
    s = DomainBalancedSampler(LABELS, n_domains=2, k=8, seed=1)
    batches = s.local_batches()
    assert batches and all(len(b) == 16 for b in batches)
    for b in batches:
        halves = blocks(b, 8)
        assert all(len(h) == 1 for h in halves) and halves[0] != halves[1]  # [A × 8 | B × 8], A != B
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == len(s)  # no index twice within an epoch; len() exact


def test_epochs_and_determinism():
    a = DomainBalancedSampler(LABELS, 2, 8, seed=3)
    b = DomainBalancedSampler(LABELS, 2, 8, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(DomainBalancedSampler(LABELS, 2, 8, seed=4)) != list(DomainBalancedSampler(LABELS, 2, 8, seed=3))


def test_all_domains_per_batch():
    s = DomainBalancedSampler(LABELS, n_domains=3, k=5)
    for b in s.local_batches():
        assert sorted(min(h) for h in blocks(b, 5)) == [0, 1, 2]
    assert len(s.local_batches()) == 40 // 5  # the smallest domain runs out first


def test_ddp_ranks_keep_the_layout_and_share_nothing():
    ranks = [DomainBalancedSampler(LABELS, 2, 8, seed=0, rank=r, world_size=2) for r in range(2)]
    local = [s.local_batches() for s in ranks]
    assert len(local[0]) == len(local[1]) > 0
    for batches in local:
        for b in batches:
            halves = blocks(b, 8)
            assert all(len(h) == 1 for h in halves) and halves[0] != halves[1]
    seen = [i for batches in local for b in batches for i in b]
    assert len(seen) == len(set(seen))
    # the pitfall it avoids: with plain DDP sharding (DistributedSampler), a local batch's halves hold
    # samples of several domains, so "crossdomain" partners would often come from the same domain
    plain = list(DistributedSampler(range(len(LABELS)), num_replicas=2, rank=0, shuffle=True, seed=0))
    assert any(len(h) > 1 for i in range(0, len(plain) - 15, 16) for h in blocks(plain[i:i + 16], 8))


def test_works_with_a_dataloader():
    ds = TensorDataset(torch.arange(len(LABELS)), LABELS)
    s = DomainBalancedSampler(LABELS, 2, 4, seed=0)
    for x, d in DataLoader(ds, batch_size=s.batch_size, sampler=s):
        assert len(set(d[:4].tolist())) == 1 and len(set(d[4:].tolist())) == 1 and d[0] != d[4]


def test_bad_input():
    with pytest.raises(ValueError, match="needs 2 distinct domains but the data has 1"):
        DomainBalancedSampler(torch.zeros(10), 2, 2)
    with pytest.raises(ValueError, match="fewer than 2 domains have k=55 samples"):
        DomainBalancedSampler(LABELS, 2, 55)
    with pytest.raises(ValueError, match="rank must be in"):
        DomainBalancedSampler(LABELS, 2, 4, rank=2, world_size=2)
