"""Training-step time with MixStyle vs the same model without it -> docs/benchmarks.md.

    python benchmarks/mixstyle_speed.py [--models digits_cnn resnet20 mobilenetv3_small] [--steps 15] [--repeats 7]

One training step = forward + cross-entropy + backward + SGD step, batch 128 of real 32x32 digit images.
MixStyle is inserted after the first two stages (digits_cnn: conv1, conv2; ResNet-20: layer1, layer2;
MobileNetV3-Small: blocks.0, blocks.1) with p = 1 (it mixes on every step: the worst case; with the default
p = 0.5 it mixes on about half the steps) in crossdomain mode on a [A | B] batch. The runs alternate within
every repeat (the machine is shared and noisy); the table gives the median step time of each and their ratio,
measured in the same run.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from _common import DOCS, command, machine, median_time, ratio_cells

from leancnn import create_model, report
from leancnn.data import DigitsDataset
from leancnn.nn import deactivate_mixstyle, insert_mixstyle, with_mixstyle

AFTER = {"digits_cnn": ["conv1", "conv2"], "resnet20": ["layer1", "layer2"],
         "mobilenetv3_small": ["blocks.0", "blocks.1"]}


def train_step(model, x, y, opt):
    """One training step (cross-entropy) as a closure for :func:`median_time`."""
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(AFTER), choices=list(AFTER))
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    half = args.batch // 2
    a, b = DigitsDataset(["mnist"], "train"), DigitsDataset(["syn"], "train")  # a real [A | B] batch
    x = torch.cat([a._inputs[:half], b._inputs[:half]])
    y = torch.cat([a.targets[:half], b.targets[:half]])
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10)
        insert_mixstyle(model, AFTER[name], p=1.0, alpha=0.1, mix="crossdomain")
        deactivate_mixstyle(model)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)  # small lr: the weights barely move
        t_off, t_on = [], []
        for r in range(args.repeats):
            t_off.append(median_time(train_step(model, x, y, opt), args.steps))
            with with_mixstyle(model):
                t_on.append(median_time(train_step(model, x, y, opt), args.steps))
            print(f"{name} repeat {r + 1}/{args.repeats}: without {1e3 * t_off[-1]:.1f} ms, "
                  f"with MixStyle {1e3 * t_on[-1]:.1f} ms", flush=True)
        rows.append([name, ", ".join(AFTER[name]), *ratio_cells(t_off, t_on)])
    table = report.format_table(rows, ["model", "MixStyle after", "step without (ms, median)",
                                       "step with (ms, median)", "ratio with / without", "per-repeat ratio range",
                                       "overhead"], markdown=True)
    print(table)
    if args.no_docs:
        return
    body = (f"Training step (forward + cross-entropy + backward + SGD step), batch {args.batch} of 32×32 digit "
            f"images laid out [MNIST × {half} | SYN × {half}], {args.threads} threads. MixStyle with p = 1 (mixes on "
            f"every step, the worst case; with the default p = 0.5 it mixes on about half the steps, not measured "
            f"separately) in crossdomain mode. Median of "
            f"{args.steps} steps per repeat, {args.repeats} repeats alternating with/without on the same model; "
            f"absolute milliseconds are for this machine only, the ratio is measured in the same run.\n\n{table}\n\n"
            f"Command: `{command()}`  \nMachine: {machine()}")
    report.update_doc_section(DOCS / "benchmarks.md", "mixstyle-speed", body,
                              "MixStyle: training-step overhead")


if __name__ == "__main__":
    main()
