"""Overhead of `leancnn latency`'s timing harness per inference, against a bare timed loop, in the same run.

For each workload (an empty function: the pure harness cost; two small models in PyTorch eager and one in
onnxruntime, all at batch 1, 1 thread, idle), repeats alternate between:

* **bare**: ``t0 = perf_counter(); for _ in range(n): fn(); t1 = perf_counter()``, the cost per call
  ``(t1 - t0) / n``: the least any harness can add;
* **harness**: ``leancnn.latency.measure.measure({"m": fn}, n, block, rng)``, the function ``latency run`` uses
  (randomised blocks, two clock reads around every call, one row per call, the young-generation GC between
  blocks, the GC off inside blocks), timed the same way from outside: its wall time per call.

Overhead = harness − bare per call, in µs and in % of bare, median over the repeats (each repeat pairs the two,
so drift cancels). Also the mean of the latencies the harness *recorded* against bare: what the clock reads add to
each sample. Goal (issue 11): ≤ 1% or ≤ 20 µs per inference, whichever is larger. Writes the section
``latency-overhead`` of docs/benchmarks.md.

    python benchmarks/latency_overhead.py [--repeats 15] [--calls 2000] [--no-docs]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import write_section  # noqa: E402

from leancnn.config import from_dict  # noqa: E402
from leancnn.latency import measure  # noqa: E402
from leancnn.latency.config import LatencyConfig
from leancnn.tasks import latency as latency_task  # noqa: E402


def workloads(calls: int) -> list[tuple[str, object, int]]:
    cfg = from_dict(LatencyConfig, {"models": [{"name": "digits_cnn"}, {"name": "resnet20"}],
                                    "grid": {"loads": [{"workers": 0}], "backends": ["eager", "onnxruntime"]}})
    specs, conds, _ = latency_task.check_run(cfg)
    eager, ort = conds
    cache: dict = {}
    return [
        ("empty function (pure harness cost)", lambda: None, calls * 20),
        ("digits_cnn @ 32, PyTorch eager", measure.make_callable(specs[0], eager, cfg, cache), calls),
        ("resnet20 @ 32, PyTorch eager", measure.make_callable(specs[1], eager, cfg, cache), calls // 4),
        ("resnet20 @ 32, onnxruntime", measure.make_callable(specs[1], ort, cfg, cache), calls),
    ]


def bare(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def harness(fn, n: int, block: int, seed: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = measure.measure({"m": fn}, n, block, np.random.default_rng(seed))
    wall = (time.perf_counter() - t0) / n
    return wall, float(np.mean([row[3] for row in r["rows"]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calls", type=int, default=2000, help="calls per repeat of the model workloads")
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, verdicts = [], []
    with torch.inference_mode():
        for name, fn, n in workloads(args.calls):
            for _ in range(max(20, n // 20)):
                fn()
            b, h, rec = [], [], []
            for rep in range(args.repeats):
                first_bare = rep % 2 == 0  # alternate which goes first
                if first_bare:
                    b.append(bare(fn, n))
                hw, hr = harness(fn, n, args.block, rep)
                if not first_bare:
                    b.append(bare(fn, n))
                h.append(hw)
                rec.append(hr)
            over = [hh - bb for hh, bb in zip(h, b)]
            rec_over = [rr - bb for rr, bb in zip(rec, b)]
            mb, mo = statistics.median(b), statistics.median(over)
            limit = max(0.01 * mb, 20e-6)
            ok = mo <= limit
            verdicts.append(ok)
            rows.append([name, n, f"{1e6 * mb:.2f}", f"{1e6 * statistics.median(h):.2f}", f"{1e6 * mo:+.2f}",
                         f"{100 * mo / mb:+.2f}%" if mb >= 1e-6 else "–", f"{1e6 * statistics.median(rec_over):+.2f}",
                         f"{1e6 * limit:.1f}", "met" if ok else "**not met**"])
            print(f"{name}: bare {1e6 * mb:.2f} us, harness {1e6 * statistics.median(h):.2f} us, "
                  f"overhead {1e6 * mo:+.2f} us ({100 * mo / mb:+.2f}%)", flush=True)
    from leancnn.report import format_table

    table = format_table(rows, ["workload (batch 1, 1 thread, idle)", "calls per repeat", "bare µs/call",
                                "harness µs/call", "overhead µs/call", "overhead %",
                                "recorded mean − bare µs", "goal µs (max of 1%, 20 µs)", "goal"], markdown=True)
    body = (f"The timing harness of `leancnn latency run` (`latency.measure.measure`: randomised blocks of "
            f"{args.block}, two `perf_counter_ns` reads around each call, a row per call, young-generation GC "
            f"between blocks) against a bare `for` loop timed as a whole, on the same callables, {args.repeats} "
            "repeats alternating which goes first; medians over repeats. *overhead*: the harness's wall time per "
            "call minus the bare loop's; *recorded mean − bare*: what the samples themselves carry beyond the bare "
            "per-call time (the clock reads). Goal: ≤ 1% or ≤ 20 µs per inference, whichever is larger.\n\n"
            + table)
    print(table)
    if not args.no_docs:
        write_section("benchmarks.md", "latency-overhead", "Latency harness: overhead per inference", body)
    if not all(verdicts):
        sys.exit("the harness's overhead is above the goal for at least one workload")


if __name__ == "__main__":
    main()
