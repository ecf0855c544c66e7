"""A CPU quota through cgroups (issue 11): :class:`CpuQuota`, :func:`quota_support` and :func:`own_quota_cores`.

:class:`CpuQuota` moves a process (the current one by default) into a new cgroup with a CPU bandwidth limit. It
uses cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) or v2 (``cpu.max``), whichever has the ``cpu``
controller mounted and writable. On exit (including an exception or a signal: the quota registers with
:mod:`leancnn.latency.cleanup`, like a load) it moves the process back and removes the cgroup. :func:`quota_support`
says ``(False, reason)`` where neither can be used, so callers can skip with a clear note. A quota models
deterministic time slicing. It does not model the cache, memory-bandwidth and frequency interference of a co-running
hog (:class:`~leancnn.latency.loads.CpuLoad`). The two are different contention conditions.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import secrets
import time
from pathlib import Path

from ..errors import ConfigError, LeancnnError
from .cleanup import register_quota, unregister


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
        register_quota(self)
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
            unregister(self)

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


def own_quota_cores(pid: int) -> float | None:
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
