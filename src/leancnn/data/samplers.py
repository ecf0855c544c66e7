"""Domain-balanced sampling for MixStyle's cross-domain mode (Dassl ``RandomDomainSampler``, made DDP-aware).

Every (local) batch holds ``n_domains`` distinct domains × ``k`` samples each, laid out contiguously:
``[domain a × k | domain b × k | ...]``. With ``n_domains=2`` that is exactly the [A | B] layout that
``MixStyle(mix="crossdomain")`` expects.

Epoch semantics (as Dassl): at the start of an epoch every domain's indices are shuffled (seeded by
``seed`` and the epoch); each batch draws ``n_domains`` distinct domains at random and takes the next ``k``
unused indices of each; the epoch ends as soon as a drawn domain has fewer than ``k`` left. No index repeats
within an epoch; ``len()`` is exact (the epoch is simulated), and changes with ``set_epoch``.
With unequal domains this makes short epochs (a small domain runs out early). ``length=N`` instead gives every
epoch exactly N batches (counted before dealing them out to DDP ranks): a domain that runs short is reshuffled and drawn again (its few unused
leftovers are skipped). ``leancnn train`` uses ``length = len(dataset) // global batch`` so that a
domain-balanced run takes as many steps per epoch as a run with the plain shuffling sampler.

Under DDP the global sequence of batches is dealt out batch by batch: rank r gets batches r, r + W, r + 2W, …
(truncated to a multiple of W so every rank has the same length). Each rank's **local** batch therefore keeps
the [A | B] layout, and no index is used by two ranks in one epoch. (With plain DDP sharding by
``DistributedSampler`` each half of a local batch holds samples of several domains, so cross-domain partners
would often come from the same domain.)
Use with ``DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler)``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class DomainBalancedSampler(Sampler[int]):
    def __init__(self, domain_labels: Sequence[int] | torch.Tensor, n_domains: int = 2, k: int = 32,
                 seed: int = 0, rank: int = 0, world_size: int = 1, length: int | None = None):
        labels = torch.as_tensor(domain_labels, dtype=torch.long)
        domains = sorted(set(labels.tolist()))
        if n_domains < 1 or k < 1:
            raise ValueError(f"n_domains and k must be >= 1, got n_domains={n_domains}, k={k}")
        if len(domains) < n_domains:
            raise ValueError(f"a batch needs {n_domains} distinct domains but the data has {len(domains)} "
                             f"({', '.join(map(str, domains)) or 'none'}); cross-domain mixing needs at least two")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.by_domain = {d: torch.nonzero(labels == d).flatten() for d in domains}
        small = [d for d, idx in self.by_domain.items() if len(idx) < k]
        if len(domains) - len(small) < n_domains:
            raise ValueError(f"fewer than {n_domains} domains have k={k} samples; lower k")
        self.n_domains, self.k, self.seed = n_domains, k, seed
        if length is not None and length < 1:
            raise ValueError(f"length must be >= 1 batch, got {length}")
        self.rank, self.world_size = rank, world_size
        self.length = length
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        """The local batch size: n_domains × k."""
        return self.n_domains * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches over all ranks, each ``[d1 × k | d2 × k | ...]``."""
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        pools = {d: idx[torch.randperm(len(idx), generator=g)].tolist() for d, idx in self.by_domain.items()}
        pos = dict.fromkeys(pools, 0)
        domains = list(pools)
        batches = []
        eligible = [d for d in domains if len(pools[d]) >= self.k]
        while self.length is None or len(batches) < self.length:
            if self.length is None:
                chosen = [domains[i] for i in torch.randperm(len(domains), generator=g)[: self.n_domains].tolist()]
            else:
                chosen = [eligible[i] for i in torch.randperm(len(eligible), generator=g)[: self.n_domains].tolist()]
            if any(len(pools[d]) - pos[d] < self.k for d in chosen):
                if self.length is None:
                    return batches
                for d in chosen:  # fixed length: a domain that runs short starts a fresh shuffle
                    if len(pools[d]) - pos[d] < self.k:
                        pools[d] = [pools[d][i] for i in torch.randperm(len(pools[d]), generator=g).tolist()]
                        pos[d] = 0
            batch = []
            for d in chosen:
                batch += pools[d][pos[d]: pos[d] + self.k]
                pos[d] += self.k
            batches.append(batch)
        return batches

    def local_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[int]:
        for batch in self.local_batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.local_batches()) * self.batch_size
