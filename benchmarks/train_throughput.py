"""Training throughput in both memory layouts, the engine against a bare step loop, and achieved MAC/s against
this machine's fp32 matrix-multiply throughput -> docs/benchmarks.md.

    python benchmarks/train_throughput.py [--models resnet20 resnet56 digits_cnn mobilenetv3_small skipnet_s]
                                          [--threads 1 2] [--steps 12] [--repeats 3] [--batch 128]

For every model and thread count, interleaved within each repeat (the machine is shared and noisy; every ratio
is taken between numbers of the same run):
* before: the training step as it was before channels-last (contiguous NCHW layout, every convolution over
  its full kernel);
* contiguous / channels-last: the step now, in each layout (small feature maps convolve with only the kernel
  taps that touch the input: ``leancnn.nn.TapCroppedConv2d``);
* engine: the second epoch of a ``leancnn train`` run (``tasks.lifecycle.train_task``: the engine in channels-last,
  ``train.memory_format=auto``) over the same number of batches of real digit images (data loading, layout
  conversion of each batch, metrics), against the channels-last step loop;
* MAC/s: 3 × forward MACs per image (forward, input and weight gradients) × images/s, beside the fp32
  multiply-accumulates per second of a 1024×1024 matrix product measured in the same repeat.
One step = forward + cross-entropy + backward + SGD (momentum) step, batch 128 of 3×32×32 digit images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import gemm_macs_per_s, write_section

from leancnn import count_macs, create_model, report
from leancnn.config import ExperimentConfig, OptimConfig, derive
from leancnn.data import DOMAINS, DigitsDataset
from leancnn.nn import TapCroppedConv2d
from leancnn.nn.layout import convert_model
from leancnn.tasks.classify import SPEC as CLASSIFY
from leancnn.tasks.lifecycle import train_task
from leancnn.train import build_optimizer

CL = torch.channels_last
MODELS = ["resnet20", "resnet56", "digits_cnn", "mobilenetv3_small", "skipnet_s"]
VARIANTS = ("before", "contiguous", "channels_last")


def step_rate(model, batches, opt, warmup: int = 2) -> float:
    """Images per second of the training step over ``batches`` (already in the model's layout), the first
    ``warmup`` untimed. Every step takes a different batch: on one fixed batch, ResNet-56 fits it within a few
    steps and its activations turn denormal, which slows steps 40-fold and would time nothing real."""
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return sum(len(y) for _, y in batches[warmup:]) / (time.perf_counter() - start)


def variant_rate(name: str, variant: str, batches) -> float:
    TapCroppedConv2d.crop = variant != "before"
    try:
        fmt = CL if variant == "channels_last" else torch.contiguous_format
        torch.manual_seed(0)
        model = convert_model(create_model(name), fmt)
        opt = build_optimizer(model, OptimConfig())  # SGD as the engine's: lr 0.05, momentum 0.9, decay 5e-4
        return step_rate(model, [(x.contiguous(memory_format=fmt), y) for x, y in batches], opt)
    finally:
        TapCroppedConv2d.crop = True


def engine_rate(name: str, batch: int, steps: int, threads: int) -> float:
    """Images per second of the second epoch of a ``leancnn train`` run (the lifecycle, the engine, the data loader
    over real images; the first epoch warms up) of ``steps`` batches."""
    cfg = derive(ExperimentConfig(), {"model.name": name, "data.domains": list(DOMAINS), "data.batch_size": batch,
                                      "data.limit_train": batch * steps, "data.limit_eval": 128,
                                      "schedule.name": "constant", "train.epochs": 2, "train.threads": threads})
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_task(CLASSIFY, cfg, out=Path(tmp) / "run", quiet=True)
    return summary["history"][1]["train_images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    ds = DigitsDataset(list(DOMAINS), "train", seed=0)  # 11,758 images
    if args.batch * (args.steps + 2) > len(ds):
        ap.error(f"--batch x (--steps + 2) must be at most {len(ds)}")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    batches = []
    for b in range(args.steps + 2):  # 2 warm-up steps, then the timed ones, each on its own batch
        idx = order[b * args.batch:(b + 1) * args.batch].tolist()
        batches.append((torch.stack([ds[i][0] for i in idx]), torch.tensor([ds[i][1] for i in idx])))
    macs = {m: count_macs(create_model(m), (3, 32, 32)) for m in args.models}
    rates: dict[tuple, list[float]] = {}
    start = time.perf_counter()
    for r in range(args.repeats):
        for t in args.threads:
            torch.set_num_threads(t)
            rates.setdefault((t, "gemm"), []).append(gemm_macs_per_s())
            for name in args.models:
                order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
                for v in order:
                    rates.setdefault((t, name, v), []).append(variant_rate(name, v, batches))
                rates.setdefault((t, name, "engine"), []).append(engine_rate(name, args.batch, args.steps, t))
                cells = ", ".join(f"{v} {rates[(t, name, v)][-1]:.0f}" for v in (*VARIANTS, "engine"))
                print(f"repeat {r + 1}/{args.repeats}, {t} thread(s), {name}: {cells} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}

    def ratio_range(t, name, a, b):
        per = sorted(x / y for x, y in zip(rates[(t, name, a)], rates[(t, name, b)]))
        return f"{statistics.median(per):.2f} ({per[0]:.2f}–{per[-1]:.2f})"

    rows, mac_rows = [], []
    for name in args.models:
        for t in args.threads:
            rows.append([name, t, *(f"{med[(t, name, v)]:.0f}" for v in VARIANTS),
                         ratio_range(t, name, "channels_last", "before"),
                         ratio_range(t, name, "channels_last", "contiguous"),
                         f"{med[(t, name, 'engine')]:.0f}", ratio_range(t, name, "engine", "channels_last")])
            achieved = 3 * macs[name] * med[(t, name, "channels_last")]
            mac_rows.append([name, t, f"{macs[name] / 1e6:.2f}M", f"{achieved / 1e9:.1f}",
                             f"{med[(t, 'gemm')] / 1e9:.1f}", f"{100 * achieved / med[(t, 'gemm')]:.0f}%"])
    headers = ["model", "threads", "before img/s", "contiguous img/s", "channels-last img/s",
               "speed-up vs before", "channels-last / contiguous", "engine img/s (channels-last)",
               "engine / step loop"]
    table = report.format_table(rows, headers, markdown=True)
    mac_table = report.format_table(mac_rows, ["model", "threads", "forward MACs / image", "achieved GMAC/s",
                                               "fp32 GEMM GMAC/s", "share of GEMM"], markdown=True)
    print(table + "\n\n" + mac_table)
    if args.no_docs:
        return
    body = (f"One training step (forward + cross-entropy + backward + SGD with momentum), batch {args.batch} of "
            f"3×32×32 digit images, float32 on the CPU; images/s are medians of {args.repeats} repeats of "
            f"{args.steps} timed steps, every variant of a model measured in the same repeat (order alternating). "
            "*before*: the code before channels-last (contiguous layout, full kernels); *contiguous* and "
            "*channels-last*: the step now (kernel taps that only read padding skipped on small maps, "
            "`TapCroppedConv2d`); ratios are medians of the per-repeat ratios (range in brackets). *engine*: the "
            "second epoch of a `leancnn train` run (the lifecycle and engine, channels-last by "
            "`train.memory_format=auto` on the CPU) on real images through the data loader, against the channels-last step loop on batches already in memory. "
            "Every step (both loops) takes a new batch of real images: on one fixed batch, ResNet-56 fits it "
            "within a few steps and its activations turn denormal, slowing steps up to 40-fold. Absolute "
            "images/s are for this machine only.\n\n"
            f"{table}\n\nAchieved multiply-accumulates per second of the channels-last training step (3 × the "
            "conventional forward MAC count per image, which counts every kernel tap, also the ones skipped on "
            "small maps), against the fp32 MAC/s of a 1024×1024 matrix product (`torch.mm`) timed in the same "
            f"repeats (median).\n\n{mac_table}")
    write_section("benchmarks.md", "train-throughput", "Training throughput: channels-last against the default layout",
                  body, f" ({(time.perf_counter() - start) / 60:.0f} min)")


if __name__ == "__main__":
    main()
