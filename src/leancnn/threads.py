"""Threads that follow the machine: how many intra-op threads torch uses, and how its OpenMP workers wait.

Why (docs/benchmarks.md, "Threads on a shared machine"; the latency study in docs/results.md): PyTorch's OpenMP
workers spin at every barrier. On an otherwise idle machine that is the fastest setting, but as soon as another
process holds one of the cores, a spinning worker waits out a descheduled sibling's time slice at every op: on
2 cores with one co-running CPU hog, 2 threads train at 0.6x the speed of 1 thread, and at 0.2x on a busier
machine. Passive waiting (``OMP_WAIT_POLICY=PASSIVE``) survives the load but costs about 20 % when idle. No fixed
setting is best in both cases, so ``threads: auto`` (the default of every command that computes) follows the
machine:

* **cores**: the CPUs this process may use (``os.sched_getaffinity``), capped by a cgroup CPU quota (v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` or v2 ``cpu.max``), divided between the processes of one DDP job
  on this machine (``LOCAL_WORLD_SIZE``);
* **how busy they are**: the CPU time the other processes used on those cores, read from ``/proc/stat`` minus
  this process's own time, over an interval (no sleep: the interval since the last look);
* **the thread count**: ``max(1, floor(cores - busy + 0.25))`` (2 cores, idle: 2; one hog, or any half-busy
  core: 1), re-chosen every :data:`RECHECK_SECONDS` while long work runs (the engine's step loop, the stream's
  frame loop, the registration pair loop call :func:`tick`), so a hog that starts or stops mid-run is followed
  within seconds;
* **a trial for small work**: a command whose unit of work is small (the batch-1 stream step) times its first
  units at the chosen count and at 1 thread, alternating, and keeps 1 unless more is at least 5 % faster
  (:meth:`Governor.start_trial`);
* **the wait policy**: set once, before torch loads (the ``leancnn`` entry point calls
  :func:`prepare_environment` before it imports torch; OpenMP reads it only at start-up). A machine that is busy
  at start gets ``OMP_WAIT_POLICY=PASSIVE`` (workers sleep instead of spinning: should the machine become idle
  later and 2 threads be chosen, they cost the 20 %, never the collapse); an idle one keeps OpenMP's default
  spinning, the fastest setting while it stays idle, and the thread count drops to 1 (where waiting does not
  matter) within :data:`RECHECK_SECONDS` of a load appearing. A policy the user set in the environment
  (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``OMP_NUM_THREADS``) is kept.

Precedence: ``--threads N`` on the command line, then a config's ``train.threads: N``, then ``LEANCNN_THREADS``
(``auto`` or N) in the environment, then ``auto``. A fixed N is never changed. The choice, its reason and every
change are recorded (:func:`record`: a run's ``summary.json`` and each epoch of ``metrics.jsonl``).

Reproducibility: float results differ in the last bits between thread counts (reductions split differently), so
two runs that chose different counts do not agree bit for bit. Fix ``train.threads`` (or ``LEANCNN_THREADS``) for
bit-exact repeats and resumes; ``auto`` is for speed.

This module imports no torch at import time (the entry point uses it before torch loads).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUTO = "auto"
RECHECK_SECONDS = 5.0  # how often long work re-reads the machine's load
FIRST_LOOK_SECONDS = 0.12  # the first look's interval when nothing was read before (a short sleep; 12 ticks/CPU)
_SPARE = 0.25  # a core counts as free while other work uses under a quarter of it (see choose_threads)
_USER_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def parse_threads(value: Any, what: str = "--threads") -> str | int:
    """``'auto'`` or an int >= 1 (``0`` is read as ``auto``: configs of earlier versions wrote 0 for "torch's
    default"); anything else is refused naming ``what``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{what} must be 'auto' or a whole number >= 1, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be 'auto' or a whole number >= 1, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be 'auto' or a whole number >= 1, got {value}")
    return AUTO if value == 0 else value


# ----------------------------------------------------------------------------------------- the machine


def cgroup_quota(proc_cgroup: str | Path = "/proc/self/cgroup", root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by a cgroup CPU quota on this process (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2
            try:
                quota, period = Path(root, rel, "cpu.max").read_text().split()[:2]
                if quota != "max" and float(period) > 0:
                    return float(quota) / float(period)
            except (OSError, ValueError):
                pass
        elif "cpu" in controllers.split(","):
            for base in (Path(root, "cpu"), Path(root, "cpu,cpuacct")):
                try:
                    quota = int(Path(base, rel, "cpu.cfs_quota_us").read_text())
                    period = int(Path(base, rel, "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    return quota / period
    return None


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (``os.sched_getaffinity``; all of them where that is missing)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def local_processes() -> int:
    """Processes of one DDP job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without it)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def usable_cores() -> float:
    """The cores this process may use: its CPU affinity, capped by a cgroup quota, shared with the other
    processes of its DDP job on this machine."""
    cores = float(len(allowed_cpus()))
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(cores / local_processes(), 0.01)


def _stat_times(cpus: list[int]) -> tuple[float, float] | None:
    """(busy, total) seconds of the given CPUs since boot, from ``/proc/stat``; None where it cannot be read."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    found = False
    for line in text.splitlines():
        name, *values = line.split()
        if name not in wanted:
            continue
        v = [float(x) for x in values[:8]]
        v += [0.0] * (8 - len(v))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        busy += user + nice + system + irq + softirq + steal  # steal: time the hypervisor gave to others
        total += user + nice + system + idle + iowait + irq + softirq + steal
        found = True
    if not found:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return busy / hz, total / hz


@dataclass
class _Look:
    wall: float
    own: float  # this process's CPU seconds (all threads)
    stat: tuple[float, float] | None


def _look(cpus: list[int]) -> _Look:
    return _Look(time.monotonic(), time.process_time(), _stat_times(cpus))


def other_busy(before: _Look, after: _Look) -> float | None:
    """How many of the watched CPUs other processes kept busy between two looks (0 = none; None: unknown).
    ``/proc/stat`` counts in clock ticks (10 ms), so an interval under about 0.1 s is too coarse to read."""
    if before.stat is None or after.stat is None:
        return None
    d_busy = after.stat[0] - before.stat[0]
    d_total = after.stat[1] - before.stat[1]
    d_own = after.own - before.own
    wall = after.wall - before.wall
    if d_total <= 0 or wall <= 0.05:
        return None
    ncpu = d_total / wall  # CPUs watched (from the ticks themselves: robust to the tick rate)
    others = max(0.0, d_busy - d_own) / d_total * ncpu
    return min(others, ncpu)


def choose_threads(cores: float, busy: float | None) -> int:
    """``max(1, floor(cores - busy + 0.25))``: a thread per core that others leave (almost) free. Two cores,
    idle: 2; one core busy (a hog) or both half busy: 1; ``busy`` unknown: as if idle."""
    free = cores - (busy or 0.0)
    return max(1, min(int(math.floor(cores + 1e-9)), int(math.floor(free + _SPARE))))


# ----------------------------------------------------------------------------------------- the entry point


_entry: dict[str, Any] = {}  # what prepare_environment saw and did


def prepare_environment(look_seconds: float = FIRST_LOOK_SECONDS) -> dict:
    """Before torch loads (the ``leancnn`` entry point): look at the machine for ``look_seconds`` and set
    OpenMP's wait policy: ``PASSIVE`` when other work is running (see the module docstring), OpenMP's default
    otherwise. Does nothing when torch is already loaded or the user set the policy; returns what it did."""
    global _entry
    if "busy_at_start" in _entry or "one thread" in _entry.get("wait_policy", ""):
        return _entry  # decided once per process
    cpus = allowed_cpus()
    first = _look(cpus)
    user = {k: os.environ[k] for k in _USER_ENV if k in os.environ}
    if "torch" in sys.modules:
        _entry = {"wait_policy": "unchanged (torch was already loaded)", "look": first}
        return _entry
    try:
        fixed = resolve()[0]
    except ValueError:
        fixed = None  # a bad LEANCNN_THREADS is reported where the threads are applied
    if fixed == 1:  # one thread never waits for a sibling: nothing to decide
        _entry = {"wait_policy": "OpenMP default (one thread: no waiting)", "look": first}
        return _entry
    time.sleep(look_seconds)
    second = _look(cpus)
    busy = other_busy(first, second)
    cores = usable_cores()
    if user:
        policy = "as set: " + " ".join(f"{k}={v}" for k, v in user.items())
    elif busy is not None and choose_threads(cores, busy) < math.floor(cores + 1e-9):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        policy = "OMP_WAIT_POLICY=PASSIVE (the machine was busy at start)"
    else:
        policy = "OpenMP default (spinning; the machine was idle at start)"
    _entry = {"wait_policy": policy, "busy_at_start": busy, "cores": cores, "look": second}
    return _entry


# ----------------------------------------------------------------------------------------- the governor


@dataclass
class Governor:
    """Sets torch's intra-op threads and, with ``auto``, re-chooses them as the machine's load changes."""

    setting: str | int = AUTO
    source: str = "default"  # where the setting came from: --threads, config, LEANCNN_THREADS, default
    recheck: float = RECHECK_SECONDS
    threads: int = 0
    cores: float = 0.0
    busy: float | None = None
    changes: list[dict] = field(default_factory=list)
    _last: _Look | None = None
    _cpus: list[int] = field(default_factory=list)
    _start: float = 0.0
    _pid: int = 0
    cap: int | None = None  # the most threads this work gains from, by a timed trial (start_trial); None: no cap
    _trial: dict | None = None

    def start(self) -> int:
        import torch

        self._pid = os.getpid()
        self._cpus = allowed_cpus()
        self._start = time.monotonic()
        if self.setting != AUTO:
            self.threads = int(self.setting)
            torch.set_num_threads(self.threads)
            self.changes = [{"t": 0.0, "threads": self.threads, "busy": None}]
            return self.threads
        self.cores = usable_cores()
        before = _latest_look()
        now = _look(self._cpus)
        if before is None or now.wall - before.wall < 0.1:  # nothing to compare with: a short first look
            before = now
            time.sleep(FIRST_LOOK_SECONDS)
            now = _look(self._cpus)
        self.busy = other_busy(before, now)
        self._last = _remember(now)
        self.threads = choose_threads(self.cores, self.busy)
        torch.set_num_threads(self.threads)
        self.changes = [{"t": 0.0, "threads": self.threads, "busy": _round(self.busy)}]
        return self.threads

    def tick(self) -> int:
        """Cheap unless ``recheck`` seconds passed since the last look: then re-read the load and, if another
        count fits better, set it. Returns the thread count now."""
        if (self.setting != AUTO or self._last is None or os.getpid() != self._pid  # a forked worker keeps its own
                or self._trial is not None):  # a trial sets the counts itself
            return self.threads
        now_wall = time.monotonic()
        if now_wall - self._last.wall < self.recheck:
            return self.threads
        import torch

        now = _look(self._cpus)
        busy = other_busy(self._last, now)
        self._last = _remember(now)
        if busy is None:
            return self.threads
        self.busy = busy
        wanted = min(choose_threads(self.cores, busy), self.cap or 1 << 30)
        if wanted != self.threads:
            self.threads = wanted
            torch.set_num_threads(wanted)
            self.changes.append({"t": round(now.wall - self._start, 1), "threads": wanted, "busy": _round(busy)})
        return self.threads

    def start_trial(self, block: int = 8, rounds: int = 3, skip: int = 16) -> None:
        """Under ``auto`` with more than one thread chosen: time the next units of work (:meth:`observe`) at that
        count and at 1 thread, and cap the count at 1 unless more threads are at least 5 % faster (medians).
        After ``skip`` warm-up units the counts alternate in blocks of ``block`` units, ``rounds`` times each (the
        first unit after a switch is not counted), so a drift over time (warm-up, another job) hits both alike.
        Small units of work (a batch-1 stream step: a few ms of many tiny ops) often gain nothing from a second
        thread and lose much as soon as another process runs; a big batch gains."""
        if self.setting != AUTO or self.threads <= 1 or os.getpid() != self._pid:
            return
        many = self.threads
        plan = [(many, False)] * skip
        for _ in range(rounds):
            for n in (many, 1):
                plan += [(n, False)] + [(n, True)] * (block - 1)
        self._trial = {"plan": plan, "i": 0, "times": {many: [], 1: []}, "many": many}

    def observe(self, seconds: float) -> None:
        """The time of one unit of work, for a running trial (a no-op without one)."""
        tr = self._trial
        if tr is None:
            return
        import statistics

        import torch

        plan, i = tr["plan"], tr["i"]
        n, counted = plan[i]
        if counted:
            tr["times"][n].append(seconds)
        tr["i"] = i = i + 1
        if i < len(plan):
            if plan[i][0] != n:
                torch.set_num_threads(plan[i][0])
            return
        many = tr["many"]
        med = {k: statistics.median(v) for k, v in tr["times"].items()}
        self.cap = None if med[many] < 0.95 * med[1] else 1
        self._trial = None
        self.threads = min(self.threads, self.cap or 1 << 30)
        torch.set_num_threads(self.threads)
        self.changes.append({"t": round(time.monotonic() - self._start, 1), "threads": self.threads,
                             "busy": _round(self.busy),
                             "trial_ms": {str(k): round(1e3 * v, 3) for k, v in med.items()}})

    def describe(self) -> str:
        """One line for a run's header: ``threads: auto -> 2 (2 cores, 0.1 busy with other work; OpenMP ...)``."""
        if self.setting != AUTO:
            return f"threads: {self.threads} ({self.source})"
        busy = "unknown" if self.busy is None else f"{self.busy:.1f}"
        policy = _entry.get("wait_policy", "not set by leancnn (library use)")
        trial = next((c["trial_ms"] for c in reversed(self.changes) if "trial_ms" in c), None)
        tried = ("; a trial timed " + ", ".join(f"{k} thr {v:g} ms" for k, v in trial.items()) + " a step"
                 + (", so at most 1" if self.cap == 1 else "")) if trial else ""
        return (f"threads: auto -> {self.threads} ({self.cores:g} core(s), {busy} busy with other work; "
                f"re-checked every {self.recheck:g} s{tried}; waiting: {policy})")

    def record(self) -> dict:
        """What a run stores: the setting, where it came from, the wait policy and every choice with its time."""
        return {"setting": self.setting, "source": self.source, "cores": self.cores or None,
                "wait_policy": _entry.get("wait_policy", "not set by leancnn (library use)"),
                "busy_at_start": _round(_entry.get("busy_at_start")), "choices": list(self.changes),
                "now": self.threads}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)


_last_look: _Look | None = None  # the latest look at the machine, by the entry point or any governor


def _remember(look: _Look) -> _Look:
    global _last_look
    _last_look = look
    return look


def _latest_look() -> _Look | None:
    return _last_look if _last_look is not None else _entry.get("look")


_forced: str | int | None = None  # --threads on the command line
_current: Governor | None = None


def force(value: Any) -> None:
    """``--threads`` on the command line: wins over every config (``None``: not given)."""
    global _forced
    _forced = None if value is None else parse_threads(value, "--threads")


def resolve(config_value: Any = AUTO, what: str = "train.threads") -> tuple[str | int, str]:
    """The setting that applies and where it came from (see the module docstring for the precedence)."""
    if _forced is not None:
        return _forced, "--threads"
    value = parse_threads(config_value if config_value is not None else AUTO, what)
    if value != AUTO:
        return value, what
    env = os.environ.get("LEANCNN_THREADS")
    if env:
        return parse_threads(env, "LEANCNN_THREADS"), "LEANCNN_THREADS"
    return AUTO, "default"


def apply(config_value: Any = AUTO, what: str = "train.threads", quiet: bool = True) -> Governor:
    """Choose and set torch's threads for the work that follows (see :func:`resolve`); later :func:`tick` calls
    follow the machine. Returns the governor (its :meth:`Governor.record` goes into the run's files)."""
    global _current
    setting, source = resolve(config_value, what)
    gov = Governor(setting=setting, source=source)
    gov.start()
    _current = gov
    if not quiet:
        print(gov.describe(), file=sys.stderr, flush=True)
    return gov


def tick() -> int | None:
    """Called from long loops (cheap): re-choose the thread count every :data:`RECHECK_SECONDS` under ``auto``."""
    return _current.tick() if _current is not None else None


def start_trial(block: int = 8, rounds: int = 3, skip: int = 16) -> None:
    """See :meth:`Governor.start_trial` (a no-op unless ``auto`` chose more than one thread)."""
    if _current is not None:
        _current.start_trial(block, rounds, skip)


def observe(seconds: float) -> None:
    """The time of one unit of work, for a running trial (cheap; a no-op without one)."""
    if _current is not None and _current._trial is not None:
        _current.observe(seconds)


def current() -> Governor | None:
    return _current


def record() -> dict | None:
    return _current.record() if _current is not None else None
