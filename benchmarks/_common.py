"""Shared bits of the benchmark scripts: where runs go, the machine line, the command line."""

from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from leancnn.io import cache_dir
from leancnn.report import machine_description as machine  # noqa: F401  (re-exported for the scripts)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def bench_dir(name: str) -> Path:
    """Run outputs of a benchmark: ``$LEANCNN_CACHE/bench/<name>`` (outside the repository)."""
    path = cache_dir() / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def median_time(fn: Callable[[], object], steps: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_macs_per_s(n: int = 1024, reps: int = 5) -> float:
    """This machine's fp32 multiply-accumulates per second on an n×n matrix product (median of ``reps``), at the
    current torch thread count: the yardstick a network's achieved MAC/s is quoted against."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return n ** 3 / statistics.median(times)


def ratio_cells(base: Sequence[float], other: Sequence[float]) -> list[str]:
    """Table cells for paired repeats (seconds): median base ms, median other ms, ratio of medians,
    range of the per-repeat ratios, overhead in %."""
    m_base, m_other = statistics.median(base), statistics.median(other)
    ratios = sorted(o / b for b, o in zip(base, other))
    return [f"{1e3 * m_base:.1f}", f"{1e3 * m_other:.1f}", f"{m_other / m_base:.3f}",
            f"{ratios[0]:.3f}–{ratios[-1]:.3f}", f"{100 * (m_other / m_base - 1):+.1f}%"]


def write_section(doc: str, key: str, heading: str, body: str, note: str = "") -> None:
    """Write ``body``, then the command (with ``note``) and the machine, as section ``key`` of ``docs/<doc>``."""
    from leancnn.report import update_doc_section

    update_doc_section(DOCS / doc, key, f"{body}\n\nCommand: `{command()}`{note}  \nMachine: {machine()}", heading)
