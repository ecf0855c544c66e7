"""Files: the cache directory and atomic writes (temp file in the same directory + ``os.replace``).

A reader never sees a half-written file: either the old content or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import LeancnnError


def cache_dir() -> Path:
    """``$LEANCNN_CACHE`` or ``~/.cache/leancnn``, created if missing."""
    path = Path(os.environ.get("LEANCNN_CACHE") or "~/.cache/leancnn").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it to disk (a killed run keeps every finished line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and check that files can be written in it; a clear error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise LeancnnError(f"output directory '{path}' is not writable ({reason})") from None
    return path


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, before long work, that a file can be written at ``path``, leaving nothing behind: missing parent
    directories are created for the probe and removed again. A clear error names ``what`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise LeancnnError(f"{what} '{path}' is a directory")
    parent, missing = path.parent, []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise LeancnnError(f"{what} '{path}' cannot be written: '{parent}' is not a directory")
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise LeancnnError(f"{what} '{path}' cannot be written ({e.strerror or type(e).__name__})") from None
    finally:
        for d in reversed(created):
            d.rmdir()
    return path
