"""Shared bits of the benchmark scripts: where runs go and how the machine is described."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def bench_dir(name: str) -> Path:
    """Run outputs of a benchmark: ``$LEANCNN_CACHE/bench/<name>`` (outside the repository)."""
    from leancnn.io import cache_dir

    path = cache_dir() / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
