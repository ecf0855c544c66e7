"""threads=auto: the rule, the machine readings it rests on, the precedence, and the governor following a real
CPU hog (a busy-looping child process on all but one of this process's cores)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leancnn import cli, threads

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def auto_env(monkeypatch):
    """threads=auto as a user gets it (conftest pins LEANCNN_THREADS=1 for every other test)."""
    monkeypatch.delenv("LEANCNN_THREADS", raising=False)
    monkeypatch.setattr(threads, "_forced", None)
    monkeypatch.setattr(threads, "_current", None)
    monkeypatch.setattr(threads, "_entry", {})
    monkeypatch.setattr(threads, "_last_look", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def hogs():
    """Busy-looping processes on all cores of this process but one (1 hog on a 2-core machine)."""
    n = len(threads.allowed_cpus()) - 1
    if n < 1:
        pytest.skip("needs at least 2 CPUs")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)  # let them start spinning
    yield n
    for p in procs:
        p.kill()
        p.wait()


def test_choose_threads_rule():
    # max(1, floor(cores - busy + 0.25)), at most floor(cores)
    assert threads.choose_threads(2, 0.0) == 2
    assert threads.choose_threads(2, None) == 2  # unknown load: as if idle
    assert threads.choose_threads(2, 0.2) == 2  # a little background work does not cost a thread
    assert threads.choose_threads(2, 0.3) == 1  # a core a third busy does
    assert threads.choose_threads(2, 1.0) == 1  # one hog
    assert threads.choose_threads(2, 2.0) == 1  # never fewer than one
    assert threads.choose_threads(4, 1.0) == 3
    assert threads.choose_threads(1.5, 0.0) == 1  # a 1.5-CPU quota: one whole core
    assert threads.choose_threads(8, 0.0) == 8


def test_parse_threads():
    assert threads.parse_threads("auto") == "auto" and threads.parse_threads(" AUTO ") == "auto"
    assert threads.parse_threads(0) == "auto"  # earlier configs' "torch's default"
    assert threads.parse_threads("3") == 3 and threads.parse_threads(2) == 2
    for bad in ("-2", -1, "two", True, 1.5):
        with pytest.raises(ValueError, match="'auto' or a whole number >= 1"):
            threads.parse_threads(bad, "--threads")


def test_precedence(auto_env, monkeypatch):
    assert threads.resolve("auto") == ("auto", "default")
    monkeypatch.setenv("LEANCNN_THREADS", "3")
    assert threads.resolve("auto") == (3, "LEANCNN_THREADS")
    assert threads.resolve(2) == (2, "train.threads")  # a config's fixed count beats the environment
    threads.force("1")
    assert threads.resolve(2) == (1, "--threads")  # the command line beats everything
    monkeypatch.setenv("LEANCNN_THREADS", "many")
    threads.force(None)
    with pytest.raises(ValueError, match="LEANCNN_THREADS"):
        threads.resolve("auto")


def test_other_busy_subtracts_own_time():
    # 2 CPUs for 1 s = 2 s of ticks; 1.5 s busy, of which 0.5 s this process's own: 1 CPU busy with other work
    before = threads._Look(wall=10.0, own=3.0, stat=(100.0, 200.0))
    after = threads._Look(wall=11.0, own=3.5, stat=(101.5, 202.0))
    assert threads.other_busy(before, after) == pytest.approx(1.0)
    assert threads.other_busy(before, threads._Look(10.01, 3.0, (100.0, 200.02))) is None  # too short to read
    assert threads.other_busy(before, threads._Look(11.0, 3.0, None)) is None


def test_cgroup_quota_v1_and_v2(tmp_path):
    (tmp_path / "v1").write_text("4:memory:/x\n1:cpu,cpuacct:/job\n0::/\n")
    job = tmp_path / "root" / "cpu,cpuacct" / "job"
    job.mkdir(parents=True)
    (job / "cpu.cfs_quota_us").write_text("150000\n")
    (job / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(tmp_path / "v1", tmp_path / "root") == pytest.approx(1.5)
    (job / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert threads.cgroup_quota(tmp_path / "v1", tmp_path / "root") is None
    (tmp_path / "v2").write_text("0::/svc\n")
    svc = tmp_path / "root2" / "svc"
    svc.mkdir(parents=True)
    (svc / "cpu.max").write_text("50000 100000\n")
    assert threads.cgroup_quota(tmp_path / "v2", tmp_path / "root2") == pytest.approx(0.5)
    (svc / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(tmp_path / "v2", tmp_path / "root2") is None


def test_local_world_size_shares_the_cores(monkeypatch):
    cores = threads.usable_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.usable_cores() == pytest.approx(cores / 2)


def test_fixed_count_is_set_and_kept(auto_env):
    gov = threads.apply(2)
    assert torch.get_num_threads() == 2 and gov.record()["setting"] == 2
    gov.recheck = 0.0
    assert gov.tick() == 2 and torch.get_num_threads() == 2  # a fixed count never follows the machine
    assert gov.describe() == "threads: 2 (train.threads)"


def test_governor_sees_a_hog_and_drops_to_one_thread(auto_env, hogs):
    gov = threads.apply("auto")
    assert gov.busy is not None and gov.busy >= 0.6 * hogs  # the hog's core, read from /proc/stat
    assert gov.threads == torch.get_num_threads() == 1
    rec = gov.record()
    assert rec["setting"] == "auto" and rec["choices"][0]["threads"] == 1 and rec["choices"][0]["busy"] >= 0.6


def test_governor_follows_a_hog_that_starts_mid_run(auto_env):
    n = len(threads.allowed_cpus()) - 1
    if n < 1:
        pytest.skip("needs at least 2 CPUs")
    gov = threads.Governor()
    gov.start()
    gov.recheck = 0.3
    first = gov.threads
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.2)
        gov._last = threads._look(gov._cpus)  # the window starts once the hog runs
        time.sleep(0.5)
        assert gov.tick() == 1 and torch.get_num_threads() == 1
        assert gov.busy >= 0.6 * n
        if first != 1:  # the machine was free enough for more at start: the change is recorded
            assert gov.changes[-1]["threads"] == 1 and gov.changes[-1]["t"] > 0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _entry(env: dict) -> str:
    code = ("import os, sys; from leancnn import threads; e = threads.prepare_environment(); "
            "assert 'torch' not in sys.modules; print(os.environ.get('OMP_WAIT_POLICY', '-'), '|', e['wait_policy'])")
    return subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_entry_point_waits_passively_on_a_busy_machine(hogs):
    env = {k: v for k, v in os.environ.items() if k not in ("LEANCNN_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "OMP_NUM_THREADS")}
    out = _entry(env)
    assert out.startswith("PASSIVE |") and "busy at start" in out
    assert _entry({**env, "OMP_WAIT_POLICY": "ACTIVE"}).startswith("ACTIVE | as set: OMP_WAIT_POLICY=ACTIVE")
    assert _entry({**env, "LEANCNN_THREADS": "1"}).startswith("- |")  # one thread: nothing to decide


def test_cli_threads_flag_recorded_in_the_run(tmp_path, tiny_overrides, auto_env, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *tiny_overrides, "-o", str(out), "--threads", "2"]) == 0
    assert "(2 thr)" in capsys.readouterr().out  # the epoch line says the count
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"]["setting"] == 2 and summary["threads"]["source"] == "--threads"
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["threads"] == 2
    assert json.loads((out / "fingerprint.json").read_text())["config"].get("train.threads") is None  # runtime key


def test_cli_auto_recorded_in_the_run(tmp_path, tiny_overrides, auto_env):
    out = tmp_path / "run"
    assert cli.main(["train", *tiny_overrides, "-o", str(out)]) == 0
    rec = json.loads((out / "summary.json").read_text())["threads"]
    assert rec["setting"] == "auto" and rec["source"] == "default"
    assert rec["choices"] and 1 <= rec["choices"][0]["threads"] <= len(threads.allowed_cpus())
    assert rec["now"] == json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["threads"]


def test_cli_refuses_bad_threads(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["video", "stream", "--synthetic", "--model", "movinet_a0_stream", "--threads", "-2"])
    assert e.value.code == 2
    assert "--threads must be 'auto' or a whole number >= 1, got -2" in capsys.readouterr().err


def _two_thread_governor() -> threads.Governor:
    gov = threads.Governor(threads=2, cores=2.0)
    gov._pid, gov._start = os.getpid(), time.monotonic()
    torch.set_num_threads(2)
    return gov


@pytest.mark.parametrize("ms_many, ms_one, expected", [(10.0, 5.0, 1), (9.8, 10.0, 1), (4.0, 10.0, 2)])
def test_trial_keeps_a_second_thread_only_when_it_is_faster(auto_env, ms_many, ms_one, expected):
    gov = _two_thread_governor()
    gov.start_trial(block=3, rounds=2, skip=2)
    # 2 warm-up steps, then blocks of 3 alternating 2, 1, 2, 1 threads; the first step of each block is not counted
    counts = [2, 2] + [2, 2, 2, 1, 1, 1] * 2
    seen = []
    for i, n in enumerate(counts):
        seen.append(torch.get_num_threads())
        first = i < 2 or (i - 2) % 3 == 0
        gov.observe(99.0 / 1e3 if first else (ms_many if n == 2 else ms_one) / 1e3)
    assert seen == counts
    assert gov.threads == torch.get_num_threads() == expected and gov._trial is None
    assert gov.cap == (1 if expected == 1 else None)
    assert gov.changes[-1]["trial_ms"] == {"2": ms_many, "1": ms_one}  # the uncounted 99 ms steps left out
    assert ("so at most 1" in gov.describe()) == (expected == 1)
    gov.recheck, gov._last = 0.0, threads._look(threads.allowed_cpus())
    time.sleep(0.15)
    assert gov.tick() <= expected  # a cap holds when the machine is re-read


def test_no_trial_for_a_fixed_count_or_one_thread(auto_env):
    gov = _two_thread_governor()
    gov.setting = 2
    gov.start_trial()
    assert gov._trial is None
    gov = _two_thread_governor()
    gov.threads = 1
    gov.start_trial()
    assert gov._trial is None
