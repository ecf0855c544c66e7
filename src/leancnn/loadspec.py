"""What one contention level is: :class:`LoadSpec` (``workers`` CPU hogs, each busy ``percent`` % of the time,
optionally pinned, by stress-ng or the built-in Python generator) and the checks on it (issue 11).

It sits beside :mod:`leancnn.config`, below :mod:`leancnn.latency`, so that loading a latency config can check its
load levels without importing the latency package. The loads themselves run in :mod:`leancnn.latency.loads`.
:func:`stress_ng_path` is the one place that looks for stress-ng: tests monkeypatch it here to simulate a machine
without it, and the load generator asks it through this module.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .threads import allowed_cpus

INSTALL_SCRIPT = "scripts/install_stress_ng.sh"
KINDS = ("auto", "stress-ng", "python")


def stress_ng_path() -> str | None:
    """Path of the ``stress-ng`` executable, or None (tests monkeypatch this to simulate a machine without it)."""
    return shutil.which("stress-ng")


def cpu_list(cpus) -> str:
    """CPU ids as ``taskset`` writes them: ``0,2,3``."""
    return ",".join(str(c) for c in cpus)


@dataclass
class LoadSpec:
    """One contention level: ``workers`` CPU hogs, each busy ``percent`` % of the time, optionally pinned.

    Field types are those :func:`leancnn.config.from_dict` understands, so a config section can hold a LoadSpec.
    Checked on construction: an error names the key and the allowed values.
    """

    workers: int = 0  # 0 = no load (the idle condition)
    percent: int = 100  # 1..100: share of wall time each worker is busy (stress-ng --cpu-load)
    pin: list[int] | str | None = None  # None, a list of CPU ids (all workers confined to it), or "spread"
    kind: Literal["auto", "stress-ng", "python"] = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "load") -> None:
        def key(name: str) -> str:
            return f"{where}.{name}" if where else name

        cpus = allowed_cpus()
        w = self.workers
        if isinstance(w, bool) or not isinstance(w, int):
            raise ConfigError(f"config key '{key('workers')}': expected an integer, got {type(w).__name__} {w!r}")
        if w < 0:
            raise ConfigError(f"config key '{key('workers')}' must be >= 0, got {w}")
        if w > len(cpus):
            raise ConfigError(f"config key '{key('workers')}' = {w} is above the {len(cpus)} CPU(s) this process may "
                              f"run on (os.sched_getaffinity: {cpu_list(cpus)}); allowed: 0..{len(cpus)}")
        p = self.percent
        if isinstance(p, bool) or not isinstance(p, int):
            raise ConfigError(f"config key '{key('percent')}': expected an integer, got {type(p).__name__} {p!r}")
        if not 1 <= p <= 100:
            raise ConfigError(f"config key '{key('percent')}' must be in [1, 100], got {p}")
        pin = self.pin
        if isinstance(pin, str):
            if pin != "spread":
                raise ConfigError(f"config key '{key('pin')}': {pin!r} is not allowed; give a list of CPU ids, "
                                  f"'spread' or nothing")
        elif pin is not None:
            if not isinstance(pin, (list, tuple)) or not pin:
                raise ConfigError(f"config key '{key('pin')}': expected a non-empty list of CPU ids, 'spread' or "
                                  f"nothing, got {pin!r}")
            for i, c in enumerate(pin):
                if isinstance(c, bool) or not isinstance(c, int):
                    raise ConfigError(f"config key '{key('pin')}[{i}]': expected a CPU id (integer), got {c!r}")
                if c not in cpus:
                    raise ConfigError(f"config key '{key('pin')}[{i}]': CPU {c} is not one this process may run on; "
                                      f"allowed: {cpu_list(cpus)}")
            if len(set(pin)) != len(pin):
                raise ConfigError(f"config key '{key('pin')}' lists a CPU more than once: {list(pin)}")
            self.pin = list(pin)
        if self.kind not in KINDS:
            raise ConfigError(f"config key '{key('kind')}': {self.kind!r} is not allowed; allowed values: "
                              + ", ".join(KINDS))
        if self.kind == "stress-ng" and w > 0 and stress_ng_path() is None:
            raise ConfigError(f"config key '{key('kind')}' demands stress-ng, which is not installed (not on PATH); "
                              f"install it with 'sh {INSTALL_SCRIPT}' (apt-get, as root), or set "
                              f"{key('kind')}: auto to fall back to the built-in Python load generator")

    def describe(self) -> str:
        pin = "" if self.pin is None else f", pinned {self.pin if isinstance(self.pin, str) else cpu_list(self.pin)}"
        return f"{self.workers} worker(s) at {self.percent}%{pin}"
