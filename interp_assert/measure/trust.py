"""Trusting what lies on disk: folders only this user can write, and files only this user signed.

Used for everything interp_assert would otherwise take from a cache without question: the
native kernel's shared library (loading it runs its code) and converted models (measuring a
planted one would pass a spec on the wrong model).

- :func:`require_private_folder`: the folder (created 0700 if missing) and every folder above it
  are owned by this user or root and writable by no one else (a sticky, world-writable folder
  such as ``/tmp`` is allowed above it, as OpenSSH allows it for its keys).
- :func:`user_key` / :func:`sign` / :func:`signed_by`: an HMAC-SHA256 of a file under a random key
  kept outside every cache (``$XDG_CONFIG_HOME/interp_assert/signing.key``, 0600). A cache
  restored by CI or copied from elsewhere carries files but not the key, so its signatures do
  not match and nothing in it is used.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from interp_assert.errors import InterpAssertError

KEY_BYTES = 32


class UnsafePathError(InterpAssertError):
    """A folder or file that interp_assert would load from could be written by someone else."""


def require_private_folder(folder: Path, what: str) -> Path:
    """Create ``folder`` (0700) if missing and check it is safe to load from; raise
    :class:`UnsafePathError` naming the first folder that another user could write."""
    folder = Path(os.path.abspath(folder))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid is None:  # no POSIX ownership (Windows): nothing to check
        return folder
    for current in (folder, *folder.parents):
        info = current.lstat()
        if stat.S_ISLNK(info.st_mode):
            info = current.stat()
        own = info.st_uid in (uid, 0)
        others_write = bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        sticky = bool(info.st_mode & stat.S_ISVTX)
        if current == folder and (info.st_uid != uid or others_write):
            raise UnsafePathError(
                f"{what} {current} is {_describe(info, uid)}: another user could put files there; "
                f"use a folder only you can write (chmod go-w {current}, or set INTERP_ASSERT_CACHE)"
            )
        if current != folder and (not own or (others_write and not sticky)):
            raise UnsafePathError(
                f"{what} {folder} lies under {current}, which is {_describe(info, uid)}: another user could "
                f"replace what is below it; use a folder only you can write (set INTERP_ASSERT_CACHE)"
            )
    return folder


def _describe(info: os.stat_result, uid: int) -> str:
    owner = "owned by you" if info.st_uid == uid else f"owned by user {info.st_uid}"
    return f"{owner} with mode {stat.filemode(info.st_mode)}"


def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME")
    return (Path(config) if config else Path.home() / ".config") / "interp_assert" / "signing.key"


def user_key() -> bytes:
    """This user's signing key, made on first use (0600, in a private folder)."""
    path = key_path()
    require_private_folder(path.parent, "the signing key's folder")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_mode & 0o077 or (hasattr(os, "geteuid") and info.st_uid != os.geteuid()):
        raise UnsafePathError(f"the signing key {path} must be a file of yours with mode 0600 (chmod 600 {path})")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise UnsafePathError(f"the signing key {path} is damaged ({len(key)} bytes); delete it and run again")
    return key


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mac(key: bytes, path: Path) -> str:
    return hmac.new(key, f"{path.name}\n{file_digest(path)}".encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, path: Path, signature: Path) -> None:
    """Write ``path``'s signature to ``signature`` (atomically)."""
    scratch = signature.with_name(signature.name + f".{os.getpid()}.tmp")
    scratch.write_text(_mac(key, path))
    os.replace(scratch, signature)


def signed_by(key: bytes, path: Path, signature: Path) -> bool:
    """Whether ``signature`` holds this key's signature of ``path`` as it is now."""
    try:
        stored = signature.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(stored, _mac(key, path))
