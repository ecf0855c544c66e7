"""Training throughput of ResNet-20 at 32x32 (images/s), 1 and 2 threads -> docs/benchmarks.md.

    python benchmarks/train_throughput.py [--steps 30] [--repeats 5] [--batch 128]

Two measurements per thread count, interleaved over repeats (the machine is shared, so each is the median):
* step: forward + backward + SGD step on a fixed batch of real digit images (the model alone);
* engine: one epoch of leancnn's Trainer on the same number of images, data loading and bookkeeping included.
The engine/step ratio is the overhead of the training engine, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import DOCS, command, machine
from torch.utils.data import Subset

from leancnn import create_model, report
from leancnn.config import OptimConfig, ScheduleConfig
from leancnn.data import DOMAINS, DigitsDataset
from leancnn.tasks.classify import train_loader
from leancnn.train import DistContext, Trainer, build_optimizer, build_scheduler


def step_rate(model, x, y, opt, steps: int, warmup: int = 3) -> float:
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - start)


def engine_rate(ds, batch: int, steps: int) -> float:
    model = create_model("resnet20")
    subset = Subset(ds, range(batch * (steps + 1)))
    loader = train_loader(subset, batch, seed=0, ctx=DistContext())
    opt = build_optimizer(model, OptimConfig())
    sched = build_scheduler(opt, ScheduleConfig(name="constant"), 1, len(loader))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, torch.nn.CrossEntropyLoss(), opt, sched, loader, None, 1, tmp, torch.device("cpu"))
        x, y, _ = next(iter(loader))  # warm-up outside the timed epoch
        step_rate(model, x, y, opt, 1, warmup=2)
        return trainer.train_one_epoch()["train_images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    ds = DigitsDataset(list(DOMAINS), "train", seed=0)  # 11,758 images
    if args.batch * (args.steps + 1) > len(ds):
        ap.error(f"--batch x (--steps + 1) must be at most {len(ds)}")
    x = torch.stack([ds[i][0] for i in range(args.batch)])
    y = torch.tensor([ds[i][1] for i in range(args.batch)])
    threads = [1, 2]
    rates = {(t, kind): [] for t in threads for kind in ("step", "engine")}
    for r in range(args.repeats):
        for t in threads:
            torch.set_num_threads(t)
            torch.manual_seed(r)
            model = create_model("resnet20")
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            rates[(t, "step")].append(step_rate(model, x, y, opt, args.steps))
            rates[(t, "engine")].append(engine_rate(ds, args.batch, args.steps))
            print(f"repeat {r + 1}/{args.repeats}, {t} thread(s): step {rates[(t, 'step')][-1]:.0f} img/s, "
                  f"engine {rates[(t, 'engine')][-1]:.0f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [[t, f"{med[(t, 'step')]:.0f}", f"{min(rates[(t, 'step')]):.0f}–{max(rates[(t, 'step')]):.0f}",
             f"{med[(t, 'engine')]:.0f}", f"{med[(t, 'engine')] / med[(t, 'step')]:.2f}",
             f"{med[(t, 'step')] / med[(1, 'step')]:.2f}"] for t in threads]
    table = report.format_table(rows, ["threads", "step img/s (median)", "step range", "engine img/s (median)",
                                       "engine / step", "speed-up vs 1 thread"], markdown=True)
    print(table)
    if args.no_docs:
        return
    body = (f"ResNet-20 (40.55M MACs per image), 32×32 inputs, batch {args.batch}, SGD with momentum, float32 on the CPU. "
            f"*step*: forward + backward + optimiser step on one fixed batch of real digit images, {args.steps} timed "
            f"steps after 3 warm-up steps; *engine*: one epoch of `leancnn.train.Trainer` over {args.steps + 1} batches "
            f"(data loading, metrics and progress bookkeeping included). Medians of {args.repeats} repeats, thread "
            f"counts interleaved. Absolute images/s are for this machine only; the ratios are measured in the same run."
            f"\n\n{table}\n\nCommand: `{command()}`  \nMachine: {machine()}")
    report.update_doc_section(DOCS / "benchmarks.md", "train-throughput", body,
                              "Training throughput: ResNet-20 at 32×32 on the CPU")


if __name__ == "__main__":
    main()
