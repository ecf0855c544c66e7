"""The registry that ends every running load and undoes every CPU quota of this process, whatever happens.

:class:`~leancnn.latency.loads.CpuLoad` and :class:`~leancnn.latency.quota.CpuQuota` register here while they are
active (:func:`register_load`, :func:`register_quota`, :func:`unregister`). While anything is registered:

* SIGINT and SIGTERM handlers are installed (main thread only). They SIGKILL every load at once, undo every quota,
  and then pass the signal on to the handler that was there before: Python's ``default_int_handler`` raises
  ``KeyboardInterrupt`` as usual (the CLI's SIGTERM handler, :mod:`leancnn.interrupts`, raises one too). When it was
  ``SIG_DFL``, the default is restored and the signal re-sent, so the process still dies of it with the usual exit
  status. The previous handlers are put back when the last load or quota stops. A signal that was ignored
  (``SIG_IGN``) stays ignored.
* :func:`stop_all` is registered with :mod:`atexit`. Forked children of this process inherit the registry but never
  act on it, because every load and quota remembers the pid that owns it (``_owner``).

A registered load offers ``stop(raise_on_leftover=...)`` and ``_kill_now()`` (SIGKILL, no waiting: safe in a signal
handler); a quota offers ``stop()``.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from typing import Any

_lock = threading.RLock()
_active_loads: list = []  # CpuLoad
_active_quotas: list = []  # CpuQuota
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


def _stop_quotas() -> None:
    """Undo every quota this process started (best effort: cleanup must not raise)."""
    for quota in list(_active_quotas):
        if quota._owner == os.getpid():
            try:
                quota.stop()
            except Exception:
                pass


def _emergency_cleanup() -> None:
    for load in list(_active_loads):
        if load._owner == os.getpid():
            load._kill_now()
    _stop_quotas()


def register_load(load) -> None:
    """Track a started :class:`~leancnn.latency.loads.CpuLoad` until :func:`unregister`."""
    _register(load, _active_loads)


def register_quota(quota) -> None:
    """Track a started :class:`~leancnn.latency.quota.CpuQuota` until :func:`unregister`."""
    _register(quota, _active_quotas)


def _register(obj, registry: list) -> None:
    global _atexit_registered
    with _lock:
        registry.append(obj)
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


def unregister(obj) -> None:
    """Forget a load or quota that has stopped; the last one out puts the signal handlers back."""
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
    _stop_quotas()


def active_loads() -> list:
    """The loads of this process that are running now."""
    return [load for load in _active_loads if load._owner == os.getpid()]
