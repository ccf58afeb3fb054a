"""Snapshot files on disk: syrupy amber files beside the spec, ``__snapshots__/<spec>.ambr``.

Every change is a read-modify-write under an exclusive lock on the ``__snapshots__``
folder, written to a temporary file in the same folder and renamed over the old one.
So an interrupted write leaves the previous file intact, and two processes updating
the same spec (xdist workers, two CI jobs) never lose each other's entries.
Syrupy supplies the file format; its session is not told about these snapshots (see
:mod:`interp_assert.drift.snapshot` for why).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syrupy.data import Snapshot, SnapshotCollection
from syrupy.exceptions import SnapshotDoesNotExist, TaintedSnapshotError
from syrupy.extensions.amber import AmberSnapshotExtension
from syrupy.extensions.amber.serializer import AmberDataSerializer, MalformedAmberFile, MissingVersionError
from syrupy.location import PyTestLocation

from interp_assert.errors import SnapshotFileError


@dataclass(frozen=True)
class _SpecNode:
    """What syrupy reads from a test item, for one spec expectation."""

    path: Path
    name: str
    nodeid: str


@dataclass(frozen=True)
class SpecLocation(PyTestLocation):
    """A syrupy test location for a spec expectation (spec file + expectation name)."""

    def __post_init__(self) -> None:
        node = self.item
        object.__setattr__(self, "filepath", str(Path(node.path).absolute()))
        object.__setattr__(self, "modulename", Path(node.path).stem)
        object.__setattr__(self, "methodname", node.name)
        object.__setattr__(self, "nodename", node.name)
        object.__setattr__(self, "testname", node.name)


def location(spec_path: str | Path, name: str) -> SpecLocation:
    node = _SpecNode(Path(spec_path), name, f"{Path(spec_path).name}::{name}")
    return SpecLocation(node)  # type: ignore[arg-type]


API_SNAPSHOTS = "__interp_snapshots__"  # beside a Python test module: a folder syrupy never sweeps


def snapshot_file(spec_path: str | Path) -> Path:
    """A spec's ``__snapshots__/<stem>.ambr``; for a Python test module (the ``interp`` fixture's
    ``expect("snapshot", ...)``), ``__interp_snapshots__/<module>.ambr`` beside it, since syrupy
    treats every file in a test module's ``__snapshots__`` as its own and deletes what it did not write."""
    path = Path(spec_path)
    if path.suffix == ".py":
        return path.absolute().parent / API_SNAPSHOTS / f"{path.stem}.ambr"
    return Path(AmberSnapshotExtension.get_location(test_location=location(spec_path, "_"), index=0))


def sharing_problem(spec_path: str | Path) -> str | None:
    """Why ``spec_path`` cannot have snapshots of its own: another spec file beside it (``tiny.yml``
    beside ``tiny.yaml``) maps to the same ``__snapshots__/<stem>.ambr``, where each would record,
    and delete as stale, the other's entries."""
    path = Path(spec_path)
    others = [
        other.name for suffix in (".yaml", ".yml") if (other := path.with_suffix(suffix)) != path and other.is_file()
    ]
    if not others:
        return None
    return (
        f"{path.name} and {', '.join(others)} would share one snapshot file, "
        f"{describe(snapshot_file(path))}, and overwrite each other's snapshots; rename one of them"
    )


def read_text(spec_path: str | Path, name: str) -> str | None:
    """The stored text of snapshot ``name``, or ``None`` when there is none."""
    extension = AmberSnapshotExtension()
    try:
        if Path(spec_path).suffix == ".py":
            return _read_api_snapshot(snapshot_file(spec_path), name)
        text = extension.read_snapshot(test_location=location(spec_path, name), index=0, session_id=uuid.uuid4().hex)
    except SnapshotDoesNotExist:
        return None
    except (TaintedSnapshotError, MalformedAmberFile, MissingVersionError, OSError, UnicodeDecodeError) as exc:
        problem = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        if isinstance(exc, TaintedSnapshotError | MissingVersionError):
            problem = "the file has no current syrupy amber version header; re-record it with --snapshot-update"
        raise SnapshotFileError(f"{snapshot_file(spec_path)}: cannot read snapshot {name!r}: {problem}") from None
    return str(text)


def _read_api_snapshot(target: Path, name: str) -> str | None:
    if not target.exists():
        return None
    collection = AmberDataSerializer.read_file(str(target))
    if collection.tainted:
        raise TaintedSnapshotError(None)
    snapshot = collection.get(name)
    return None if snapshot is None else str(snapshot.data)


def stored_names(spec_path: str | Path) -> set[str]:
    target = snapshot_file(spec_path)
    if not target.exists():
        return set()
    try:
        return {snapshot.name for snapshot in AmberDataSerializer.read_file(str(target))}
    except (OSError, UnicodeDecodeError, MalformedAmberFile) as exc:
        raise SnapshotFileError(f"{target}: cannot read snapshot file: {exc}") from None


def write(spec_path: str | Path, name: str, text: str) -> Path:
    """Store ``text`` as snapshot ``name`` (adding or replacing it), keeping the file's other entries."""

    def change(collection: SnapshotCollection) -> None:
        collection.add(Snapshot(name=name, data=text))

    return _rewrite(snapshot_file(spec_path), change)


def delete(spec_path: str | Path, names: set[str]) -> Path:
    """Remove snapshots ``names``; the file goes when nothing is left in it."""

    def change(collection: SnapshotCollection) -> None:
        for name in names:
            collection.remove(name)

    return _rewrite(snapshot_file(spec_path), change)


def _rewrite(target: Path, change: Callable[[SnapshotCollection], None]) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(target.parent):
            exists = target.exists()
            collection = AmberDataSerializer.read_file(str(target)) if exists else SnapshotCollection(str(target))
            change(collection)
            if not collection.has_snapshots:
                target.unlink(missing_ok=True)
                return target
            _atomic_amber_write(collection, target)
    except OSError as exc:
        raise SnapshotFileError(_write_problem(target, exc)) from None
    return target


def _atomic_amber_write(collection: SnapshotCollection, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        staged = SnapshotCollection(location=temporary)
        for snapshot in collection:
            staged.add(snapshot)
        AmberDataSerializer.write_file(staged, merge=False, file_lock=False)
        if target.exists():
            os.chmod(temporary, target.stat().st_mode & 0o777)
        else:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder itself, so no lock file is left behind."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _write_problem(target: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"; make {target.parent} writable, or run without --snapshot-update"
    elif exc.errno == errno.ENOSPC:
        hint = "; free some disk space"
    return f"{target}: cannot write snapshot file: {reason}{hint} (the previous file, if any, is unchanged)"


def describe(value: Any) -> str:
    """Paths as shown to the user: relative to the working directory when below it."""
    relative = os.path.relpath(value)
    return str(value) if relative.startswith("..") else relative
