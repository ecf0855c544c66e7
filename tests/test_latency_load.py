"""Contention generators (issue 11, parts 1 and 5): real load processes, real signals, nothing left behind.

Every load here lives at most ~1.5 s. Process checks read ``/proc``: a process counts as left over if it is still
running (not a zombie) and is either one of the recorded PIDs or in one of the load's sessions/process groups. The
load's stress-ng workers are included even when they were not printed. stress-ng tests are skipped where it is not
installed (``sh scripts/install_stress_ng.sh``). The quota tests are skipped with the reason from
:func:`quota_support` where no cgroup is writable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.procs import default_sigint, proc_stat

from leancnn import loadspec
from leancnn.config import from_dict
from leancnn.errors import ConfigError, LeancnnError
from leancnn.latency.cleanup import active_loads, stop_all
from leancnn.latency.loads import CpuLoad, LoadDiedError
from leancnn.latency.quota import CpuQuota, quota_support
from leancnn.latency.system import cpu_label, system_snapshot
from leancnn.loadspec import LoadSpec

VICTIM = Path(__file__).parent / "helpers" / "load_victim.py"
HAVE_STRESS_NG = loadspec.stress_ng_path() is not None
needs_stress_ng = pytest.mark.skipif(not HAVE_STRESS_NG, reason="stress-ng is not installed "
                                     "(run 'sh scripts/install_stress_ng.sh' as root to test that backend)")
KINDS = ["python", pytest.param("stress-ng", marks=needs_stress_ng)]
N_CPUS = len(os.sched_getaffinity(0))


def _stat(pid: int):
    """(state, pgid, sid) of a pid, or None when gone."""
    st = proc_stat(pid)
    return None if st is None else (st[0], st[2], st[3])


def _left(pids, groups=()) -> list[int]:
    """The running (non-zombie) processes among ``pids`` or in the sessions / process groups ``groups``."""
    pids, groups = set(pids), set(groups)
    left = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[0] not in "ZX" and (int(name) in pids or st[1] in groups or st[2] in groups):
                left.append(int(name))
    return sorted(left)


def _wait_gone(pids, groups=(), within: float = 3.0) -> list[int]:
    deadline = time.monotonic() + within
    left = _left(pids, groups)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _left(pids, groups)
    return left


# ----------------------------------------------------------------------------------------- load, share, cleanup


@pytest.mark.slow
def test_python_fallback_cpu_share_follows_the_duty_cycle_and_stops():
    with CpuLoad(LoadSpec(workers=1, percent=50, kind="python")) as load:
        assert load.kind_used == "python fallback"
        pids, groups = load.pids, load._group_ids()
        assert len(pids) == 1 and load.alive()
        time.sleep(0.1)
        load.sample()  # start of the measured interval (interpreter start-up excluded)
        time.sleep(1.4)
        s = load.sample()
        load.check()
    # Busy half of the wall time: about half a core, less when the 2 shared cores are busy, never a full core.
    assert 0.2 <= s["cpu_share"] <= 0.7, s
    if s["wait_share"] is not None:
        # CPU + run-queue wait is the time the worker wanted a CPU: ~0.5 whatever the contention (a 100 % worker
        # wants 1.0). Wake-up latency after each sleep adds a little under contention, as it does for stress-ng.
        assert 0.35 <= s["cpu_share"] + s["wait_share"] <= 0.8, s
    assert _wait_gone(pids, groups, within=0.5) == []
    assert not load.alive() and load not in active_loads()


@pytest.mark.slow
@needs_stress_ng
def test_stress_ng_starts_consumes_cpu_and_stops():
    with CpuLoad(LoadSpec(workers=1, kind="stress-ng")) as load:
        assert load.kind_used == "stress-ng"
        assert load.command[0][1:3] == ["--cpu", "1"] and "--timeout" in load.command[0]
        pids, groups = load.pids, load._group_ids()
        assert len(pids) == 2  # the stress-ng parent and its one worker
        time.sleep(0.1)
        load.sample()
        time.sleep(1.2)
        s = load.sample()
        assert load.alive()
    assert 0.25 <= s["cpu_share"] <= 1.05, s  # one full hog: most of a core unless the shared machine is busy
    if s["wait_share"] is not None:
        assert 0.9 <= s["cpu_share"] + s["wait_share"] <= 1.1, s  # it always wants the whole core
    assert _wait_gone(pids, groups, within=0.5) == []


@pytest.mark.parametrize("kind", KINDS)
def test_cleanup_on_exception_inside_with(kind):
    with pytest.raises(RuntimeError, match="boom"):
        with CpuLoad(LoadSpec(workers=2, percent=30, kind=kind)) as load:
            pids, groups = load.pids, load._group_ids()
            assert len(pids) == (2 if kind == "python" else 3)
            raise RuntimeError("boom")
    assert _wait_gone(pids, groups, within=0.5) == []
    assert active_loads() == []


def test_zero_workers_is_the_idle_condition():
    with CpuLoad(LoadSpec(workers=0)) as load:
        assert load.kind_used == "none" and load.pids == [] and load.cpu_share() == 0.0
        assert load.alive()
        load.check()


def test_stop_all_stops_loads_started_without_with():
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    a = CpuLoad(workers=1, percent=20, kind="python").start()
    b = CpuLoad(workers=1, percent=20).start()
    pids, groups = a.pids + b.pids, a._group_ids() | b._group_ids()
    assert len(active_loads()) == 2
    stop_all()
    assert active_loads() == []
    assert _wait_gone(pids, groups, within=0.5) == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


@pytest.mark.parametrize("kind", KINDS)
def test_a_load_process_that_dies_midrun_is_reported(kind):
    with CpuLoad(LoadSpec(workers=1, percent=20, kind=kind)) as load:
        victim = [p for p in load.pids if p not in load._group_ids()][0] if kind == "stress-ng" else load.pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while load.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not load.alive()
        status = load.status()
        assert victim in [d["pid"] for d in status["dead"]]
        with pytest.raises(LoadDiedError, match=str(victim)) as err:
            load.check()
        assert err.value.status["running"] < err.value.status["expected"]
        groups = load._group_ids()
    assert _wait_gone([victim], groups, within=0.5) == []


@pytest.mark.skipif(N_CPUS < 2, reason="needs 2 CPUs to spread workers")
@pytest.mark.parametrize("kind", KINDS)
def test_spread_pins_one_worker_per_cpu(kind):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    with CpuLoad(LoadSpec(workers=2, percent=10, pin="spread", kind=kind)) as load:
        time.sleep(0.15)  # python workers pin themselves as they start
        workers = [p for p in load.pids if kind == "python" or _is_stress_worker(p, load)]
        assert sorted(sorted(os.sched_getaffinity(p)) for p in workers) == [[c] for c in cpus]
    with CpuLoad(LoadSpec(workers=2, percent=10, pin=[cpus[1]], kind=kind)) as load:
        time.sleep(0.15)
        assert all(os.sched_getaffinity(p) == {cpus[1]} for p in load.pids)
        if kind == "stress-ng":
            assert load.command[0][load.command[0].index("--taskset") + 1] == str(cpus[1])


def _is_stress_worker(pid, load) -> bool:
    return pid not in load._group_ids()


# ----------------------------------------------------------------------------------------- real signals


def _start_victim(kind: str, workers: int = 2, mode: str = "main"):
    proc = subprocess.Popen([sys.executable, str(VICTIM), kind, str(workers), "50", mode], preexec_fn=default_sigint,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"victim did not start: {proc.stderr.read()}")
    info = json.loads(line)
    assert len(info["pids"]) == workers + (kind == "stress-ng")
    assert all(_stat(p) is not None for p in info["pids"])
    time.sleep(0.2)  # the load is running
    return proc, info


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_real_signal_to_the_parent_stops_every_load_process(kind, sig):
    proc, info = _start_victim(kind)
    proc.send_signal(sig)
    rc = proc.wait(timeout=5)
    out = proc.stdout.read()
    # SIGINT: KeyboardInterrupt reached the victim's except clause (the handler chain kept Python's behaviour);
    # SIGTERM: the process died of SIGTERM, as it would have without our handler.
    assert rc == (130 if sig == signal.SIGINT else -signal.SIGTERM), (rc, out, proc.stderr.read())
    if sig == signal.SIGINT:
        assert "interrupted" in out
    assert _wait_gone(info["pids"], info["leaders"], within=3.0) == []


@pytest.mark.parametrize("kind, mode", [("python", "main"), ("python", "thread"),
                                        pytest.param("stress-ng", "main", marks=needs_stress_ng)])
def test_parent_killed_with_sigkill_load_ends_by_itself(kind, mode):
    """SIGKILL runs no handler and no atexit. Main thread: PR_SET_PDEATHSIG ends the load. Started from another
    thread there is no PDEATHSIG, and the python workers' getppid watchdog must do it."""
    proc, info = _start_victim(kind, mode=mode)
    proc.kill()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert _wait_gone(info["pids"], info["leaders"], within=3.0) == []


def test_sigterm_handler_chains_to_the_previous_one_and_is_restored():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with CpuLoad(LoadSpec(workers=1, percent=20, kind="python")) as load:
            assert signal.getsignal(signal.SIGTERM) is not previous
            pids, groups = load.pids, load._group_ids()
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread before the next bytecode
            time.sleep(0.05)
            assert calls == [signal.SIGTERM]
            assert _wait_gone(pids, groups, within=1.0) == []  # killed by the handler, before the with ended
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


# ----------------------------------------------------------------------------------------- validation


def test_validation_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'load\.workers' = 99 is above the \d+ CPU"):
        LoadSpec(workers=99)
    with pytest.raises(ValueError, match=r"'load\.workers' must be >= 0"):  # ConfigError is a ValueError too
        LoadSpec(workers=-1)
    with pytest.raises(ConfigError, match="load.workers.*integer"):
        LoadSpec(workers=True)
    for bad in (0, 101):
        with pytest.raises(ConfigError, match=r"'load\.percent' must be in \[1, 100\]"):
            LoadSpec(workers=1, percent=bad)
    with pytest.raises(ConfigError, match="load.percent.*integer"):
        LoadSpec(workers=1, percent=50.5)
    with pytest.raises(ConfigError, match=r"'load\.pin\[0\]': CPU 4096 is not one"):
        LoadSpec(workers=1, pin=[4096])
    with pytest.raises(ConfigError, match="more than once"):
        LoadSpec(workers=1, pin=[0, 0])
    with pytest.raises(ConfigError, match="'load.pin'.*'everywhere' is not allowed"):
        LoadSpec(workers=1, pin="everywhere")
    with pytest.raises(ConfigError, match="'load.kind'.*allowed values: auto, stress-ng, python"):
        LoadSpec(workers=1, kind="hog")
    # the typed-config loader accepts it and names the full key path
    assert from_dict(LoadSpec, {"workers": 1, "pin": [0], "kind": "python"}, "contention.load").pin == [0]
    with pytest.raises(ConfigError, match="unknown config key 'contention.load.cores'"):
        from_dict(LoadSpec, {"cores": 1}, "contention.load")


def test_missing_stress_ng_when_demanded_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(loadspec, "stress_ng_path", lambda: None)
    with pytest.raises(LeancnnError, match=r"demands stress-ng.*scripts/install_stress_ng\.sh"):
        LoadSpec(workers=1, kind="stress-ng")
    LoadSpec(workers=0, kind="stress-ng")  # no load: nothing to run, nothing missing
    with CpuLoad(LoadSpec(workers=1, percent=10, kind="auto")) as load:  # auto falls back, and says so
        assert load.kind_used == "python fallback"


def test_cpu_load_arguments():
    with pytest.raises(TypeError, match="not both"):
        CpuLoad(LoadSpec(workers=1), workers=2)
    with pytest.raises(ValueError, match="max_seconds"):
        CpuLoad(LoadSpec(workers=1), max_seconds=0)
    load = CpuLoad(workers=1, percent=10, kind="python")
    with load:
        pass
    with pytest.raises(LeancnnError, match="already started"):
        load.start()


# ----------------------------------------------------------------------------------------- quota, snapshot

QUOTA_OK, QUOTA_REASON = quota_support()
needs_quota = pytest.mark.skipif(not QUOTA_OK, reason=f"no writable cgroup for a CPU quota: {QUOTA_REASON}")


def _cpu_cgroup_line() -> str:
    return next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines()
                if "cpu" in ln.split(":")[1].split(",") or ln.startswith("0::"))


def _busy_share(seconds: float) -> float:
    """CPU share (cores) this thread gets in a busy loop."""
    w0, c0 = time.perf_counter(), time.thread_time()
    while time.perf_counter() - w0 < seconds:
        pass
    return (time.thread_time() - c0) / (time.perf_counter() - w0)


@needs_quota
def test_cpu_quota_limits_this_process_and_is_undone():
    before, quota_before = _cpu_cgroup_line(), system_snapshot()["cgroup_cpu_quota"]
    free = _busy_share(0.3)
    with CpuQuota(0.25, period_us=10_000) as quota:
        assert quota.kind in ("cgroup v1", "cgroup v2") and quota.path.is_dir()
        assert str(os.getpid()) in (quota.path / "cgroup.procs").read_text().split()
        assert system_snapshot()["cgroup_cpu_quota"] == pytest.approx(0.25)
        share = _busy_share(1.0)
        stats = quota.stats()
        path = quota.path
    assert share <= 0.25 * 1.2 + 0.02, share  # the quota is a ceiling
    assert share >= 0.12, share  # and the loop did run at (most of) it
    if free > 0.45:  # unthrottled, this loop got clearly more: the limit is what cut it
        assert share < free - 0.1
    assert stats.get("nr_throttled", 0) > 0
    assert _cpu_cgroup_line() == before and not path.exists()
    assert system_snapshot()["cgroup_cpu_quota"] == quota_before


@needs_quota
def test_cpu_quota_is_undone_on_exception():
    before, handler = _cpu_cgroup_line(), signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError):
        with CpuQuota(0.5) as quota:
            path = quota.path
            raise RuntimeError("boom")
    assert _cpu_cgroup_line() == before and not path.exists()
    assert signal.getsignal(signal.SIGTERM) is handler


@needs_quota
def test_cpu_quota_is_undone_on_sigterm_and_stale_cgroups_are_removed():
    proc = subprocess.Popen([sys.executable, str(VICTIM), "quota"], stdout=subprocess.PIPE, text=True)
    path = Path(json.loads(proc.stdout.readline())["path"])
    assert path.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not path.exists()  # the handler moved the process back and removed the cgroup before dying
    # SIGKILL leaves an empty cgroup behind; the next quota removes those whose owner is dead.
    proc = subprocess.Popen([sys.executable, str(VICTIM), "quota"], stdout=subprocess.PIPE, text=True)
    path = Path(json.loads(proc.stdout.readline())["path"])
    proc.kill()
    proc.wait(timeout=5)
    assert path.is_dir()
    with CpuQuota(0.5):
        assert not path.exists()


def test_quota_support_answers_with_a_reason():
    ok, reason = quota_support()
    assert isinstance(ok, bool) and reason and "cgroup" in reason
    with pytest.raises(ConfigError, match="cpus"):
        CpuQuota(0)
    with pytest.raises(ConfigError, match="period_us"):
        CpuQuota(0.5, period_us=10)


def test_system_snapshot_records_the_confounders():
    snap = system_snapshot()
    assert snap["n_cpus"] == os.cpu_count() and snap["affinity"] == sorted(os.sched_getaffinity(0))
    assert snap["loadavg_1"] >= 0 and snap["procs_total"] >= 1
    if snap["cpu_mhz_mean"] is not None:
        assert snap["cpu_freq_source"] and 100 < snap["cpu_mhz_mean"] < 10_000
        assert len(snap["cpu_mhz"]) == len(snap["affinity"])
    json.dumps(snap)  # JSON-ready for the results file
    assert set(snap["cpu"]) == {"vendor", "model_name", "family", "model", "stepping"}


def test_cpu_label_tells_two_epyc_generations_apart():
    milan = {"vendor": "AuthenticAMD", "model_name": "AMD EPYC", "family": 25, "model": 1, "stepping": 1}
    genoa = {**milan, "model": 17}
    assert cpu_label(milan) == "AMD EPYC (family 25 model 1 stepping 1)"
    assert cpu_label(genoa, name=False) == "family 25 model 17 stepping 1"
    assert cpu_label(None) is None and cpu_label({"family": None}) is None  # a run from before the record
    assert cpu_label({"model_name": "Apple M2", "family": None}) == "Apple M2"
