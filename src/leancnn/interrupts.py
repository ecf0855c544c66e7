"""Interrupts: Ctrl-C (SIGINT) and SIGTERM end any command promptly, with one line and nothing left behind.

* The command's process turns SIGTERM into :class:`~leancnn.errors.Terminated`, a ``KeyboardInterrupt``
  (:func:`sigterm_raises`, installed by ``leancnn.cli.main``), so both signals unwind through the same cleanup:
  ``finally`` blocks, staged ``<out>.partial`` folders (:func:`leancnn.outputs.staged_dir`), load processes
  (``latency/cleanup.py`` chains its handlers to this one), worker pools. The CLI prints ``interrupted`` and exits
  with 130 (SIGINT) or 143 (SIGTERM).
* Worker processes leave the decision to their parent. Ctrl-C in a terminal reaches the whole process group;
  a ``kill`` may reach the parent only, or the group:

  - the evolutionary search's ``multiprocessing`` pool (``prune/search.py``) ignores SIGINT, dies of SIGTERM and
    of its parent's death; the parent terminates the pool on any exception;
  - DataLoader workers (:func:`loader_worker_init`) treat SIGTERM as torch treats SIGINT there: the worker loop
    ends quietly and the parent shuts the loader down (torch's own SIGTERM handler would make them die of the
    signal, which the parent reports as a failed worker with a traceback);
  - DDP workers started by ``--nproc-per-node`` (``train/distributed.py: launch``) run in sessions of their own;
    torch's elastic agent passes the signal on and kills those still running after a short timeout; a launcher
    killed outright (SIGKILL) takes them with it (:func:`die_with_launcher`: the kernel's parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

from .errors import Terminated

LAUNCHED_ENV = "LEANCNN_LAUNCHED"  # the launcher's pid, for the workers of train/distributed.py: launch


def reports_interrupt() -> bool:
    """Whether this process prints the one ``interrupted`` line: rank 0 under ``torchrun`` (every process
    otherwise), unless ``--nproc-per-node`` started it: then its launcher, which receives Ctrl-C, prints it.
    Reads the environment only (no torch)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        rank = 0
    return rank == 0 and not os.environ.get(LAUNCHED_ENV)


def die_with_launcher() -> None:
    """In a worker started by ``--nproc-per-node`` (``LEANCNN_LAUNCHED`` holds the launcher's pid): ask the
    kernel for SIGTERM when the launcher dies (``PR_SET_PDEATHSIG``; a launcher killed with SIGKILL cannot stop
    its workers itself, and they run in sessions of their own), and end at once if it is already gone."""
    launcher = os.environ.get(LAUNCHED_ENV, "")
    if not launcher.isdigit() or threading.current_thread() is not threading.main_thread():
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the elastic agent's own shutdown is all there is
    if os.getppid() != int(launcher):  # the launcher died before the request was in place
        raise Terminated()


def raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (a no-op elsewhere, and where SIGTERM
    is ignored or handled from C); the previous handler is put back on exit."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if previous is None or previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader with workers: SIGTERM ends the worker like SIGINT does (torch's
    worker loop catches ``KeyboardInterrupt`` and returns; the parent raises and shuts the loader down)."""
    signal.signal(signal.SIGTERM, raise_terminated)


__all__ = ["LAUNCHED_ENV", "Terminated", "die_with_launcher", "loader_worker_init", "raise_terminated", "reports_interrupt",
           "sigterm_raises"]
