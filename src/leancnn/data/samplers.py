"""Domain-balanced sampling for MixStyle's cross-domain mode (Dassl ``RandomDomainSampler``, made DDP-aware), and
P x K identity sampling for the batch-hard triplet loss of instance retrieval (:class:`PKSampler`, below).

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


class _DealtBatches(Sampler[int]):
    """What both samplers share: an epoch's global batches (:meth:`global_batches`, seeded by seed and epoch) dealt
    out batch by batch to the DDP ranks (rank r gets batches r, r + W, ...; truncated to a multiple of W)."""

    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    batch_size: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def local_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[int]:
        for batch in self.local_batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.local_batches()) * self.batch_size


class DomainBalancedSampler(_DealtBatches):
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



class PKSampler(_DealtBatches):
    """P identities x K samples per batch, for the batch-hard triplet loss (torchreid's ``RandomIdentitySampler``,
    made deterministic per epoch and DDP-aware like :class:`DomainBalancedSampler`).

    Each epoch (seeded by ``seed`` and the epoch): every identity's indices are shuffled and cut into chunks of K
    (an identity with fewer than K samples, or a last chunk short of K, is filled by drawing its own samples again
    with replacement, as torchreid); then batches take P distinct identities at random among those with chunks left,
    one chunk each, until fewer than P identities have chunks left. A batch is laid out ``[id a x K | id b x K |
    ...]``. Under DDP the batches are dealt out as in :class:`DomainBalancedSampler`. Use with
    ``DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler)``."""

    def __init__(self, labels: Sequence[int] | torch.Tensor, p: int = 8, k: int = 4, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if p < 2 or k < 2:
            raise ValueError(f"a P x K batch needs p >= 2 identities and k >= 2 samples each, got p={p}, k={k}")
        ids = sorted(set(labels.tolist()))
        if len(ids) < p:
            raise ValueError(f"a batch needs {p} distinct identities but the data has {len(ids)}; lower p")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.by_id = {i: torch.nonzero(labels == i).flatten() for i in ids}
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, seed, rank, world_size
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def global_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        chunks: dict[int, list[list[int]]] = {}
        for i, idx in self.by_id.items():
            pool = idx[torch.randperm(len(idx), generator=g)].tolist()
            short = -len(pool) % self.k
            if short:  # fill the last chunk with the identity's own samples drawn again
                pool += idx[torch.randint(len(idx), (short,), generator=g)].tolist()
            chunks[i] = [pool[j:j + self.k] for j in range(0, len(pool), self.k)]
        batches = []
        while True:
            left = [i for i, c in chunks.items() if c]
            if len(left) < self.p:
                return batches
            chosen = [left[j] for j in torch.randperm(len(left), generator=g)[: self.p].tolist()]
            batches.append([x for i in chosen for x in chunks[i].pop()])

