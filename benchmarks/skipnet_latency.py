"""CPU inference latency of SkipNet-M against MobileNetV3-Large at 224x224, and the SkipNet family's sizes
-> docs/benchmarks.md.

    python benchmarks/skipnet_latency.py [--iters 100] [--warmup 10] [--repeats 7]

Batch 1, float32, eval mode under ``torch.inference_mode``, 1 and 2 threads. Each repeat times both models
one forward at a time (first model alternating between repeats, thread counts interleaved); a repeat's
latency is the median of its forwards, the table gives the median over repeats and the SkipNet-M / MNV3-L
ratio measured in the same repeat (median over repeats), next to the ratio of their MACs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import DOCS, command, machine

from leancnn import create_model, report
from leancnn.models.mobilenetv3 import SKIPNET_FAMILY
from leancnn.nn import count_macs, count_params

MODELS = ["mobilenetv3_large", "skipnet_m"]
SIZE = (3, 224, 224)


def median_latency_ms(model: torch.nn.Module, x: torch.Tensor, iters: int, warmup: int) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def family_table() -> str:
    rows = []
    for member, spec in SKIPNET_FAMILY.items():
        model = create_model(f"skipnet_{member}")
        params, macs = count_params(model), count_macs(model, SIZE)
        rows.append([f"`skipnet_{member}`", spec.width, spec.head_hidden, f"{params / 1e6:.3f}M",
                     f"{macs / 1e6:.1f}M", f"{spec.published_params / 1e6:g}M / {spec.published_macs / 1e6:g}M",
                     f"{100 * (params / spec.published_params - 1):+.1f}%",
                     f"{100 * (macs / spec.published_macs - 1):+.1f}%"])
    return report.format_table(rows, ["model", "width", "head FC", "params", "MACs", "published point",
                                      "Δ params", "Δ MACs"], markdown=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {name: create_model(name).eval() for name in MODELS}
    params = {name: count_params(m) for name, m in models.items()}
    macs = {name: count_macs(m, SIZE) for name, m in models.items()}
    x = torch.randn(1, *SIZE)
    threads = [1, 2]
    lat = {(t, name): [] for t in threads for name in MODELS}
    for r in range(args.repeats):
        for t in threads:
            torch.set_num_threads(t)
            for name in MODELS if r % 2 == 0 else MODELS[::-1]:
                lat[(t, name)].append(median_latency_ms(models[name], x, args.iters, args.warmup))
            print(f"repeat {r + 1}/{args.repeats}, {t} thread(s): "
                  + ", ".join(f"{name} {lat[(t, name)][-1]:.2f} ms" for name in MODELS), flush=True)
    base, skip = MODELS
    rows = []
    for t in threads:
        ratios = [s / b for s, b in zip(lat[(t, skip)], lat[(t, base)])]
        rows.append([t, *(f"{statistics.median(lat[(t, n)]):.2f} ({min(lat[(t, n)]):.2f}–{max(lat[(t, n)]):.2f})"
                          for n in MODELS),
                     f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})",
                     f"{macs[skip] / macs[base]:.3f}"])
    table = report.format_table(rows, ["threads", "MobileNetV3-Large ms", "SkipNet-M ms",
                                       "latency ratio SkipNet-M / MNV3-L", "MAC ratio"], markdown=True)
    sizes = (f"MobileNetV3-Large 1.0: {params[base]:,} params, {macs[base] / 1e6:.1f}M MACs; "
             f"SkipNet-M: {params[skip]:,} params, {macs[skip] / 1e6:.1f}M MACs (conv + linear multiply-adds, "
             f"224×224, 1000 classes).")
    family = family_table()
    print(sizes, table, family, sep="\n\n")
    if args.no_docs:
        return
    body = (f"Batch 1, 224×224, float32, eval mode under `torch.inference_mode`, on the CPU. Each repeat times "
            f"{args.iters} forward passes per model after {args.warmup} warm-up passes, one model after the other "
            f"(which goes first alternates between repeats; thread counts interleaved); a repeat's latency is the "
            f"median of its passes. Latencies: median over {args.repeats} repeats (range in brackets); the latency "
            f"ratio is taken within each repeat, median (range) over repeats. The machine is shared with other work, so "
            f"single repeats can be slowed by contention (the ranges, widest at 2 threads); the medians and the "
            f"same-repeat ratios are the robust numbers. Absolute milliseconds are for this machine only.\n\n{sizes}\n\n{table}\n\n"
            f"The SkipNet family (`leancnn.models.mobilenetv3.SKIPNET_FAMILY`): each member is SkipNet-M's table "
            f"at one width and head size, chosen to reproduce one published (params / MACs) point of the family "
            f"plot. The published MACs are about 4% above this conv + linear count at every point, SkipNet-M "
            f"(whose configuration is certain) included.\n\n{family}\n\n"
            f"Command: `{command()}`  \nMachine: {machine()}")
    report.update_doc_section(DOCS / "benchmarks.md", "skipnet-latency", body,
                              "SkipNet-M vs MobileNetV3-Large: CPU inference latency")


if __name__ == "__main__":
    main()
