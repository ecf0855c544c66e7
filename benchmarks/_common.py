"""Shared bits of the benchmark scripts: where runs go, the machine line, the command line."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

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
