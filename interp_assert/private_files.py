"""Files and folders interp_assert can trust: only this user can write them, and only this user signed them.

Used for everything that would otherwise be taken from a cache without question: the native
kernel's shared library (loading it runs its code), converted models (measuring a planted one
would pass a spec on the wrong model) and cached results.

- :func:`others_could_write` / :func:`require_private_folder`: a folder, and every folder up to a
  root, owned by this user and writable by no one else; above the root, each parent owned by this
  user or root and writable by others only with the sticky bit (as ``/tmp`` is), so nobody can
  rename the folder away.
- :func:`file_sha256`: a file's content hash, computed once per version of the file in a process.
- :func:`user_key` / :func:`sign` / :func:`signed_by`: an HMAC-SHA256 of a file under a random key
  kept outside every cache (``$XDG_CONFIG_HOME/interp_assert/signing.key``, 0600). A cache
  restored by CI or copied from elsewhere carries files but not the key, so its signatures do
  not match and nothing in it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from interp_assert.errors import UnsafePathError

_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), hashed once per version of the file in this process (path, inode,
    size, mtime and ctime, which no one can set back after a write)."""
    info = path.stat()
    key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def others_could_write(folder: Path, root: Path | None) -> str | None:
    """Why another user could change what ``folder`` holds, or ``None``.

    ``folder`` and every folder up to ``root`` must be owned by this user and not group- or
    world-writable; above ``root`` (from ``folder`` itself when ``root`` is ``None``), each folder
    must be owned by this user or root, and writable by others only with the sticky bit (as
    ``/tmp`` is), so nobody can rename the cache away."""
    me = os.geteuid()
    try:
        real = folder.resolve(strict=True)
        top = root.resolve(strict=True) if root is not None else None
    except OSError as exc:
        return f"cannot be checked ({exc.strerror or exc})"
    chain = [real, *real.parents]
    inside = [] if top is None else chain[: chain.index(top) + 1] if top in chain else [real]
    for path in chain:
        info = path.stat()
        writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if path in inside:
            if info.st_uid != me:
                return f"{path} belongs to user id {info.st_uid}, not to you (user id {me})"
            if writable_by_others:
                return f"{path} is writable by other users (mode {stat.filemode(info.st_mode)})"
        elif info.st_uid not in (me, 0) or (writable_by_others and not info.st_mode & stat.S_ISVTX):
            return f"{path}, above it, can be changed by another user (owner id {info.st_uid}, mode " + (
                f"{stat.filemode(info.st_mode)})"
            )
    return None


KEY_BYTES = 32


def make_private(folder: Path) -> None:
    """Create ``folder`` and each missing parent with mode 0700 (``os.makedirs`` gives only the last
    one its mode; the others follow the umask, group-writable under a umask of 002)."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process: checked as any other
            path.mkdir(mode=0o700)


def require_private_folder(folder: Path, what: str) -> Path:
    """Create ``folder`` (0700) if missing and check that only this user can change what it holds
    (:func:`others_could_write`, up to the folder itself); :class:`UnsafePathError` says why not.
    Nothing is created under a folder another user could change."""
    folder = Path(os.path.abspath(folder))
    if hasattr(os, "geteuid"):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        problem = others_could_write(existing, None) if existing != folder else None
        if problem is None:
            make_private(folder)
            problem = others_could_write(folder, folder)
        if problem:
            raise UnsafePathError(
                f"{what} {folder} is not private: {problem}; use a folder only you can write "
                f"(chmod go-w, or set INTERP_ASSERT_CACHE)"
            )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME")
    return (Path(config) if config else Path.home() / ".config") / "interp_assert" / "signing.key"


def user_key() -> bytes:
    """This user's signing key: from ``INTERP_ASSERT_SIGNING_KEY`` when set (a CI secret, so that
    caches restored between trusted jobs stay usable while a fork's job cannot sign), else the key
    file, made on first use (0600, in a private folder)."""
    secret = os.environ.get("INTERP_ASSERT_SIGNING_KEY")
    if secret:
        return hashlib.sha256(b"interp_assert signing key\n" + secret.encode()).digest()
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


def _mac(key: bytes, path: Path) -> str:
    return hmac.new(key, f"{path.name}\n{file_sha256(path)}".encode(), hashlib.sha256).hexdigest()


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


def write_signed_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (atomically) and sign it beside it (``<name>.sig``)."""
    from interp_assert import atomic

    atomic.write_text(path, text)
    sign(user_key(), path, path.with_name(path.name + ".sig"))


def read_signed_text(path: Path) -> str | None:
    """``path``'s text if this user signed it as it is now, else ``None`` (missing, edited, planted)."""
    try:
        if not signed_by(user_key(), path, path.with_name(path.name + ".sig")):
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, UnsafePathError):
        return None
