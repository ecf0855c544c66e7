"""The machine's state to record with every latency condition (issue 11): :func:`system_snapshot`.

Load averages, the CPUs this process may use and their clock frequencies, the cpufreq governor, this process's own
cgroup CPU quota (:func:`leancnn.latency.quota.own_quota_cores`) and whether the kernel schedules by autogroup (which
changes how a co-running load competes; :mod:`leancnn.latency.loads`): the confounders that go with every
condition's numbers. Everything is read from ``/proc`` and ``/sys``; what cannot be read is None.

:func:`cpu_identity` names the processor beyond its marketing name: a virtual machine often reports only "AMD EPYC"
as the model name, which two EPYC generations (family 25 model 1, Milan; family 25 model 17, Genoa) share, so the
snapshot also records vendor, family, model and stepping, and :func:`cpu_label` turns them into one short string
(``leancnn latency compare`` tells two runs apart by it when their device strings coincide).
"""

from __future__ import annotations

import functools
import os
import platform
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


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> tuple[tuple[str, Any], ...]:
    fields = {"vendor_id": "vendor", "model name": "model_name", "cpu family": "family", "model": "model",
              "stepping": "stepping"}
    out: dict[str, Any] = {v: None for v in fields.values()}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "processor" and any(v is not None for v in out.values()):
            break  # the first processor's block is enough
        if key in fields and val:
            out[fields[key]] = int(val) if key in ("cpu family", "model", "stepping") and val.isdigit() else val
    if out["model_name"] is None:
        out["model_name"] = platform.processor() or platform.machine() or None
    return tuple(out.items())


def cpu_identity() -> dict:
    """The processor as ``/proc/cpuinfo`` names it (its first CPU): ``vendor`` (e.g. "AuthenticAMD"),
    ``model_name``, and the integers ``family``, ``model``, ``stepping``; None where not readable (then
    ``model_name`` falls back to :func:`platform.processor`). Read once per process."""
    return dict(_cpu_identity())


def cpu_label(identity: dict | None, name: bool = True) -> str | None:
    """``"AMD EPYC (family 25 model 17 stepping 1)"`` from a :func:`cpu_identity` record (missing parts left out;
    ``name=False``: ``"family 25 model 17 stepping 1"`` alone); None for no record (a run written before the
    identity was recorded)."""
    if not isinstance(identity, dict) or not any(v is not None for v in identity.values()):
        return None
    ids = " ".join(f"{k} {identity[k]}" for k in ("family", "model", "stepping") if identity.get(k) is not None)
    model_name = identity.get("model_name") or identity.get("vendor")
    if not name:
        return ids or (str(model_name) if model_name else None)
    return f"{model_name or 'CPU'} ({ids})" if ids else str(model_name)


def system_snapshot() -> dict:
    """The machine's state now, to record with each condition (JSON-ready; None where unreadable).

    ``loadavg_1/5/15``, ``procs_running`` / ``procs_total`` (``/proc/loadavg``), ``n_cpus``, ``affinity`` (the
    CPUs this process may use), ``cpu_mhz`` (per CPU of the affinity set) and ``cpu_mhz_mean`` with
    ``cpu_freq_source`` (cpufreq ``scaling_cur_freq`` where present, else ``/proc/cpuinfo`` "cpu MHz"),
    ``governor`` (cpufreq scaling governor(s), comma-joined if they differ), ``cgroup_cpu_quota`` (cores
    allowed by this process's own cgroup, None = unlimited), ``sched_autogroup`` (kernel autogroup scheduling on),
    ``cpu`` (:func:`cpu_identity`: vendor, model name, family, model, stepping), ``time_unix``.
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
    snap["cpu"] = cpu_identity()
    return snap
