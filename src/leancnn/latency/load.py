"""CPU contention that really runs, and that is always cleaned up (issue 11, parts 1 and 5).

Yang, Lu and Ren (arXiv 2003.00138) show that inference latency varies under CPU contention and that the ranking of
two models can flip with the contention level. This module makes the contention: co-running CPU hogs
(:class:`CpuLoad`), a CPU quota through cgroups (:class:`CpuQuota`), and a snapshot of the confounders that go with
every condition (:func:`system_snapshot`). Measuring and statistics live elsewhere in :mod:`leancnn.latency`.

**Load backends.** ``stress-ng --cpu N [--cpu-load P --cpu-load-slice 10] [--taskset CPUS] --timeout T`` where
stress-ng is installed (``scripts/install_stress_ng.sh``), else a built-in Python generator: N worker processes,
each a busy loop with stress-ng's duty cycle. Both give P the same meaning, the share of *wall time* a worker is
busy: a busy slice of 10 ms, then a sleep of ``(100 / P - 1)`` times as long, shortened by the previous sleep's
overrun (stress-ng ``stress-cpu.c``). The slice is fixed at 10 ms because stress-ng's default slice is random, up
to 0.5 s (or a number of iterations, depending on the version), which makes contention bursty at the time scale of
one inference. Under contention a worker gets less CPU than P % of a core: it is runnable but waits for a CPU. So
:meth:`CpuLoad.sample` / :meth:`CpuLoad.cpu_share` measure the CPU the load processes actually used, and the
run-queue wait they suffered (``/proc/<pid>/schedstat``). The runner records both per condition.
``kind_used`` says which backend ran (``"stress-ng"`` or ``"python fallback"``) so the report can say it.

The Python workers are spawned interpreters, not ``multiprocessing`` children. Each one is started as
``python -I -S -c <worker source>`` with :class:`subprocess.Popen` in a process group of its own
(``process_group=0``; Python 3.10: ``start_new_session=True``). This is the
``spawn`` start method without multiprocessing's bootstrap. A ``multiprocessing`` spawn child would re-import
the caller's ``__main__`` and ``leancnn``, and so torch: seconds and hundreds of MB per worker. A ``fork`` child
would copy a process that runs torch's thread pools, and a forked child gets into its own process group only
after it starts running. With ``Popen``, ``setpgid`` happens before ``exec``, so every worker is in its own group
before ``Popen`` returns and ``killpg`` always finds it. The worker needs only ``os``, ``time`` and ``ctypes``
and starts in about 20 ms.

**Pinning** (``LoadSpec.pin``). ``None``: the scheduler places the workers. A list of CPU ids: every worker is
confined to that set (``taskset`` semantics, ``stress-ng --taskset``). ``"spread"``: worker *i* is pinned to the
*i*-th CPU this process may use, round robin, so each worker has a core of its own. For stress-ng, "spread" runs one
stress-ng per CPU, because ``--taskset`` confines all of an instance's workers to one set.

**Scheduling groups.** The load stays in this process's session. Where the kernel has autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the default of most distributions), every session is a CFS
group that gets one fair share as a whole: hogs started in a session of their own (``setsid``) would take about
one CPU *together*, whatever their number (measured here: 2 stress-ng workers used 1.01 CPU against a 1-thread
inference on 2 CPUs). In the measuring process's session each hog competes task for task, as a co-running
thread of another app would inside one scheduling group. ``system_snapshot`` records the autogroup setting.
On Python 3.10 (no ``process_group``), the workers get a session of their own, and the report's measured load
share shows the difference.

**Cleanup, in layers.** Every load runs in process groups of its own.

1. ``with CpuLoad(...)`` / :meth:`CpuLoad.stop` sends SIGTERM to each group, then SIGKILL, and waits until no
   process of the groups is left. This covers normal exit and an exception inside the ``with``.
2. SIGINT and SIGTERM handlers are installed while a load or a quota is active (main thread only). They SIGKILL
   every group at once and then pass the signal on to the handler that was there before: Python's
   ``default_int_handler`` raises ``KeyboardInterrupt`` as usual. When that handler was ``SIG_DFL``, the default
   is restored and the signal re-sent, so the process still dies of it with the usual exit status. The previous
   handlers are put back when the last load stops. A signal that was ignored (``SIG_IGN``) stays ignored.
3. :func:`stop_all` is registered with :mod:`atexit`. Forked children of this process inherit the registry but
   never act on it, because every load remembers the pid that owns it.
4. If the parent dies (SIGKILL, OOM), each Python worker checks ``os.getppid()`` before every busy slice and
   exits when its parent is gone: every 10 ms at 100 %, every ``10 ms x 100 / P`` below (1 s at 1 %). A worker
   started from the main thread also has ``PR_SET_PDEATHSIG = SIGKILL``. stress-ng is started through a small
   launcher that sets ``PR_SET_PDEATHSIG = SIGKILL`` and then ``exec``s stress-ng (no ``preexec_fn``, which is
   unsafe in a threaded process). stress-ng's own workers die with their parent.
   The backstop is ``--timeout`` (``max_seconds``, one hour by default); the Python workers honour it too. The
   kernel ties PDEATHSIG to the *thread* that forked, so it is only set when the load is started from the main
   thread. A load started from another thread relies on the ``getppid`` watchdog and the timeout.

A load process that dies mid-run (OOM killer, stray ``kill``) is not ignored: :meth:`CpuLoad.alive` returns
False, :meth:`CpuLoad.status` says which process and its exit status, and :meth:`CpuLoad.check` raises
:class:`LoadDiedError`.

**Quota.** :class:`CpuQuota` moves a process (the current one by default) into a new cgroup with a CPU bandwidth
limit. It uses cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) or v2 (``cpu.max``), whichever has the
``cpu`` controller mounted and writable. On exit (including an exception or a signal) it moves the process back
and removes the cgroup. :func:`quota_support` says ``(False, reason)`` where neither can be used, so callers can
skip with a clear note. A quota models deterministic time slicing. It does not model the cache, memory-bandwidth
and frequency interference of a co-running hog. The two are different contention conditions.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, LeancnnError

INSTALL_SCRIPT = "scripts/install_stress_ng.sh"
KINDS = ("auto", "stress-ng", "python")
SLICE_MS = 10  # busy slice of a load below 100 %: stress-ng --cpu-load-slice and the Python workers' slice
DEFAULT_MAX_SECONDS = 3600.0  # backstop: a load ends by itself after this long, whatever happens to its parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class LoadDiedError(LeancnnError):
    """A load process ended while the load should have been running. ``.status`` holds :meth:`CpuLoad.status`."""

    def __init__(self, message: str, status: dict):
        super().__init__(message)
        self.status = status


def stress_ng_path() -> str | None:
    """Path of the ``stress-ng`` executable, or None (tests monkeypatch this to simulate a machine without it)."""
    return shutil.which("stress-ng")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on: the limit on load workers (one definition, in :mod:`leancnn.threads`)."""
    from ..threads import allowed_cpus as cpus

    return cpus()


# ------------------------------------------------------------------------------------------------- the spec


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
                              f"run on (os.sched_getaffinity: {_cpu_list(cpus)}); allowed: 0..{len(cpus)}")
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
                                      f"allowed: {_cpu_list(cpus)}")
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
        pin = "" if self.pin is None else f", pinned {self.pin if isinstance(self.pin, str) else _cpu_list(self.pin)}"
        return f"{self.workers} worker(s) at {self.percent}%{pin}"


def _cpu_list(cpus) -> str:
    return ",".join(str(c) for c in cpus)


# ------------------------------------------------------------------------------------------------- /proc helpers


def _read_stat(pid: int) -> tuple[str, int, int, int, int, int] | None:
    """(state, ppid, pgid, sid, utime+stime ticks, starttime) of ``pid`` or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return (rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3]), int(rest[11]) + int(rest[12]),
                int(rest[19]))
    except (IndexError, ValueError):
        return None


def _scan_groups(ids: set[int]) -> dict[int, tuple]:
    """Every live (non-zombie) process whose process group or session is in ``ids``: pid -> stat tuple."""
    found = {}
    if not ids:
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _read_stat(int(name))
        if st is not None and (st[2] in ids or st[3] in ids) and st[0] not in ("Z", "X"):
            found[int(name)] = st
    return found


def _pdeathsig_possible() -> bool:
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: only safe from the main thread.
    return threading.current_thread() is threading.main_thread()


# The Python load worker: argv = percent, slice_s, parent_pid, cpus ("" = no pinning), max_seconds, pdeathsig (0/1).
# The duty cycle is stress-ng's (stress-cpu.c): a busy slice of wall time, then a sleep of (100/P - 1) times it,
# shortened by how much the previous sleep overran (wake-up latency), so the busy share of wall time stays at P.
_WORKER_SOURCE = r"""
import os, sys, time
percent, slice_s, parent = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
cpus, max_s, pdeath = sys.argv[4], float(sys.argv[5]), sys.argv[6] == "1"
try:
    import ctypes
    libc = ctypes.CDLL(None)
    libc.prctl(15, b"leancnn-load", 0, 0, 0)  # PR_SET_NAME: how the worker shows in ps / pgrep
    if pdeath:
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL
except Exception:
    pass
if os.getppid() != parent:  # the parent died before we got here
    os._exit(3)
if cpus:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
now = time.monotonic
idle_ratio = 100.0 / percent - 1.0
deadline = now() + max_s
bias = 0.0
while True:
    t1 = now()
    if os.getppid() != parent:  # watchdog: the parent is gone (we were re-parented)
        os._exit(0)
    if t1 >= deadline:  # backstop
        os._exit(0)
    end = t1 + slice_s  # at 100 %: check the watchdog every slice, never sleep
    t2 = now()
    while t2 < end:
        t2 = now()
    if idle_ratio > 0:  # stress-ng's rule: sleep (100/P - 1) x the busy time, minus the last oversleep
        delay = (t2 - t1) * idle_ratio - bias
        if delay > 0:
            time.sleep(delay)
        bias = (now() - t2) - delay
"""

# Launcher for stress-ng: set PR_SET_PDEATHSIG, check the parent is still there, exec. argv = parent, pdeath, cmd...
_LAUNCHER_SOURCE = r"""
import os, sys
parent, pdeath = int(sys.argv[1]), sys.argv[2] == "1"
if pdeath:
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL; kept across execve
    except Exception:
        pass
if os.getppid() != parent:
    os._exit(3)
os.execvp(sys.argv[3], sys.argv[3:])
"""


# ------------------------------------------------------------------------------------------------- the registry

_lock = threading.RLock()
_active_loads: list["CpuLoad"] = []
_active_quotas: list["CpuQuota"] = []
_prev_handlers: dict[int, Any] = {}
_atexit_registered = False


def _signal_handler(signum, frame):
    """SIGKILL every load and undo every quota at once, then hand the signal to the handler that was there before."""
    prev = _prev_handlers.get(signum, signal.SIG_DFL)  # read first: the cleanup may restore the handlers
    _emergency_cleanup()
    if callable(prev):
        prev(signum, frame)  # default_int_handler raises KeyboardInterrupt; the with blocks then unwind normally
        return
    # SIG_DFL (or a handler installed from C, which Python reports as None): die of the signal as if we were absent.
    _restore_handlers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _emergency_cleanup() -> None:
    for load in list(_active_loads):
        if load._owner == os.getpid():
            load._kill_now()
    for quota in list(_active_quotas):
        if quota._owner == os.getpid():
            try:
                quota.stop()
            except Exception:
                pass


def _register(obj) -> None:
    global _atexit_registered
    with _lock:
        (_active_loads if isinstance(obj, CpuLoad) else _active_quotas).append(obj)
        if not _atexit_registered:
            atexit.register(stop_all)
            _atexit_registered = True
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(sig)
                if current is _signal_handler or current is signal.SIG_IGN:
                    continue
                _prev_handlers[sig] = current
                signal.signal(sig, _signal_handler)


def _unregister(obj) -> None:
    with _lock:
        for reg in (_active_loads, _active_quotas):
            if obj in reg:
                reg.remove(obj)
        if not _active_loads and not _active_quotas:
            _restore_handlers()


def _restore_handlers() -> None:
    """Put back the handlers we replaced, where ours is still installed (someone else may have replaced it)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal only works in the main thread; the next stop there restores them
    for sig, prev in list(_prev_handlers.items()):
        if signal.getsignal(sig) is _signal_handler:
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        del _prev_handlers[sig]


def stop_all() -> None:
    """Stop every load and undo every quota this process started (registered with :mod:`atexit`)."""
    for load in list(_active_loads):
        if load._owner == os.getpid():
            try:
                load.stop(raise_on_leftover=False)
            except Exception:
                load._kill_now()
    for quota in list(_active_quotas):
        if quota._owner == os.getpid():
            try:
                quota.stop()
            except Exception:
                pass


def active_loads() -> list["CpuLoad"]:
    """The loads of this process that are running now."""
    return [load for load in _active_loads if load._owner == os.getpid()]


# ------------------------------------------------------------------------------------------------- the load


class CpuLoad:
    """Co-running CPU load, started on ``__enter__`` (or :meth:`start`) and stopped on ``__exit__`` (or :meth:`stop`).

    ``max_seconds`` is the backstop: the load ends by itself after that long, whatever happens to this process.
    Attributes after start: ``kind_used`` (``"stress-ng"``, ``"python fallback"`` or ``"none"`` for 0 workers),
    ``command`` (the stress-ng command lines, for the report), ``pids`` (every load process).
    """

    def __init__(self, spec: LoadSpec | None = None, *, max_seconds: float = DEFAULT_MAX_SECONDS, **spec_kw):
        if spec is None:
            spec = LoadSpec(**spec_kw)
        elif spec_kw:
            raise TypeError("give a LoadSpec or its fields as keywords, not both")
        if not isinstance(spec, LoadSpec):
            raise TypeError(f"spec must be a LoadSpec, got {type(spec).__name__}")
        if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
            raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.spec = spec
        self.max_seconds = float(max_seconds)
        self.kind_used: str | None = None
        self.command: list[list[str]] = []
        self._procs: list[subprocess.Popen] = []  # group leaders (python workers / stress-ng parents)
        self._workers: dict[int, int] = {}  # stress-ng worker pid -> starttime, found after start
        self._stderr = []
        self._owner = os.getpid()
        self._started = self._stopped = False
        self._last_usage: dict[tuple[int, int], tuple[float, float | None]] = {}
        self._last_time = 0.0

    # -- lifecycle

    def __enter__(self) -> "CpuLoad":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(raise_on_leftover=exc_type is None)

    def start(self) -> "CpuLoad":
        if self._started:
            raise LeancnnError("this CpuLoad was already started; make a new one")
        self._started = True
        spec = self.spec
        spec.validate()  # the machine may have changed since the spec was made (stress-ng removed, affinity)
        if spec.workers == 0:
            self.kind_used = "none"
            self._stopped = True
            return self
        use_stress = spec.kind == "stress-ng" or (spec.kind == "auto" and stress_ng_path() is not None)
        self.kind_used = "stress-ng" if use_stress else "python fallback"
        _register(self)
        try:
            if use_stress:
                self._start_stress_ng()
            else:
                self._start_python()
        except BaseException:
            self._kill_now()
            self._reap()
            _unregister(self)
            self._stopped = True
            raise
        self._last_usage = self._usage()
        self._last_time = time.monotonic()
        return self

    def _pin_sets(self) -> list[list[int] | None]:
        """The CPU set of each worker (None: not pinned)."""
        n, pin = self.spec.workers, self.spec.pin
        if pin is None:
            return [None] * n
        if pin == "spread":
            cpus = allowed_cpus()
            return [[cpus[i % len(cpus)]] for i in range(n)]
        return [list(pin)] * n

    def _popen(self, argv: list[str], stderr) -> subprocess.Popen:
        # A process group of its own (killpg finds every load process), in this process's session: with
        # CONFIG_SCHED_AUTOGROUP (most desktop and server kernels) a new session is a new scheduling group that
        # gets one fair share as a whole, so N hogs in their own session would take ~1 CPU together, not N.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                close_fds=True, **group)

    def _start_python(self) -> None:
        pdeath = "1" if _pdeathsig_possible() else "0"
        err = tempfile.TemporaryFile(prefix="leancnn-load-")  # what a worker says if it fails (status() shows it)
        self._stderr.append(err)
        for cpus in self._pin_sets():
            argv = [sys.executable, "-I", "-S", "-c", _WORKER_SOURCE, str(self.spec.percent), repr(SLICE_MS / 1000),
                    str(os.getpid()), _cpu_list(cpus or []), repr(self.max_seconds), pdeath]
            self._procs.append(self._popen(argv, err))

    def _start_stress_ng(self) -> None:
        exe = stress_ng_path()
        if exe is None:
            raise ConfigError(f"stress-ng is not installed (not on PATH); install it with 'sh {INSTALL_SCRIPT}' "
                              f"or use load kind 'auto' / 'python'")
        spec = self.spec
        sets = self._pin_sets()
        if spec.pin == "spread":  # one instance per CPU, each pinned there
            groups: dict[int, int] = {}
            for s in sets:
                groups[s[0]] = groups.get(s[0], 0) + 1
            instances = [(count, [cpu]) for cpu, count in groups.items()]
        else:
            instances = [(spec.workers, sets[0])]
        pdeath = "1" if _pdeathsig_possible() else "0"
        timeout = max(1, int(round(self.max_seconds)))
        for count, cpus in instances:
            cmd = [exe, "--cpu", str(count)]
            if spec.percent < 100:
                cmd += ["--cpu-load", str(spec.percent), "--cpu-load-slice", str(SLICE_MS)]
            if cpus is not None:
                cmd += ["--taskset", _cpu_list(cpus)]
            cmd += ["--timeout", f"{timeout}s"]
            self.command.append(cmd)
            err = tempfile.TemporaryFile(prefix="leancnn-stress-ng-")
            self._stderr.append(err)
            argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER_SOURCE, str(os.getpid()), pdeath] + cmd
            self._procs.append(self._popen(argv, err))
        # stress-ng forks its workers: wait until they are all there, so .pids and .alive() are complete.
        expected = {p.pid: count for p, (count, _) in zip(self._procs, instances)}
        deadline = time.monotonic() + 10.0
        while True:
            members = _scan_groups(set(expected))
            found = {pid: st for pid, st in members.items() if pid not in expected}
            per_group = {g: 0 for g in expected}
            for st in found.values():
                if st[2] in per_group:
                    per_group[st[2]] += 1
            if all(per_group[g] >= n for g, n in expected.items()):
                self._workers = {pid: st[5] for pid, st in found.items()}
                return
            for p in self._procs:
                if p.poll() is not None:
                    raise LeancnnError(f"stress-ng exited with status {p.returncode} right after starting: "
                                       f"{' '.join(self.command[self._procs.index(p)])}\n{self._stderr_tail()}")
            if time.monotonic() > deadline:
                raise LeancnnError(f"stress-ng started only {sum(per_group.values())} of {spec.workers} workers "
                                   f"within 10 s\n{self._stderr_tail()}")
            time.sleep(0.01)

    def stop(self, raise_on_leftover: bool = True, timeout: float = 5.0) -> None:
        """Stop every load process: SIGTERM to each group, SIGKILL after 0.5 s, then wait until none is left.

        Idempotent. Raises :class:`LeancnnError` (or only warns, with ``raise_on_leftover=False``) if a process
        outlives ``timeout``; that needs an unkillable process (a task stuck in the kernel)."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        try:
            self._signal_groups(signal.SIGTERM)
            ids = self._group_ids()
            end_term = time.monotonic() + 0.5
            while _scan_groups(ids) and time.monotonic() < end_term:
                time.sleep(0.01)
            left = _scan_groups(ids)
            deadline = time.monotonic() + timeout
            while left and time.monotonic() < deadline:
                self._kill_now(left)
                time.sleep(0.01)
                left = _scan_groups(ids)
            self._reap()
        finally:
            _unregister(self)
            for f in self._stderr:
                f.close()
        if left:
            msg = f"load processes still running after stop: {sorted(left)}"
            if raise_on_leftover:
                raise LeancnnError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _group_ids(self) -> set[int]:
        return {p.pid for p in self._procs}  # each leader started a process group: pid == pgid

    def _signal_groups(self, sig: int) -> None:
        for p in self._procs:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill_now(self, extra: dict | None = None) -> None:
        """SIGKILL every group and every known load process; no waiting (safe inside a signal handler)."""
        self._signal_groups(signal.SIGKILL)
        for pid in list(self._workers) + list(extra or ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _reap(self) -> None:
        for p in self._procs:
            try:
                p.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass

    # -- what is running

    @property
    def pids(self) -> list[int]:
        """Every load process still running: the group leaders and, for stress-ng, its workers."""
        if not self._procs:
            return []
        return sorted(_scan_groups(self._group_ids()))

    def _usage(self) -> dict[tuple[int, int], tuple[float, float | None]]:
        """(pid, starttime) -> (CPU seconds, run-queue wait seconds or None) of every process of the load."""
        out = {}
        for pid, st in _scan_groups(self._group_ids()).items():
            cpu, wait = st[4] / _CLK_TCK, None
            try:  # schedstat: ns on CPU, ns runnable but waiting for a CPU, timeslices (CONFIG_SCHED_INFO)
                with open(f"/proc/{pid}/schedstat", "rb") as f:
                    run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
                cpu, wait = run_ns / 1e9, wait_ns / 1e9
            except (OSError, ValueError):
                pass
            out[(pid, st[5])] = (cpu, wait)
        return out

    def sample(self) -> dict:
        """CPU use of the load since the previous :meth:`sample` / :meth:`cpu_share` (or the start).

        ``cpu_share``: CPU time used by every process of the load's groups (``/proc/<pid>/schedstat``, else
        ``utime + stime`` from ``/proc/<pid>/stat``) over the wall time, in cores (1.0 = one full core).
        ``wait_share``: the time they were runnable but waiting for a CPU, in cores (None where the kernel
        does not report it). ``cpu_share + wait_share`` is what the load asked for (about workers x percent %, by
        either backend's duty cycle); ``wait_share`` is how much of that the machine's contention denied it.
        ``interval_s``: the wall time covered. A process that ended in the interval counts up to its last reading.
        """
        if not self._procs:
            return {"cpu_share": 0.0, "wait_share": 0.0, "interval_s": 0.0}
        now_usage, now = self._usage(), time.monotonic()
        elapsed = now - self._last_time
        cpu = wait = 0.0
        have_wait = True
        for key, (c, w) in now_usage.items():
            c0, w0 = self._last_usage.get(key, (0.0, 0.0))
            cpu += c - c0
            if w is None or w0 is None:
                have_wait = False
            else:
                wait += w - w0
        self._last_usage, self._last_time = now_usage, now
        if elapsed <= 0:
            return {"cpu_share": 0.0, "wait_share": 0.0 if have_wait else None, "interval_s": 0.0}
        return {"cpu_share": cpu / elapsed, "wait_share": wait / elapsed if have_wait else None,
                "interval_s": elapsed}

    def cpu_share(self) -> float:
        """CPU used by all load processes since the previous call (or the start), in cores (see :meth:`sample`)."""
        return self.sample()["cpu_share"]

    def status(self) -> dict:
        """``{"alive", "kind", "expected", "running", "dead": [{pid, role, returncode}], "stderr"}``.

        ``alive`` is False once any load process has ended while the load should be running."""
        dead = []
        for i, p in enumerate(self._procs):
            if p.poll() is not None:
                role = "stress-ng parent" if self.kind_used == "stress-ng" else "python worker"
                dead.append({"pid": p.pid, "role": role, "returncode": p.returncode,
                             "command": " ".join(self.command[i]) if self.command else None})
        for pid, start in self._workers.items():
            st = _read_stat(pid)
            if st is None or st[0] in ("Z", "X") or st[5] != start:
                dead.append({"pid": pid, "role": "stress-ng worker", "returncode": None, "command": None})
        expected = len(self._procs) + len(self._workers)
        return {"alive": self._started and not self._stopped and not dead, "kind": self.kind_used,
                "expected": expected, "running": expected - len(dead), "dead": dead,
                "stderr": self._stderr_tail() if dead else ""}

    def alive(self) -> bool:
        """True while every load process started is still running; False before start, after stop, and once one
        has ended. The idle condition (0 workers) is alive once started: there is nothing that can die."""
        if self.spec.workers == 0:
            return self._started
        return self.status()["alive"]

    def check(self) -> None:
        """Raise :class:`LoadDiedError` if a load process has ended mid-run (the runner records it)."""
        if self.spec.workers == 0 or not self._started or self._stopped:
            return
        st = self.status()
        if st["dead"]:
            what = "; ".join(f"{d['role']} pid {d['pid']}" + (f" exited with status {d['returncode']}"
                                                               if d["returncode"] is not None else " ended")
                             for d in st["dead"])
            raise LoadDiedError(f"{st['running']} of {st['expected']} load processes ({self.kind_used}, "
                                f"{self.spec.describe()}) still running: {what}" +
                                (f"\n{st['stderr']}" if st["stderr"] else ""), st)

    def _stderr_tail(self, n: int = 2000) -> str:
        out = []
        for f in self._stderr:
            try:
                f.flush()
                f.seek(0)
                out.append(f.read().decode(errors="replace")[-n:])
            except (OSError, ValueError):
                pass
        return "".join(out).strip()

    def __repr__(self) -> str:
        state = "running" if self._started and not self._stopped else "stopped" if self._stopped else "not started"
        return f"CpuLoad({self.spec.describe()}, {self.kind_used or self.spec.kind}, {state})"


# ------------------------------------------------------------------------------------------------- cgroup quota


@dataclasses.dataclass
class _CgroupCpu:
    version: int  # 1 or 2
    mount: Path
    path: Path  # the directory of the process's current cgroup (v1: in the cpu hierarchy)


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of each mount."""
    rows = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a, b = left.split(), right.split()
                if len(a) >= 5 and len(b) >= 3:
                    rows.append((a[3], a[4].replace("\\040", " "), b[0], b[2]))
    except OSError:
        pass
    return rows


def _proc_cgroups(pid: int) -> list[tuple[str, list[str], str]]:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            rows = []
            for line in f:
                hid, ctrl, path = line.rstrip("\n").split(":", 2)
                rows.append((hid, ctrl.split(",") if ctrl else [], path))
            return rows
    except (OSError, ValueError):
        return []


def _rel(path: str, root: str) -> str:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    return path.lstrip("/")


def _find_cpu_cgroup(pid: int) -> tuple[_CgroupCpu | None, str]:
    """Where ``pid``'s cpu controller lives: cgroup v1 where ``cpu`` is mounted there, else v2."""
    mounts, groups = _mountinfo(), _proc_cgroups(pid)
    if not groups:
        return None, f"/proc/{pid}/cgroup is not readable"
    v1 = next((m for m in mounts if m[2] == "cgroup" and "cpu" in m[3].split(",")), None)
    if v1 is not None:
        line = next((g for g in groups if "cpu" in g[1]), None)
        if line is None:
            return None, f"cgroup v1 cpu controller mounted at {v1[1]} but /proc/{pid}/cgroup has no cpu line"
        return _CgroupCpu(1, Path(v1[1]), Path(v1[1]) / _rel(line[2], v1[0])), ""
    v2 = next((m for m in mounts if m[2] == "cgroup2"), None)
    if v2 is None:
        return None, "no cgroup v1 'cpu' controller and no cgroup v2 hierarchy is mounted"
    line = next((g for g in groups if g[0] == "0"), None)
    if line is None:
        return None, f"cgroup v2 mounted at {v2[1]} but /proc/{pid}/cgroup has no v2 line"
    mount = Path(v2[1])
    try:
        controllers = (mount / "cgroup.controllers").read_text().split()
    except OSError as e:
        return None, f"cgroup v2 at {mount}: cannot read cgroup.controllers ({e.strerror})"
    if "cpu" not in controllers:
        return None, (f"cgroup v2 at {mount} does not offer the cpu controller (cgroup.controllers: "
                      f"{' '.join(controllers) or 'none'}) and no cgroup v1 cpu hierarchy is mounted")
    return _CgroupCpu(2, mount, mount / _rel(line[2], v2[0])), ""


def _v2_parent(cg: _CgroupCpu) -> Path:
    """A v2 cgroup under which children get the cpu controller: the nearest ancestor (or self) with ``cpu`` in
    ``cgroup.subtree_control``; at the root we try to enable it. (Non-root cgroups with processes cannot enable
    it: the no-internal-processes rule.)"""
    d = cg.path
    while True:
        try:
            if "cpu" in (d / "cgroup.subtree_control").read_text().split():
                return d
        except OSError:
            pass
        if d == cg.mount or cg.mount not in d.parents:
            break
        d = d.parent
    try:
        (cg.mount / "cgroup.subtree_control").write_text("+cpu")
        return cg.mount
    except OSError as e:
        raise LeancnnError(f"cgroup v2 at {cg.mount}: the cpu controller is not enabled for child cgroups of "
                           f"{cg.path} or any ancestor, and enabling it at the root failed ({e.strerror})") from None


def _parent_dir(cg: _CgroupCpu) -> Path:
    return cg.path if cg.version == 1 else _v2_parent(cg)


def _clean_stale(parent: Path) -> None:
    """Remove empty ``leancnn-q-<pid>-*`` cgroups left by processes that were killed before they could."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for d in entries:
        parts = d.name.split("-")
        if len(parts) == 4 and parts[:2] == ["leancnn", "q"] and parts[2].isdigit() and d.is_dir():
            if not Path(f"/proc/{parts[2]}").exists():
                try:
                    d.rmdir()
                except OSError:
                    pass


def quota_support(pid: int | None = None) -> tuple[bool, str]:
    """``(True, description)`` where a CPU quota can be set for ``pid`` (default: this process), else
    ``(False, reason)``. Probes for real: creates and removes an empty cgroup."""
    pid = os.getpid() if pid is None else pid
    cg, reason = _find_cpu_cgroup(pid)
    if cg is None:
        return False, reason
    try:
        parent = _parent_dir(cg)
    except LeancnnError as e:
        return False, str(e)
    probe = parent / f"leancnn-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe.mkdir()
    except OSError as e:
        return False, f"cgroup v{cg.version}: cannot create a cgroup in {parent} ({e.strerror})"
    try:
        knob = probe / ("cpu.cfs_quota_us" if cg.version == 1 else "cpu.max")
        if not knob.exists():
            return False, f"cgroup v{cg.version}: a new cgroup in {parent} has no {knob.name}"
        if not os.access(knob, os.W_OK):
            return False, f"cgroup v{cg.version}: {knob} is not writable"
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass
    knob = "cpu.cfs_quota_us / cpu.cfs_period_us" if cg.version == 1 else "cpu.max"
    return True, f"cgroup v{cg.version} cpu controller, quota via {knob} under {parent}"


class CpuQuota:
    """Run a process (default: the current one) under a CPU bandwidth limit of ``cpus`` cores (0.5 = half of one
    core; 1.5 = one and a half) with a CFS period of ``period_us`` (100 ms, the kernel default).

    On enter: a new cgroup ``leancnn-q-<pid>-<random>`` is created next to the process's cgroup (v1) or under the
    nearest ancestor that delegates the cpu controller (v2), the quota is written, and the process (all its
    threads: ``cgroup.procs``) is moved in. Children started inside inherit it. On exit, including an exception
    or SIGINT/SIGTERM, every process in it is moved back to the original cgroup and the cgroup is removed.
    """

    def __init__(self, cpus: float, *, pid: int | None = None, period_us: int = 100_000):
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
            raise ConfigError(f"quota 'cpus' must be a number > 0 (cores; 0.5 = half of one core), got {cpus!r}")
        try:
            cores = len(os.sched_getaffinity(0 if pid is None else int(pid)))
        except (OSError, ValueError):
            cores = None  # the process is gone (or not ours): start() reports it
        if cores is not None and cpus > cores:
            raise ConfigError(f"quota 'cpus' = {cpus:g} is above the {cores} CPU(s) the process may run on "
                              f"(os.sched_getaffinity); allowed: (0, {cores}] cores")
        if isinstance(period_us, bool) or not isinstance(period_us, int) or not 1000 <= period_us <= 1_000_000:
            raise ConfigError(f"quota 'period_us' must be an integer in [1000, 1000000], got {period_us!r}")
        self.cpus = float(cpus)
        self.period_us = period_us
        self.quota_us = max(1000, int(round(self.cpus * period_us)))  # the kernel refuses quotas below 1 ms
        self.pid = os.getpid() if pid is None else int(pid)
        self.version: int | None = None
        self.path: Path | None = None
        self._origin: Path | None = None
        self._owner = os.getpid()
        self._active = False

    @property
    def kind(self) -> str:
        return f"cgroup v{self.version}" if self.version else "none"

    def __enter__(self) -> "CpuQuota":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    def start(self) -> "CpuQuota":
        if self._active or self.path is not None:
            raise LeancnnError("this CpuQuota was already started; make a new one")
        cg, reason = _find_cpu_cgroup(self.pid)
        if cg is None:
            raise LeancnnError(f"cannot set a CPU quota: {reason}")
        parent = _parent_dir(cg)
        _clean_stale(parent)
        self.version, self._origin = cg.version, cg.path
        path = parent / f"leancnn-q-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except OSError as e:
            raise LeancnnError(f"cannot set a CPU quota: cannot create cgroup {path} ({e.strerror})") from None
        self.path = path
        _register(self)
        self._active = True
        try:
            if cg.version == 1:
                (path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
            else:
                (path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
            (path / "cgroup.procs").write_text(str(self.pid))
        except OSError as e:
            self.stop()
            raise LeancnnError(f"cannot set a CPU quota in {path}: {e.strerror or e}") from None
        return self

    def stop(self) -> None:
        """Move every process of the quota cgroup back to where this one came from and remove the cgroup.
        Idempotent; safe to call from a signal handler."""
        if not self._active:
            return
        self._active = False
        try:
            path, origin = self.path, self._origin
            for _ in range(50):
                try:
                    pids = (path / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for p in pids:
                    try:
                        (origin / "cgroup.procs").write_text(p)
                    except OSError:
                        pass  # the process ended meanwhile (ESRCH), or cannot move: rmdir below says so
                try:
                    path.rmdir()
                    break
                except OSError as e:
                    if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        break
                    time.sleep(0.01)
        finally:
            _unregister(self)

    def stats(self) -> dict:
        """The quota cgroup's ``cpu.stat`` (periods, throttled periods, throttled time) as a dict of ints."""
        out = {}
        try:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                out[k] = int(v)
        except (OSError, ValueError, TypeError):
            pass
        return out

    def __repr__(self) -> str:
        return f"CpuQuota({self.cpus:g} cores, period {self.period_us} us, pid {self.pid}, {self.kind})"


def _own_quota_cores(pid: int) -> float | None:
    """The CPU quota of ``pid``'s own cgroup in cores, or None when unlimited or unreadable."""
    cg, _ = _find_cpu_cgroup(pid)
    if cg is None:
        return None
    try:
        if cg.version == 1:
            quota = int((cg.path / "cpu.cfs_quota_us").read_text())
            period = int((cg.path / "cpu.cfs_period_us").read_text())
        else:
            q, p = (cg.path / "cpu.max").read_text().split()
            if q == "max":
                return None
            quota, period = int(q), int(p)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


# ------------------------------------------------------------------------------------------------- confounders


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def system_snapshot() -> dict:
    """The machine's state now, to record with each condition (JSON-ready; None where unreadable).

    ``loadavg_1/5/15``, ``procs_running`` / ``procs_total`` (``/proc/loadavg``), ``n_cpus``, ``affinity`` (the
    CPUs this process may use), ``cpu_mhz`` (per CPU of the affinity set) and ``cpu_mhz_mean`` with
    ``cpu_freq_source`` (cpufreq ``scaling_cur_freq`` where present, else ``/proc/cpuinfo`` "cpu MHz"),
    ``governor`` (cpufreq scaling governor(s), comma-joined if they differ), ``cgroup_cpu_quota`` (cores
    allowed by this process's own cgroup, None = unlimited), ``sched_autogroup`` (kernel autogroup scheduling on), ``time_unix``.
    """
    snap: dict[str, Any] = {"time_unix": time.time()}
    la = (_read("/proc/loadavg") or "").split()
    try:
        snap.update(loadavg_1=float(la[0]), loadavg_5=float(la[1]), loadavg_15=float(la[2]))
        running, total = la[3].split("/")
        snap.update(procs_running=int(running), procs_total=int(total))
    except (IndexError, ValueError):
        snap.update(loadavg_1=None, loadavg_5=None, loadavg_15=None, procs_running=None, procs_total=None)
    cpus = allowed_cpus()
    snap["n_cpus"] = os.cpu_count()
    snap["affinity"] = cpus
    mhz: dict[int, float] = {}
    source = None
    for c in cpus:
        khz = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")
        if khz and khz.isdigit():
            mhz[c] = int(khz) / 1000.0
    if mhz:
        source = "cpufreq scaling_cur_freq"
    else:
        info = _read("/proc/cpuinfo") or ""
        proc = None
        for line in info.splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "processor":
                proc = int(val) if val.strip().isdigit() else None
            elif key == "cpu MHz" and proc in cpus:
                try:
                    mhz[proc] = float(val)
                except ValueError:
                    pass
        source = "/proc/cpuinfo" if mhz else None
    snap["cpu_mhz"] = [round(mhz[c], 1) for c in sorted(mhz)]
    snap["cpu_mhz_mean"] = round(sum(mhz.values()) / len(mhz), 1) if mhz else None
    snap["cpu_freq_source"] = source
    governors = sorted({g for c in cpus if (g := _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"))})
    snap["governor"] = ",".join(governors) or None
    snap["cgroup_cpu_quota"] = _own_quota_cores(os.getpid())
    auto = _read("/proc/sys/kernel/sched_autogroup_enabled")
    snap["sched_autogroup"] = None if auto is None else auto == "1"
    return snap
