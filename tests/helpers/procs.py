"""``/proc`` readings shared by the load and latency-run tests."""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, sid) of a pid, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    return rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3])


def default_sigint() -> None:
    """``preexec_fn`` for a child that must react to SIGINT: a shell runs background jobs with SIGINT ignored,
    and an ignored signal stays ignored across exec (so would be Python's KeyboardInterrupt in the child)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
