"""Interrupts end promptly (issue 19, part 4): Ctrl-C (SIGINT to the process group, as a terminal sends it) or
SIGTERM (``kill``: to the command's process only) of a command whose workers are running ends it within 5 s,
with the one line ``interrupted`` on stderr (exit 130 / 143), no process left and no ``.partial`` folder or
temporary file behind. The commands run as real subprocesses; ``/proc`` says which processes they started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.procs import default_sigint, proc_stat

from leancnn.cli import main
from leancnn.errors import Terminated
from leancnn.interrupts import sigterm_raises
from leancnn.prune.search import evolve

TINY = ["model.name=digits_cnn", "data.limit_train=256", "data.limit_eval=128", "data.batch_size=64",
        "train.epochs=1"]
LONG_TRAIN = ["model.name=digits_cnn", "data.limit_train=4096", "data.limit_eval=128", "data.batch_size=64",
              "train.epochs=20", "train.threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "run"
    assert main(["train", *TINY, "-o", str(out)]) == 0
    return out


def _alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in "ZX"


def _descendants(root: int) -> set[int]:
    """Every live process below ``root`` (by parent pid), and every one in its session."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[0] not in "ZX":
                stats[int(name)] = st
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, st in stats.items() if st[1] in frontier and p not in found}
        found |= frontier
    return found | {p for p, st in stats.items() if st[3] == root and p != root}


def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m leancnn ARGV`` as the leader of a session of its own (so the test can send a terminal's
    Ctrl-C to its process group), with SIGINT at its default (a background shell would ignore it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "leancnn", *argv], cwd=cwd, env=env, preexec_fn=default_sigint,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_when(proc: subprocess.Popen, workers: int, sig: int, to_group: bool,
                    ready: Path | None = None) -> tuple[int, float, str, set]:
    """Wait until ``proc`` runs ``workers`` child processes (and ``ready`` exists), send ``sig``; (exit code,
    seconds to exit, stderr, the processes it had started)."""
    deadline = time.monotonic() + 120
    kids: set[int] = set()
    try:
        while ((len(kids) < workers or (ready is not None and not ready.exists())) and time.monotonic() < deadline
               and proc.poll() is None):
            time.sleep(0.1)
            kids = {p for p in _descendants(proc.pid) if proc_stat(p) and proc_stat(p)[1] == proc.pid}
        assert len(kids) >= workers, f"no workers appeared: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
        time.sleep(1.0)  # the workers are busy
        kids = _descendants(proc.pid)
        t0 = time.monotonic()
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return rc, took, proc.stderr.read(), kids


def _assert_clean_end(rc, took, err, kids, sig):
    assert rc == (130 if sig == signal.SIGINT else 143), (rc, err)
    assert err == "interrupted\n", err  # one line: no worker's KeyboardInterrupt traceback
    assert took < 5.0, f"took {took:.1f} s to end"
    deadline = time.monotonic() + 2
    while any(_alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in kids if _alive(p)] == []


def _temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".partial", ".tmp")))


# ----------------------------------------------------------------------------------------- prune search pool


@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "kill"])
def test_prune_search_with_a_worker_pool_ends_on_interrupt(trained, tmp_path, sig, to_group):
    """The reported hang: Ctrl-C reached the pool workers too, which printed KeyboardInterrupt tracebacks, the
    pool lost their tasks and the parent waited for them for ever, leaving ``<out>.partial`` behind."""
    proc = _start(["prune", str(trained), "--criteria", "l1", "l2", "bn", "--search", "ea", "search.workers=2",
                   "search.population=8", "search.generations=100000", "search.val_images=64",
                   "search.bn_batches=1", "calib_batches=1", "-o", "pruned"], tmp_path)
    _assert_clean_end(*_interrupt_when(proc, 2, sig, to_group), sig)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither pruned/ nor pruned.partial/


def test_evolve_terminates_its_pool_when_interrupted():
    """In process: an interrupt while the workers evaluate (here each evaluation takes 60 s) ends evolve at once
    and leaves no worker behind."""
    def slow(genome):
        time.sleep(60)
        return float(np.sum(genome))

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    before = _descendants(os.getpid())
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            evolve(slow, 3, population=4, generations=2, workers=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - t0 < 4
    assert _descendants(os.getpid()) - before == set()


# ----------------------------------------------------------------------------------------- loader workers, DDP


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["kill-group"])
def test_training_with_loader_workers_ends_on_sigterm_to_the_group(tmp_path, sig):
    """``kill -TERM -PGID`` reaches the DataLoader workers too: they end quietly (before: torch made them die
    of SIGTERM and the parent reported 'DataLoader worker ... is killed by signal' with a traceback)."""
    proc = _start(["train", *LONG_TRAIN, "data.num_workers=2", "-o", "run"], tmp_path)
    _assert_clean_end(*_interrupt_when(proc, 2, sig, to_group=True), sig)
    assert _temp_files(tmp_path) == []
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["while-starting", "while-training"])
def test_ddp_training_ends_on_ctrl_c(tmp_path, training):
    """``--nproc-per-node 2``: the launcher receives Ctrl-C (the workers run in sessions of their own), stops the
    workers with SIGTERM and prints the one line itself (before: torch's SignalException traceback, a warning
    line, and, while the workers were still importing, their KeyboardInterrupt tracebacks)."""
    proc = _start(["train", *LONG_TRAIN, "--nproc-per-node", "2", "-o", "run"], tmp_path)
    ready = tmp_path / "run" / "config.yaml" if training else None  # rank 0 has started the run
    _assert_clean_end(*_interrupt_when(proc, 2, signal.SIGINT, to_group=True, ready=ready), signal.SIGINT)
    assert _temp_files(tmp_path) == []


# ----------------------------------------------------------------------------------------- the handler


def test_sigterm_raises_terminated_inside_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as e:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs before the next bytecode
    assert isinstance(e.value, KeyboardInterrupt) and e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_ddp_workers_end_when_the_launcher_is_killed_outright(tmp_path):
    """SIGKILL of the ``--nproc-per-node`` launcher (it can run no cleanup): its workers, in sessions of their
    own, get SIGTERM from the kernel (parent-death signal) and end within 5 s instead of waiting forever."""
    proc = _start(["train", *LONG_TRAIN, "--nproc-per-node", "2", "-o", "run"], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "config.yaml").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        workers = {p for p in _descendants(proc.pid) if proc_stat(p) and proc_stat(p)[1] == proc.pid}
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in workers if _alive(p)] == []
    finally:
        for p in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
