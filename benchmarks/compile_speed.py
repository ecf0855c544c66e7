"""``torch.compile`` of the channels-last training step: compile time against steady-state gain
-> docs/benchmarks.md.

    python benchmarks/compile_speed.py [--models resnet20 mobilenetv3_small skipnet_s] [--threads 2] [--steps 15]

For each model: the eager channels-last training step (forward + cross-entropy + backward + SGD step with
momentum and lr 0, so the weights stay put; batch 128 of real 3×32×32 digit images) and the same step with the network under ``torch.compile`` (inductor, what ``train.compile=true``
does), on the same batch. The compiled network's first step includes compilation with an empty inductor cache
(a fresh temporary directory: what a first run on a machine pays; later runs reuse leancnn's cache). Steady
state: median of ``--steps`` steps after 3 warm-up steps, eager and compiled alternating in blocks of 5.
Break-even: the number of steps after which compilation has paid for itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import write_section

from leancnn import create_model, report
from leancnn.data import DigitsDataset
from leancnn.nn.layout import convert_model

CL = torch.channels_last


def step_fn(net, x, y, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv3_small", "skipnet_s"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = DigitsDataset(["mnist", "mnistm", "syn", "uci"], "train", seed=0)
    x = torch.stack([ds[i][0] for i in range(128)]).contiguous(memory_format=CL)  # real digit images
    y = torch.tensor([ds[i][1] for i in range(128)])
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        for name in args.models:
            torch._dynamo.reset()
            steps = {}
            for kind in ("eager", "compiled"):
                torch.manual_seed(0)
                model = convert_model(create_model(name), CL)
                net = torch.compile(model) if kind == "compiled" else model
                # lr 0: the same arithmetic as any SGD step, but the weights stay at initialisation, so dozens of
                # steps on one batch keep timing the same work (with a real lr the network fits the batch within
                # a few steps and its activations turn denormal, which slows eager steps up to 40-fold)
                opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
                steps[kind] = step_fn(net, x, y, opt)
            first = timed(steps["compiled"])
            for kind in steps:
                for _ in range(3):
                    steps[kind]()
            times = {"eager": [], "compiled": []}
            while len(times["eager"]) < args.steps:
                for kind in times:
                    times[kind] += [timed(steps[kind]) for _ in range(5)]
            eager, comp = (statistics.median(times[k]) for k in ("eager", "compiled"))
            gain = eager - comp
            rows.append([name, f"{first:.0f}", f"{1e3 * eager:.0f}", f"{1e3 * comp:.0f}", f"{eager / comp:.2f}",
                         f"{first / gain:,.0f}" if gain > 0 else "never"])
            print(report.format_table(rows[-1:], ["model", "compile s", "eager ms", "compiled ms", "speed-up",
                                                  "break-even steps"]), flush=True)
    table = report.format_table(rows, ["model", "first compiled step (s, cold cache)", "eager step ms",
                                       "compiled step ms", "steady-state speed-up", "break-even steps"],
                                markdown=True)
    print(table)
    if args.no_docs:
        return
    body = (f"Channels-last training step, batch 128 of real 3×32×32 digit images, {args.threads} threads, float32 "
            "on the CPU; eager against `torch.compile` (inductor) of the same network. The SGD step runs with lr 0 "
            "(the same arithmetic; the weights stay at initialisation, so many steps on one batch keep timing the "
            "same work: with a real lr a network fits the one batch within a few steps and its activations turn "
            "denormal, slowing eager steps up to 40-fold). Steady state: median of "
            f"{args.steps} steps each, alternating in blocks of 5. Absolute times are for this machine only.\n\n"
            f"{table}")
    write_section("benchmarks.md", "compile-speed",
                  "torch.compile of the training step: compile time against steady-state gain", body)


if __name__ == "__main__":
    main()
