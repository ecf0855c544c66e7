"""Where a command writes: an output is never an input, and ``--force`` removes only what leancnn wrote there.

The rule (docs/training.md, "Runs, resume and reuse"), for every command that writes:

* **An output is never an input.** ``-o`` may not be one of the command's inputs (run directory, data folder,
  checkpoint, config file), lie inside one or hold one; paths are compared after ``~``, ``..`` and symbolic
  links are resolved. :func:`check_output` refuses it in one line that names the flag, the input and the
  relation (``is``, ``is inside``, ``contains``). The exceptions are explicit (``own``): a run continued in its
  own directory (``train --resume RUN/last.pt -o RUN``, ``latency run --resume -o RUN``) and a latency report
  written into its own run (``latency report RUN``).
* **``--force`` removes only what leancnn wrote, and only after every check.** A run directory's files are
  known by name (``tasks.runs.RUN_FILES``, ``tasks.latency.RUN_FILES``); a folder written as a whole
  (:func:`staged_dir`: ``prune``, ``register predict`` / ``evaluate``) lists its files in a manifest
  (:data:`MANIFEST`). Only those are deleted, once the config, the data and the model have been checked; any
  other file stays where it is (same-named files are replaced: that is what ``--force`` asks), and a folder is
  never removed whole.
* **Staging.** :func:`staged_dir` writes into a new temporary sibling with a unique name
  (``.<name>.<random>.partial``, made by ``tempfile.mkdtemp``), so no folder of the user's is ever taken for
  leftovers; on success the files move into ``-o``, on failure or interrupt the temporary folder is removed.
* **Existing files.** A command that writes one file (an ONNX export, a figure) replaces an existing file only
  with ``--force`` (:func:`check_output_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .errors import LeancnnError
from .io import _umask, check_writable_file

MANIFEST = ".leancnn-outputs.json"  # the files a staged folder received, relative to it (one JSON list)

Inputs = Mapping[str, "str | os.PathLike | None"] | Iterable[tuple[str, "str | os.PathLike | None"]]


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def relation(out: str | os.PathLike, other: str | os.PathLike) -> str | None:
    """How ``out`` stands to ``other`` once both are resolved: ``"is"``, ``"is inside"``, ``"contains"`` or None."""
    o, i = _resolved(out), _resolved(other)
    if o == i:
        return "is"
    if i in o.parents:
        return "is inside"
    if o in i.parents:
        return "contains"
    return None


def check_output(out: str | os.PathLike, inputs: Inputs, what: str = "-o",
                 own: str | os.PathLike | None = None) -> Path:
    """Refuse ``out`` when it is, lies inside or contains one of ``inputs`` (``{description: path}`` or
    ``(description, path)`` pairs; None paths are skipped), in one line naming ``what``, the input and the
    relation. ``own``: a directory ``out`` may be (a run continued in its own directory); when it is, the inputs
    inside it are that run's own files and are not counted. Returns ``Path(out)``."""
    if not str(out).strip():
        raise LeancnnError(f"{what}: the path is empty")
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    mine = own is not None and relation(out, own) == "is"
    hits = []
    for desc, path in items:
        if path is None or not str(path).strip():
            continue
        if mine and relation(path, own) in ("is", "is inside"):
            continue
        rel = relation(out, path)
        if rel is not None:
            hits.append((_ORDER.index(rel), rel, desc, path))
    if hits:
        _, rel, desc, path = min(hits, key=lambda h: h[0])  # the closest relation: "is" before "is inside"
        raise LeancnnError(f"{what} '{out}' {rel} the {desc} '{path}'; an output may not be, lie inside or hold "
                           f"an input of the command: choose another {what}")
    return Path(out)


_ORDER = ("is", "is inside", "contains")


def check_output_dir(out: str | os.PathLike, what: str = "-o") -> Path:
    """An output folder may be new or an existing folder, not an existing file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LeancnnError(f"{what} '{out}' exists and is not a directory; give a folder")
    return out


def check_output_file(out: str | os.PathLike, force: bool = False, what: str = "-o") -> Path:
    """An output file: not a folder; an existing file only with ``force``; writable (checked, nothing left)."""
    out = Path(out)
    if out.is_dir():
        raise LeancnnError(f"{what} '{out}' is a directory; give a file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise LeancnnError(f"{what} '{out}' already exists; add --force to replace it, or choose another {what}")
    return check_writable_file(out, what)


# ------------------------------------------------------------------------------------------------ the manifest


def read_manifest(folder: str | os.PathLike) -> list[str]:
    """The files (relative paths) leancnn recorded writing into ``folder``; [] without a readable manifest."""
    try:
        names = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str) and _safe(n)] if isinstance(names, list) else []


def _safe(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and p.name != MANIFEST


def record_outputs(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (paths relative to ``folder``) to its manifest."""
    from .io import atomic_write_text

    folder = Path(folder)
    merged = list(dict.fromkeys([*read_manifest(folder), *(str(n) for n in names if _safe(str(n)))]))
    atomic_write_text(folder / MANIFEST, json.dumps(merged, indent=0) + "\n")


def owned_outputs(folder: str | os.PathLike, known: Iterable[str] = ()) -> list[str]:
    """The files of ``folder`` that leancnn wrote: those in its manifest and those named ``known`` (the fixed
    names a command writes, for folders written before manifests existed) that are there."""
    folder = Path(folder)
    names = dict.fromkeys([*read_manifest(folder), *(k for k in known if _safe(k))])
    return [n for n in names if (folder / n).is_file() or (folder / n).is_symlink()]


def remove_outputs(folder: str | os.PathLike, known: Iterable[str] = ()) -> list[str]:
    """Delete the files :func:`owned_outputs` names (and the manifest), then the sub-folders they leave empty;
    every other file, and ``folder`` itself, stays. Returns the deleted files."""
    folder = Path(folder)
    removed = owned_outputs(folder, known)
    for name in removed:
        (folder / name).unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
    parents = sorted({p for n in removed for p in Path(n).parents if p != Path(".")}, key=lambda p: -len(p.parts))
    for p in parents:
        with contextlib.suppress(OSError):  # not empty (a file leancnn did not write): kept
            (folder / p).rmdir()
    return removed


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _publish(tmp: Path, out: Path, known: Iterable[str]) -> None:
    """Move the staged files of ``tmp`` into ``out``: renamed whole when ``out`` is new; otherwise, after checking
    that every new file can take its place, leancnn's earlier files are deleted and the new ones moved in."""
    new = _files(tmp)
    record_outputs(tmp, new)
    if not out.exists():
        tmp.rename(out)
        return
    conflicts = []
    for rel in new:
        target = out / rel
        if target.is_dir() and not target.is_symlink():
            conflicts.append(rel)
        conflicts += [str(p) for p in Path(rel).parents if p != Path(".") and (out / p).exists()
                      and not (out / p).is_dir()]
    if conflicts:
        raise LeancnnError(f"-o '{out}' holds {', '.join(sorted(set(conflicts))[:3])} where a new file must go "
                           "(a folder in place of a file or a file in place of a folder); nothing was changed: "
                           "move it or choose another -o")
    remove_outputs(out, known)
    for rel in [*new, MANIFEST]:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, target)
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool = False, known: Iterable[str] = ()) -> Iterator[Path]:
    """Write a folder's files into a new temporary sibling (unique name) and move them into ``out`` only when the
    block succeeds: on any failure or interrupt nothing is left. A non-empty ``out`` is refused unless ``force``;
    then only the files leancnn wrote there (its manifest, or the names ``known``) are replaced, every other file
    stays. The moved files are listed in ``out``'s manifest."""
    out = check_output_dir(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LeancnnError(f"-o '{out}' is not empty; choose another folder, or add --force to replace the files "
                           "leancnn wrote there (other files are kept)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the folder gets the usual permissions
    try:
        yield tmp
        _publish(tmp, out, list(known))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["MANIFEST", "check_output", "check_output_dir", "check_output_file", "owned_outputs", "read_manifest",
           "record_outputs", "relation", "remove_outputs", "staged_dir"]
