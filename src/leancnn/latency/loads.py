"""CPU contention that really runs, and that is always cleaned up (issue 11, parts 1 and 5): :class:`CpuLoad`.

Yang, Lu and Ren (arXiv 2003.00138) show that inference latency varies under CPU contention and that the ranking of
two models can flip with the contention level. This module makes the co-running CPU hogs; what one contention level
is (:class:`~leancnn.loadspec.LoadSpec`) is defined beside the config, a CPU quota through cgroups is
:mod:`leancnn.latency.quota`, and the confounders recorded with every condition are :mod:`leancnn.latency.system`.
Measuring and statistics live elsewhere in :mod:`leancnn.latency`.

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
``python -I -S .../latency/worker.py busy ...`` (:mod:`leancnn.latency.worker`, run by path) with
:class:`subprocess.Popen` in a process group of its own (``process_group=0``; Python 3.10:
``start_new_session=True``). This is the ``spawn`` start method without multiprocessing's bootstrap. A
``multiprocessing`` spawn child would re-import the caller's ``__main__`` and ``leancnn``, and so torch: seconds
and hundreds of MB per worker. A ``fork`` child would copy a process that runs torch's thread pools, and a forked
child gets into its own process group only after it starts running. With ``Popen``, ``setpgid`` happens before
``exec``, so every worker is in its own group before ``Popen`` returns and ``killpg`` always finds it. The worker
needs only ``os``, ``time`` and ``ctypes`` and starts in about 20 ms.

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
3. :func:`~leancnn.latency.cleanup.stop_all` is registered with :mod:`atexit`. Forked children of this process
   inherit the registry but never act on it, because every load remembers the pid that owns it.
   (Both layers are :mod:`leancnn.latency.cleanup`, shared with the CPU quota.)
4. If the parent dies (SIGKILL, OOM), each Python worker checks ``os.getppid()`` before every busy slice and
   exits when its parent is gone: every 10 ms at 100 %, every ``10 ms x 100 / P`` below (1 s at 1 %). A worker
   started from the main thread also has ``PR_SET_PDEATHSIG = SIGKILL``. stress-ng is started through a small
   launcher (``worker.py exec``) that sets ``PR_SET_PDEATHSIG = SIGKILL`` and then ``exec``s stress-ng (no
   ``preexec_fn``, which is unsafe in a threaded process). stress-ng's own workers die with their parent.
   The backstop is ``--timeout`` (``max_seconds``, one hour by default); the Python workers honour it too. The
   kernel ties PDEATHSIG to the *thread* that forked, so it is only set when the load is started from the main
   thread. A load started from another thread relies on the ``getppid`` watchdog and the timeout.

A load process that dies mid-run (OOM killer, stray ``kill``) is not ignored: :meth:`CpuLoad.alive` returns
False, :meth:`CpuLoad.status` says which process and its exit status, and :meth:`CpuLoad.check` raises
:class:`LoadDiedError`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

from .. import loadspec
from ..errors import ConfigError, LeancnnError
from ..loadspec import INSTALL_SCRIPT, LoadSpec, cpu_list
from ..threads import allowed_cpus
from . import worker
from .cleanup import register_load, unregister

SLICE_MS = 10  # busy slice of a load below 100 %: stress-ng --cpu-load-slice and the Python workers' slice
DEFAULT_MAX_SECONDS = 3600.0  # backstop: a load ends by itself after this long, whatever happens to its parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_WORKER = os.path.abspath(worker.__file__)  # run by path: see the worker module's docstring


class LoadDiedError(LeancnnError):
    """A load process ended while the load should have been running. ``.status`` holds :meth:`CpuLoad.status`."""

    def __init__(self, message: str, status: dict):
        super().__init__(message)
        self.status = status


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
        use_stress = spec.kind == "stress-ng" or (spec.kind == "auto" and loadspec.stress_ng_path() is not None)
        self.kind_used = "stress-ng" if use_stress else "python fallback"
        register_load(self)
        try:
            if use_stress:
                self._start_stress_ng()
            else:
                self._start_python()
        except BaseException:
            self._kill_now()
            self._reap()
            unregister(self)
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
            argv = [sys.executable, "-I", "-S", _WORKER, "busy", str(self.spec.percent), repr(SLICE_MS / 1000),
                    str(os.getpid()), cpu_list(cpus or []), repr(self.max_seconds), pdeath]
            self._procs.append(self._popen(argv, err))

    def _start_stress_ng(self) -> None:
        exe = loadspec.stress_ng_path()
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
                cmd += ["--taskset", cpu_list(cpus)]
            cmd += ["--timeout", f"{timeout}s"]
            self.command.append(cmd)
            err = tempfile.TemporaryFile(prefix="leancnn-stress-ng-")
            self._stderr.append(err)
            argv = [sys.executable, "-I", "-S", _WORKER, "exec", str(os.getpid()), pdeath] + cmd
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
            unregister(self)
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
