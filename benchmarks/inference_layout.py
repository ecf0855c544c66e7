"""Batch-1 CPU inference latency: memory layout and conv-BatchNorm folding -> docs/benchmarks.md.

    python benchmarks/inference_layout.py [--threads 1 2] [--passes 50] [--repeats 5]

Eval mode under ``torch.inference_mode``, batch 1, float32. Four variants of the same trained-statistics
network, measured in the same repeat (order alternating): the default contiguous layout; channels-last
(``leancnn.nn.layout``); BatchNorm folded into the convolutions (``leancnn.nn.fold.fold_batchnorm``); both.
A repeat's latency is the median of ``--passes`` passes after 10 warm-up passes; the table gives the median over
repeats and the ratio to the contiguous unfolded network taken within each repeat.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import write_section

from leancnn import count_macs, create_model, report
from leancnn.nn.fold import fold_batchnorm, unfolded_batchnorms
from leancnn.nn.layout import convert_model

CASES = [("mobilenetv3_large", 224, 1000), ("skipnet_m", 224, 1000), ("mobilenetv3_small", 32, 10),
         ("resnet20", 32, 10)]
VARIANTS = ("contiguous", "channels-last", "folded", "channels-last + folded")


def prepared(name: str, side: int, classes: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes)
    with torch.no_grad():  # BatchNorm statistics of real-looking scale, then eval
        model.train()(torch.randn(8, 3, side, side))
    model.eval()
    folded, n = fold_batchnorm(model)
    assert unfolded_batchnorms(folded) == 0, f"{name}: {unfolded_batchnorms(folded)} BatchNorm layers not folded"
    return {"contiguous": model, "channels-last": convert_model(copy.deepcopy(model), torch.channels_last),
            "folded": folded, "channels-last + folded": convert_model(copy.deepcopy(folded), torch.channels_last)}


def latency(model, x, passes: int) -> float:
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--passes", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    nets = {name: prepared(name, side, classes) for name, side, classes in CASES}
    with torch.no_grad():  # the variants compute the same function
        for name, side, _ in CASES:
            x = torch.randn(1, 3, side, side)
            ref = nets[name]["contiguous"](x)
            for v, m in nets[name].items():
                err = (m(x.contiguous(memory_format=torch.channels_last) if "channels" in v else x) - ref).abs().max()
                assert err <= 1e-4 * max(1.0, ref.abs().max().item()), (name, v, err)
    ms: dict[tuple, list[float]] = {}
    for r in range(args.repeats):
        for t in args.threads:
            torch.set_num_threads(t)
            for name, side, _ in CASES:
                x = torch.randn(1, 3, side, side)
                for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                    xv = x.contiguous(memory_format=torch.channels_last) if "channels" in v else x
                    ms.setdefault((t, name, v), []).append(1e3 * latency(nets[name][v], xv, args.passes))
            print(f"repeat {r + 1}/{args.repeats}, {t} thread(s) done", flush=True)
    rows = []
    for name, side, classes in CASES:
        for t in args.threads:
            base = ms[(t, name, "contiguous")]
            cells = []
            for v in VARIANTS:
                vals = ms[(t, name, v)]
                per = sorted(b / o for b, o in zip(base, vals))
                cells.append(f"{statistics.median(vals):.2f}" + ("" if v == "contiguous" else
                                                                 f" ({statistics.median(per):.2f}×)"))
            macs = count_macs(nets[name]["contiguous"], (3, side, side))
            rows.append([name, f"{side}×{side}", f"{macs / 1e6:.1f}M", t, *cells])
    table = report.format_table(rows, ["model", "input", "MACs", "threads", *[f"{v} ms" for v in VARIANTS]],
                                markdown=True)
    print(table)
    if args.no_docs:
        return
    body = ("Batch-1 latency in eval mode under `torch.inference_mode`, float32, on the CPU: median of "
            f"{args.passes} passes after 10 warm-up passes per repeat, median over {args.repeats} repeats; in "
            "brackets the speed-up over the contiguous unfolded network, median of the per-repeat ratios. The "
            "four variants compute the same function (checked before timing, ≤ 1e-4 relative). Absolute "
            f"milliseconds are for this machine only.\n\n{table}")
    write_section("benchmarks.md", "inference-layout", "Batch-1 inference: channels-last and conv-BatchNorm folding",
                  body)


if __name__ == "__main__":
    main()
