"""The converted-GGUF cache: a ``.gguf`` file dequantised once into safetensors, never swapped.

An entry is named by the source file's content hash (sha256, computed once per file version in a
process) and holds a record of what it was made from and the sha256 of every file written. On each
use, the record must match the source's hash and the files' hashes; an entry that does not (planted,
edited, half-written by an older version) is set aside and rebuilt, and the run says so. The cache folder
itself must be writable by this user alone: a folder another user owns or could write (group- or
world-writable, or under a parent they could rename it in) is refused, since anything found there
would be measured under the alias's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from interp_assert.errors import ModelLoadError
from interp_assert.private_files import file_sha256, make_private, others_could_write

RECORD = "interp_assert_source.json"
FORMAT = 1  # of the record; a new format makes new entry names, so old entries are never read


def entry_problem(entry: Path, source_sha256: str) -> str | None:
    """Why a cache entry is not what this source converts to, or ``None``."""
    me = os.geteuid()
    try:
        record = json.loads((entry / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return f"it has no readable {RECORD}"
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return f"its {RECORD} is not a format-{FORMAT} record"
    if record.get("source_sha256") != source_sha256:
        return "it was made from another file (its recorded source hash differs)"
    files = record.get("files")
    if not isinstance(files, dict):
        return f"its {RECORD} lists no files"
    found = {path.name: path for path in entry.iterdir() if path.name != RECORD}
    if set(found) != set(files):
        return f"it holds {sorted(set(found) ^ set(files))} unlike its record"
    for name, path in sorted(found.items()):
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != me or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{name} is not a plain file only you can write"
        if file_sha256(path) != files[name]:
            return f"{name} changed since it was written"
    return None


def cached_conversion(gguf: Path, root: Path, version: str, convert: Callable[[Path], None]) -> tuple[Path, str | None]:
    """The cache entry for ``gguf`` under ``root``: checked and returned, or built by ``convert(folder)``;
    with a note to say when an entry was found wrong and rebuilt.

    ``version`` names what the conversion depends on besides the file (the transformers version)."""
    cache = root / "gguf"
    try:
        make_private(cache)
    except OSError as exc:
        raise ModelLoadError(f"converted-model cache {cache} cannot be created: {exc.strerror or exc}") from None
    problem = others_could_write(cache, root)
    if problem:
        raise ModelLoadError(
            f"converted-model cache {cache} is refused: {problem}, so a model found there could have been "
            "swapped; make it yours alone (chmod go-w), or point INTERP_ASSERT_CACHE at a folder only you can write"
        )
    source_sha256 = file_sha256(gguf)
    tag = hashlib.sha256(f"{version}|{FORMAT}".encode()).hexdigest()[:8]
    entry = cache / f"{gguf.stem}-{source_sha256[:16]}-{tag}"
    rebuilt = None
    if entry.is_symlink() or entry.exists():
        problem = entry_problem(entry, source_sha256) if entry.is_dir() and not entry.is_symlink() else "not a folder"
        if problem is None:
            return entry, None
        rebuilt = f"converted-model cache entry {entry} is rebuilt: {problem}"
        _set_aside(entry, cache)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    try:
        convert(staging)
        files = {path.name: file_sha256(path) for path in sorted(staging.iterdir())}
        record = {"format": FORMAT, "source": str(gguf.resolve()), "source_sha256": source_sha256, "files": files}
        (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        staging.rename(entry)  # atomic: a concurrent worker either wins or finds it done
    except OSError:
        if entry_problem(entry, source_sha256) is not None:
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry, rebuilt


def _set_aside(entry: Path, cache: Path) -> None:
    """Move a rejected entry out of the way (then remove it), so a rebuild can take its name."""
    aside = Path(tempfile.mkdtemp(prefix=".rejected-", dir=cache))
    os.replace(entry, aside / "entry")
    shutil.rmtree(aside, ignore_errors=True)
