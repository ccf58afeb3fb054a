"""Atomic writes: a file is written beside its target and renamed over it, so an interrupted
write (killed, disk full) leaves the previous file whole, and a reader never sees half a file."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; renamed over ``path`` when the
    block ends without an error, removed otherwise. Readable by others (mkstemp makes it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_problem(path: Path) -> str | None:
    """Why ``path`` could not be written by :func:`replacing`, found before any long work: a file on
    the way to it, a folder in its place, a folder or file that refuses writes (permissions, an
    immutable file). ``None`` when it can be written. Nothing is left behind."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor}, on the way to {path}, is a file, not a folder"
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".probe", dir=ancestor)
        os.close(handle)
        os.unlink(probe)
        if path.exists():  # replacing it needs it writable too: an immutable file refuses the rename
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = path if exc.errno in (errno.EPERM, errno.EACCES) and path.exists() else ancestor
        return f"{where} cannot be written ({reason})"
    return None
