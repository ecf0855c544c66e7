"""Run under ``torchrun --nproc_per_node=2``: record every local batch of ``train_loader`` (domain sampler and,
for contrast, plain DDP sharding) and the crossdomain MixStyle partners, one JSON file per rank."""

import json
import sys

import torch

from leancnn.nn.mixstyle import MixStyle
from leancnn.tasks.classification import train_loader
from leancnn.train import cleanup_distributed, init_distributed


class Indexed(torch.utils.data.Dataset):
    """Sample i is (i, domain of i): 3 domains of unequal size (the smallest has 150)."""

    def __init__(self):
        self.domain_labels = torch.cat([torch.full((n,), d) for d, n in enumerate([400, 300, 150])])

    def __len__(self):
        return len(self.domain_labels)

    def __getitem__(self, i):
        return i, int(self.domain_labels[i])


def main(out: str) -> None:
    ctx = init_distributed(torch.device("cpu"))
    ds = Indexed()
    record = {"rank": ctx.rank, "world_size": ctx.world_size}
    for kind in ("domain", "random"):
        loader = train_loader(ds, batch_size=32, seed=3, ctx=ctx, sampler=kind, domains_per_batch=2)
        ms = MixStyle(p=1.0, mix="crossdomain", generator=torch.Generator().manual_seed(ctx.rank))
        batches = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            for idx, dom in loader:
                perm = ms.partners(len(idx))
                batches.append({"epoch": epoch, "idx": idx.tolist(), "dom": dom.tolist(),
                                "partner_dom": dom[perm].tolist()})
        record[kind] = batches
    with open(f"{out}/rank{ctx.rank}.json", "w") as f:
        json.dump(record, f)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
