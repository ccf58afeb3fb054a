"""``--interp-cache``: an expectation's outcome, reused when nothing that could change it changed.

The key is a sha256 over everything a number depends on (:func:`outcome_key`):

- the model: its weights' hash, the hash of its small files (config, tokenizer), the adapter's
  base, the hub revision and the commit it resolved to;
- the expectation (every key of it, its name included) and the whole spec header, prompt sets
  included, after ``--interp-limit``; the spec's path and its snapshot file's content;
- the code: interp_assert's version and a hash of its own source files, torch's and
  transformers' versions;
- where and how it ran: device, dtype, device map, the attention implementation and whether the
  native kernel is used, and the ``INTERP_ASSERT_*`` settings in the environment.

A model whose weights cannot be hashed (a hub id not on disk) is never cached, nor is an outcome
that wrote a snapshot. Entries are JSON (never pickles), written atomically; an entry that is
missing, cut short, of another version or of another key is a miss. The folder must belong to
the user running and be writable by no one else: a cache another user can plant entries in could
make a run pass on numbers it never measured, so such a folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from interp_assert import private_files
from interp_assert.errors import UnsafePathError, UsageError
from interp_assert.outcome import Outcome

ENTRY_VERSION = 1
PACKAGE = Path(__file__).resolve().parent
SMALL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.py")


@cache
def code_digest() -> str:
    """sha256 of the package's own Python files: an edited checkout never reuses old numbers."""
    digest = hashlib.sha256()
    for file in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(file.relative_to(PACKAGE)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def folder_digest(folder: str | None) -> str | None:
    """The small files beside the weights (config, tokenizer, generation settings)."""
    if folder is None or not Path(folder).is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted({f for pattern in SMALL_FILES for f in Path(folder).glob(pattern) if f.is_file()}):
        if file.stat().st_size <= 64 << 20:
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def native_kernel_setting() -> dict[str, object]:
    """What decides whether the native attention kernel is used (its source is in :func:`code_digest`),
    read without importing torch: the switch and the compiler it would be built with."""
    import shutil

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    return {"INTERP_ASSERT_NATIVE": os.environ.get("INTERP_ASSERT_NATIVE", "1"), "compiler": compiler}


def library_versions() -> dict[str, str]:
    """torch's and transformers' versions from their metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "gguf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def model_identity(reference: str, load: Any, base_dir: Path | None, hashes: Path) -> dict[str, object] | None:
    """What identifies the numbers a model gives, found without loading it: its weights' hash and
    the hash of its small files. ``None`` (never cached) for a hub id, an adapter (its base is found
    at load time), and a model placed on an accelerator or spread by a device map."""
    from interp_assert.measure.loading.models import resolve

    if load.device != "cpu" or load.device_map is not None or load.revision is not None:
        return None
    source = resolve(reference, base_dir)
    if not isinstance(source, Path):
        return None
    if source.is_file() and source.suffix == ".gguf":
        weights = [source]
    elif source.is_dir() and not (source / "adapter_config.json").exists():
        weights = sorted(f for pattern in ("*.safetensors", "*.bin", "*.pt") for f in source.glob(pattern))
    else:
        return None
    if not weights:
        return None
    return {
        "source": str(source),
        "weights": [_file_hash(file, hashes) for file in weights],
        "files": folder_digest(str(source)) if source.is_dir() else None,
        "load": repr(load),
        "libraries": library_versions(),
        "native_kernel": native_kernel_setting(),
        "settings": sorted(
            (k, v) for k, v in os.environ.items() if k.startswith("INTERP_ASSERT_") and k != "INTERP_ASSERT_CACHE"
        ),
    }


def _file_hash(file: Path, hashes: Path) -> str:
    """sha256 of a file, remembered across runs under its path, size, mtime, ctime and inode (any write
    changes the ctime, which no tool can set back), so an unchanged 500 MB file is not read again."""
    info = file.stat()
    stamp = f"{file.resolve()}|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}|{info.st_ino}|{info.st_dev}"
    memo = hashes / f"{hashlib.sha256(stamp.encode()).hexdigest()}.txt"
    remembered = (private_files.read_signed_text(memo) or "").strip()  # a planted memo is not believed
    if len(remembered) == 64 and all(c in "0123456789abcdef" for c in remembered):
        return remembered
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    hashes.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_files.write_signed_text(memo, digest.hexdigest())
    return digest.hexdigest()


def outcome_key(identity: dict[str, object], spec: Any, entry: Any, prompt_set_json: str) -> str:
    """The cache key of ``entry`` of ``spec`` measured on the model ``identity`` describes."""
    from interp_assert.drift.snapshot_store import snapshot_file
    from interp_assert.version import package_version

    parts = {
        "entry_version": ENTRY_VERSION,
        "model": identity,
        "expectation": entry.expectation.model_dump(mode="json"),
        "name": entry.name,
        "prompts": prompt_set_json,
        "header": {k: v for k, v in spec.header.model_dump(mode="json").items() if k != "expectations"},
        "spec_path": str(Path(spec.path).resolve()),
        "snapshots": file_digest(snapshot_file(spec.path)),
        "versions": {"interp_assert": package_version(), "code": code_digest()},
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_folder(folder: Path) -> None:
    """Refuse a cache folder that another user could write (:mod:`interp_assert.private_files`)."""
    try:
        private_files.require_private_folder(folder, "the result cache")
    except UnsafePathError as exc:
        raise UsageError(f"--interp-cache: {exc}; results planted there could be reported as measured") from None


class ResultCache:
    def __init__(self, folder: Path) -> None:
        check_folder(folder)
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    @property
    def hashes(self) -> Path:
        return self.folder / "hashes"

    def get(self, key: str) -> tuple[Outcome, dict[str, str]] | None:
        """The outcome stored under ``key`` and the record of the model it was measured on, or ``None``."""
        try:
            text = private_files.read_signed_text(self._path(key))  # unsigned (planted, restored): a miss
            if text is None:
                return None
            data = json.loads(text)
            if data.get("version") != ENTRY_VERSION or data.get("key") != key:
                return None
            fields = data["outcome"]
            model = {str(k): str(v) for k, v in dict(data["model"]).items()}
            return Outcome(
                passed=bool(fields["passed"]),
                headline=str(fields["headline"]),
                details=tuple(fields["details"]),
                measured=dict(fields["measured"]),
                heads=tuple(fields["heads"]),
                notes=tuple(fields["notes"]),
                value=_value(fields["value"]),
                shown=str(fields["shown"]),
                bound_low=fields["bound_low"],
                bound_high=fields["bound_high"],
                series=tuple(float("nan") if x is None else float(x) for x in fields.get("series") or ()),
            ), model
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing, cut short, hand-edited: measured again

    def put(self, key: str, outcome: Outcome, model: dict[str, str]) -> None:
        if outcome.written is not None:
            return
        document = {"version": ENTRY_VERSION, "key": key, "outcome": _plain(asdict(outcome)), "model": model}
        path = self._path(key)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        private_files.write_signed_text(path, json.dumps(document))


def _value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers, tuples to lists (JSON keeps NaN as ``NaN``, which Python reads back)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value
