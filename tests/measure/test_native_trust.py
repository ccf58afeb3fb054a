"""The native kernel is loaded only when this user built it: a library planted in the cache, or
restored with a cache from elsewhere, never runs; an unsafe cache folder and a failed build are
said once, and capture goes on without the kernel. Each case runs in a fresh process with a
temporary cache and key folder, never the user's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interp_assert.measure.attention import paths

REPO = Path(__file__).resolve().parents[2]
PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE* f = fopen(getenv("PLANTED_MARKER"), "w");
    if (f) { fputs("ran", f); fclose(f); }
}
int supported(long a, long b) { return 1; }
"""

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no compiler")


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    environment.pop("INTERP_ASSERT_NATIVE", None)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def library_path(env: dict[str, str]) -> Path:
    done = run_python("from interp_assert.measure.attention import native; print(native.library_path())", env)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def planted_library(tmp_path: Path, target: Path) -> None:
    source = tmp_path / "planted.c"
    source.write_text(PLANTED)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler is not None
    subprocess.run([compiler, "-x", "c", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "INTERP_ASSERT_CACHE": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PLANTED_MARKER": str(tmp_path / "marker"),
    }


CHECK = "from interp_assert.measure.attention import native; print(native.available(), native.build_error())"


def test_a_planted_library_is_not_loaded_but_rebuilt(tmp_path: Path, env: dict[str, str]) -> None:
    target = library_path(env)
    planted_library(tmp_path, target)
    done = run_python(CHECK, env)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "marker").exists(), "the planted library's code ran"
    assert done.stdout.startswith("True")  # this user's own build replaced it
    assert b"PLANTED_MARKER" not in target.read_bytes()
    assert f"{target} was not built by this user here (no valid signature): not loaded, rebuilt" in done.stderr


def test_a_restored_cache_with_its_signature_is_not_enough(tmp_path: Path, env: dict[str, str]) -> None:
    """Library and signature both come from elsewhere (another machine's key): still not loaded."""
    elsewhere = {**env, "XDG_CONFIG_HOME": str(tmp_path / "other-config")}
    target = library_path(env)
    planted_library(tmp_path, target)
    signed = run_python(
        "from pathlib import Path; from interp_assert import private_files as trust; "
        f"p = Path({str(target)!r}); trust.sign(trust.user_key(), p, p.with_name(p.name + '.sig'))",
        elsewhere,
    )
    assert signed.returncode == 0, signed.stderr
    done = run_python(CHECK, env)
    assert not (tmp_path / "marker").exists(), "the restored library's code ran"
    assert done.stdout.startswith("True")


def test_the_signed_build_is_reused(env: dict[str, str]) -> None:
    first = run_python(CHECK, env)
    target = library_path(env)
    built = target.stat().st_mtime_ns
    second = run_python(CHECK, env)
    assert first.stdout.startswith("True") and second.stdout.startswith("True")
    assert target.stat().st_mtime_ns == built


def test_a_folder_others_can_write_is_refused_once_and_capture_goes_on(tmp_path: Path, env: dict[str, str]) -> None:
    native_folder = tmp_path / "cache" / "native"
    native_folder.mkdir(parents=True)
    native_folder.chmod(0o777)
    done = run_python(CHECK, env)
    assert done.stdout.startswith("False")
    warnings = [line for line in done.stderr.splitlines() if "NativeKernelWarning" in line]
    assert len(warnings) == 1
    expected = f"{native_folder} is not private: {native_folder} is writable by other users (mode drwxrwxrwx)"
    assert expected in warnings[0]
    assert "chmod go-w" in warnings[0]


def test_a_failed_build_is_said_once(env: dict[str, str]) -> None:
    done = run_python(CHECK + "; print(native.available())", {**env, "CXX": "/bin/false"})
    assert done.stdout.splitlines()[-1] == "False"
    warnings = [line for line in done.stderr.splitlines() if "NativeKernelWarning" in line]
    assert len(warnings) == 1 and "/bin/false failed" in warnings[0]


def test_doctor_says_which_kernel_and_path_a_run_uses(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "interp_assert.commands.cli", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"cache folder: {env['INTERP_ASSERT_CACHE']}" in done.stdout
    assert "native attention kernel: built and signed by this user" in done.stdout
    assert "cpu attention path: fused" in done.stdout
    for path in paths.PATHS:  # the table capture chooses from
        assert f"  {path.name} " in done.stdout
