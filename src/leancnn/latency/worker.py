"""The programs a load's processes run (issue 11): the Python busy-loop worker and the stress-ng launcher.

:class:`leancnn.latency.loads.CpuLoad` starts each as a fresh interpreter on this file, by path::

    python -I -S .../leancnn/latency/worker.py busy PERCENT SLICE_S PARENT_PID CPUS MAX_SECONDS PDEATHSIG
    python -I -S .../leancnn/latency/worker.py exec PARENT_PID PDEATHSIG STRESS_NG_ARGV...

Run by path, not with ``-m leancnn.latency.worker``: ``-m`` would import the ``leancnn`` and ``leancnn.latency``
packages first, and so torch (seconds and hundreds of MB per worker). So this module imports nothing of ours and
only ``os``, ``sys``, ``time`` and ``ctypes`` of the standard library; ``-I -S`` keep the user's environment,
site-packages and this folder off ``sys.path``. A worker starts in about 20 ms.

* ``busy``: CPUS is a comma-separated CPU set ("" = no pinning), PDEATHSIG is 0/1. The duty cycle is stress-ng's
  (``stress-cpu.c``): a busy slice of wall time, then a sleep of ``(100/P - 1)`` times it, shortened by how much
  the previous sleep overran (wake-up latency), so the busy share of wall time stays at P. Before every busy
  slice the worker checks ``os.getppid()`` and exits when its parent is gone; it also ends after MAX_SECONDS.
* ``exec``: set ``PR_SET_PDEATHSIG = SIGKILL`` (kept across ``execve``), check the parent is still there, then
  ``exec`` stress-ng. This replaces ``preexec_fn``, which is unsafe in a threaded process.

Both exit with status 3 when the parent died before they got going.
"""

import os
import sys
import time


def busy(percent: float, slice_s: float, parent: int, cpus: str, max_s: float, pdeath: bool) -> None:
    """Burn CPU ``percent`` % of wall time in slices of ``slice_s`` until the parent is gone or ``max_s`` passed."""
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


def launch(parent: int, pdeath: bool, argv: list[str]) -> None:
    """Set PR_SET_PDEATHSIG, check the parent is still there, and ``exec`` ``argv`` (stress-ng's command line)."""
    if pdeath:
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL; kept across execve
        except Exception:
            pass
    if os.getppid() != parent:
        os._exit(3)
    os.execvp(argv[0], argv)


def main(argv: list[str]) -> None:
    if argv[0] == "busy":
        busy(float(argv[1]), float(argv[2]), int(argv[3]), argv[4], float(argv[5]), argv[6] == "1")
    elif argv[0] == "exec":
        launch(int(argv[1]), argv[2] == "1", argv[3:])
    else:
        raise SystemExit(f"usage: worker.py busy|exec ...; got {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
