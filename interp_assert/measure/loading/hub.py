"""Hugging Face hub ids: revisions, the local cache, offline mode, and what a hub load resolved to.

Loading follows transformers: a hub id is downloaded when online (``HF_TOKEN`` is picked up by
``huggingface_hub`` itself and never passed through or logged here), read from the local cache
only when ``HF_HUB_OFFLINE`` is set. ``HF_HOME`` / ``HF_HUB_CACHE`` are read when a model loads,
not when a library was imported, so a run (or a test) that sets them is honoured. Nothing here
imports torch.
"""

from __future__ import annotations

import os
import re
import socket
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from interp_assert.errors import ModelLoadError

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
# A branch, tag or commit sha as the hub accepts them (``refs/pr/1`` included); never a path out of the cache.
REVISION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
VALID_REVISION = "a branch, tag or full commit sha (letters, digits, '.', '_', '-', '/'; no '..', no spaces)"


def revision_problem(revision: str) -> str | None:
    """Why ``revision`` cannot name a hub revision, or ``None``."""
    if (
        not REVISION_PATTERN.match(revision)
        or ".." in revision
        or "//" in revision
        or revision.endswith(("/", ".", ".lock"))
    ):
        return f"revision {revision!r} is not valid; give {VALID_REVISION}"
    return None


def check_revision(revision: str) -> str:
    """``revision`` unchanged, or a ``ValueError`` saying what is valid (for pydantic and argparse)."""
    problem = revision_problem(revision)
    if problem:
        raise ValueError(problem)
    return revision


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as it is now, not as it was at import."""
    return any(
        os.environ.get(name, "").strip().upper() in TRUE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def cache_dir() -> Path:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def repo_folder(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def pretrained_kwargs(revision: str | None) -> dict[str, Any]:
    """What ``from_pretrained`` needs for a hub id: where the cache is, whether to download, which revision."""
    kwargs: dict[str, Any] = {"cache_dir": str(cache_dir()), "local_files_only": offline()}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def snapshot_folder(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder ``revision`` (default ``main``) of ``repo_id`` resolves to, if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache_dir()), revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def in_cache(repo_id: str, revision: str | None = None) -> bool:
    if "/" not in repo_id or Path(repo_id).is_absolute():
        return False
    return snapshot_folder(repo_id, revision) is not None


def cached_revisions(repo_id: str) -> list[str]:
    """Branches and tags the cache knows for ``repo_id`` (its ``refs/``), then the shas of snapshots no ref names."""
    folder = repo_folder(repo_id)
    refs = folder / "refs"
    files = sorted(p for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    referenced = {p.read_text(errors="replace").strip() for p in files}
    snapshots = folder / "snapshots"
    shas = sorted(p.name for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    return [str(p.relative_to(refs)) for p in files] + [sha for sha in shas if sha not in referenced]


PROBE_SECONDS = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def unreachable() -> str | None:
    """Why the hub endpoint cannot be reached (one TCP connection, 3 s at most), or ``None``.

    A download from an unreachable hub would retry for most of a minute before failing; this
    says so at once. Behind a proxy the probe is skipped (the proxy, not us, connects)."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    return _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@cache
def _probe(endpoint: str) -> str | None:
    parsed = urlsplit(endpoint)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        return f"cannot reach {endpoint} ({type(exc).__name__}: {exc})"
    return None


def load_error(reference: str, revision: str | None, problem: str, aliases: str) -> ModelLoadError:
    """One line for a hub id that did not load: offline and not cached (how to pre-fetch it), or a
    download that failed (``problem``: the library's first line). ``aliases``: the built-in names."""
    at = f" at revision {revision!r}" if revision else ""
    fetch = f"hf download {reference}" + (f" --revision {revision}" if revision else "")
    folder = snapshot_folder(reference, revision) if "/" in reference else None
    if folder is not None:
        return ModelLoadError(
            f"model {reference!r}{at} from the Hugging Face cache ({folder}) could not be loaded: {problem}"
        )
    if offline():
        cached = cached_revisions(reference) if "/" in reference else []
        held = f"; it holds {', '.join(cached)}" if cached else ""
        return ModelLoadError(
            f"model {reference!r}{at} is not a known alias ({aliases}), not an existing path, and not in the local "
            f"Hugging Face cache ({cache_dir()}{held}); HF_HUB_OFFLINE is set, so it cannot be downloaded offline: "
            f"pre-fetch it with `{fetch}` (same HF_HOME), unset HF_HUB_OFFLINE, or map it with "
            f"--interp-model {reference}=PATH"
        )
    return ModelLoadError(
        f"model {reference!r}{at} is not a known alias ({aliases}), not an existing path, and could not be loaded "
        f"from the Hugging Face hub ({problem}); check the id and revision, set HF_TOKEN for a gated or private "
        f"model, or pre-fetch it with `{fetch}`"
    )


def resolved(reference: str, revision: str | None) -> tuple[Path | None, str | None]:
    """After a hub load: the snapshot folder it read and that folder's commit sha (``None`` if unknown)."""
    folder = snapshot_folder(reference, revision)
    if folder is None:
        return None, None
    return folder, folder.name if COMMIT_PATTERN.match(folder.name) else None
