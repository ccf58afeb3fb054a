"""The converted-GGUF cache, on real tiny .gguf files and a temporary cache folder (never the
user's): an entry is named by its source's content, checked against its record on every use, and
rebuilt when it is not what it claims; a folder another user could write is refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from interp_assert.errors import ModelLoadError
from interp_assert.measure.loading.gguf_cache import RECORD
from interp_assert.measure.loading.models import LoadOptions, gguf_as_safetensors, gguf_conversion
from tests.builders import tiny_gguf


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_entry_records_its_source_and_is_reused(tmp_path: Path, cache: Path, capfd: pytest.CaptureFixture[str]) -> None:
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    entry = gguf_as_safetensors(gguf, LoadOptions(cache_dir=cache))
    assert "Converting and de-quantizing" not in capfd.readouterr().err  # no progress bar off a terminal
    record = json.loads((entry / RECORD).read_text())
    assert record["source_sha256"] == sha256(gguf)
    assert record["files"]["model.safetensors"] == sha256(entry / "model.safetensors")
    written = (entry / "model.safetensors").stat().st_mtime_ns
    assert gguf_as_safetensors(gguf, LoadOptions(cache_dir=cache)) == entry
    assert (entry / "model.safetensors").stat().st_mtime_ns == written  # not converted again


def test_planted_entry_is_rebuilt_not_used(tmp_path: Path, cache: Path) -> None:
    """Another model's weights put in the entry's place (with or without a matching record) are
    never loaded: the entry is rebuilt from the source, with a warning."""
    mine = tiny_gguf(tmp_path / "tiny.gguf", seed=0)
    (tmp_path / "other").mkdir()
    other = tiny_gguf(tmp_path / "other" / "tiny.gguf", seed=1)
    entry = gguf_as_safetensors(mine, LoadOptions(cache_dir=cache))
    good = sha256(entry / "model.safetensors")
    planted = gguf_as_safetensors(other, LoadOptions(cache_dir=tmp_path / "elsewhere"))
    assert sha256(planted / "model.safetensors") != good
    # the planted weights alone, then with their own record (made from another source)
    for files in (["model.safetensors"], ["model.safetensors", RECORD]):
        for name in files:
            shutil.copyfile(planted / name, entry / name)
        again, note = gguf_conversion(mine, LoadOptions(cache_dir=cache))
        assert note is not None and re.match(r"converted-model cache entry .* is rebuilt: ", note)
        assert again == entry and sha256(entry / "model.safetensors") == good


def test_source_changed_in_place_gets_its_own_entry(tmp_path: Path, cache: Path) -> None:
    """Same path, size and mtime, other content: the old conversion is not served for it."""
    gguf = tiny_gguf(tmp_path / "tiny.gguf", seed=0)
    first = gguf_as_safetensors(gguf, LoadOptions(cache_dir=cache))
    stamp = gguf.stat()
    tiny_gguf(gguf, seed=2)
    os.utime(gguf, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert gguf.stat().st_size == stamp.st_size
    second = gguf_as_safetensors(gguf, LoadOptions(cache_dir=cache))
    assert second != first
    assert sha256(second / "model.safetensors") != sha256(first / "model.safetensors")


def test_cache_others_could_write_is_refused(tmp_path: Path, cache: Path) -> None:
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    (cache / "gguf").mkdir(mode=0o700)
    (cache / "gguf").chmod(0o770)
    with pytest.raises(ModelLoadError, match=r"cache .*gguf is refused: .*gguf is writable by other users"):
        gguf_as_safetensors(gguf, LoadOptions(cache_dir=cache))
    (cache / "gguf").chmod(0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a world-writable parent without the sticky bit: the cache can be renamed away
    (shared / "cache").mkdir(mode=0o700)
    with pytest.raises(ModelLoadError, match=r"shared, above it, can be changed by another user"):
        gguf_as_safetensors(gguf, LoadOptions(cache_dir=shared / "cache"))
    assert not any((cache / "gguf").iterdir())  # nothing was converted into a refused folder


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder to another user")
def test_cache_of_another_user_is_refused(tmp_path: Path, cache: Path) -> None:
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    os.chown(cache, 65534, 65534)
    with pytest.raises(ModelLoadError, match=r"cache .* is refused: .*cache belongs to user id 65534, not to you"):
        gguf_as_safetensors(gguf, LoadOptions(cache_dir=cache))


def test_same_named_gguf_in_working_directory_is_not_read_instead(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers reads a bare ``gguf_file`` name from the working directory first."""
    decoy = tiny_gguf(tmp_path / "tiny.gguf", seed=0)
    (tmp_path / "named").mkdir()
    named = tiny_gguf(tmp_path / "named" / "tiny.gguf", seed=1)
    monkeypatch.chdir(tmp_path)
    from safetensors.torch import load_file

    measured = load_file(gguf_as_safetensors(named, LoadOptions(cache_dir=cache)) / "model.safetensors")
    other = load_file(gguf_as_safetensors(decoy, LoadOptions(cache_dir=tmp_path / "c2")) / "model.safetensors")
    assert not (measured["model.embed_tokens.weight"] == other["model.embed_tokens.weight"]).all()


def test_cache_folders_are_made_private_under_a_permissive_umask(tmp_path: Path) -> None:
    """Under a umask of 002 (the default for users on many distributions) every folder the cache
    creates is still the user's alone, so the next run does not refuse it."""
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    previous = os.umask(0o002)
    try:
        entry = gguf_as_safetensors(gguf, LoadOptions(cache_dir=tmp_path / "new" / "cache"))
    finally:
        os.umask(previous)
    for folder in (tmp_path / "new", tmp_path / "new" / "cache", entry.parent):
        assert folder.stat().st_mode & 0o077 == 0, folder
    assert gguf_as_safetensors(gguf, LoadOptions(cache_dir=tmp_path / "new" / "cache")) == entry
