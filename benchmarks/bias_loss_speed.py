"""Training-step time of Bias Loss vs cross-entropy on the same model -> docs/benchmarks.md.

    python benchmarks/bias_loss_speed.py [--models resnet20 mobilenetv3_small] [--steps 20] [--repeats 7]

One training step = forward (with the feature tap for Bias Loss) + loss + backward + SGD step, batch 128 of
real 32x32 digit images, 2 threads. The two losses alternate within every repeat (the machine is shared and
noisy); the table gives the median step time of each and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from _common import DOCS, command, machine, median_time, ratio_cells

from leancnn import BiasLoss, create_model, report
from leancnn.data import DOMAINS, DigitsDataset
from leancnn.nn import WithFeatures


def train_step(net, loss_fn, x, y, opt, features: bool):
    """One training step as a closure for :func:`median_time`."""
    def step():
        opt.zero_grad(set_to_none=True)
        if features:
            logits, feats = net(x)
            loss = loss_fn(logits, y, features=feats)
        else:
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv3_small"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = DigitsDataset(list(DOMAINS), "train", seed=0)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: args.batch].tolist()
    x = torch.stack([ds[i][0] for i in idx])
    y = torch.tensor([ds[i][1] for i in idx])
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10)
        tapped = WithFeatures(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)  # small lr: the weights barely move
        ce, bias = nn.CrossEntropyLoss(), BiasLoss()
        t_ce, t_bias = [], []
        for r in range(args.repeats):
            t_ce.append(median_time(train_step(model, ce, x, y, opt, features=False), args.steps))
            t_bias.append(median_time(train_step(tapped, bias, x, y, opt, features=True), args.steps))
            print(f"{name} repeat {r + 1}/{args.repeats}: CE {1e3 * t_ce[-1]:.1f} ms, Bias {1e3 * t_bias[-1]:.1f} ms",
                  flush=True)
        rows.append([name, *ratio_cells(t_ce, t_bias)])
    table = report.format_table(rows, ["model", "CE step (ms, median)", "Bias Loss step (ms, median)",
                                       "ratio Bias / CE", "per-repeat ratio range", "overhead"], markdown=True)
    print(table)
    if args.no_docs:
        return
    body = (f"Training step (forward + loss + backward + SGD step), batch {args.batch} of 32×32 digit images, "
            f"{args.threads} threads, 10 classes; Bias Loss includes the feature tap and the per-sample variance "
            f"of the last feature map. Median of {args.steps} steps per repeat, {args.repeats} repeats alternating "
            f"the two losses; absolute milliseconds are for this machine only, the ratio is measured in the same "
            f"run.\n\n{table}\n\nCommand: `{command()}`  \nMachine: {machine()}")
    report.update_doc_section(DOCS / "benchmarks.md", "bias-loss-speed", body,
                              "Bias Loss: training-step overhead vs cross-entropy")


if __name__ == "__main__":
    main()
