"""The machine's state to record with every latency condition (issue 11): :func:`system_snapshot`.

Load averages, the CPUs this process may use and their clock frequencies, the cpufreq governor, this process's own
cgroup CPU quota (:func:`leancnn.latency.quota.own_quota_cores`) and whether the kernel schedules by autogroup (which
changes how a co-running load competes; :mod:`leancnn.latency.loads`): the confounders that go with every
condition's numbers. Everything is read from ``/proc`` and ``/sys``; what cannot be read is None.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..threads import allowed_cpus
from .quota import own_quota_cores


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
    allowed by this process's own cgroup, None = unlimited), ``sched_autogroup`` (kernel autogroup scheduling on),
    ``time_unix``.
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
    snap["cgroup_cpu_quota"] = own_quota_cores(os.getpid())
    auto = _read("/proc/sys/kernel/sched_autogroup_enabled")
    snap["sched_autogroup"] = None if auto is None else auto == "1"
    return snap
