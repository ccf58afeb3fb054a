"""Runs the hostile-input catalogue (``tests/hostile_cases.py``).

Every case must: end with its exit status, within its time; print one line matching its
``expect`` (the position or offending value, and what would be valid); print no traceback;
and change no file except its declared ``outputs``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import time
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import hypothesis  # noqa: F401  (its pytest plugin imports it in every run's summary; once here is enough)
import pytest

import interp_assert.commands.cli
import interp_assert.pytest_plugin.collect
import interp_assert.runner  # noqa: F401  (imported once here: pytester's in-process runs drop what they import)
from tests.hostile_cases import CASES, Case

# What runpytest_subprocess writes beside the case, and tools' caches under HOME (pytester's folder)
PYTESTER_OWN = ("stdout", "stderr", "runpytest-", ".cache", ".config")
FORBIDDEN = ("Traceback (most recent call last)", "INTERNALERROR", "During handling of the above exception")


def _needs(condition: str | None) -> str | None:
    """Why a case cannot mean anything on this machine, or ``None``."""
    if condition == "not-root" and os.geteuid() == 0:
        return "permissions do not stop root"
    if condition in ("no-cuda", "no-mps"):
        import torch

        if condition == "no-cuda" and torch.cuda.is_available():
            return "this machine has CUDA"
        if condition == "no-mps" and torch.backends.mps.is_available():
            return "this machine has MPS"
    return None


def _params() -> list[object]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason="lead's part (issue 12), not done yet")] if case.lead else []
        params.append(pytest.param(case, id=f"{case.category}-{case.id}", marks=marks))
    return params


def test_catalogue_covers_every_category() -> None:
    counts = Counter(case.category for case in CASES)
    assert set(counts) == {"yaml", "schema", "models", "weights", "cli", "snapshots", "filesystem", "devices"}
    assert len(CASES) >= 80
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", _params())
def test_hostile_input(case: Case, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _needs(case.needs)
    if reason:
        pytest.skip(reason)
    root = pytester.path
    for variable, value in case.env.items():
        monkeypatch.setenv(variable, value.format(root=root))
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    try:
        if case.prepare:
            prepared = pytester.runpytest(*case.prepare[1:], "-p", "no:cacheprovider")
            assert prepared.ret == 0, prepared.stdout.str()
        if case.setup is not None:
            case.setup(root)
        before = _tree(root)
        started = time.monotonic()
        code, output = _run(case, pytester)
        elapsed = time.monotonic() - started
        after = _tree(root)
    finally:
        _writable(root)

    shown = f"--- output of {' '.join(case.argv)} (exit {code}, {elapsed:.1f} s) ---\n{output}"
    assert code == case.exit, shown
    assert elapsed < case.seconds, shown
    for marker in FORBIDDEN:
        assert marker not in output, shown
    matching = [line for line in output.splitlines() if re.search(case.expect, line)]
    assert matching, f"no line matches {case.expect!r}\n{shown}"
    if case.matches is not None:
        # pytest's own short summary repeats the message (cut to the terminal width, except under
        # CI, where it is whole): count what the report body says.
        said = [line for line in matching if not line.startswith(("ERROR ", "FAILED "))]
        assert len(said) == case.matches, f"{len(said)} lines match {case.expect!r}\n{shown}"
    changed = sorted(
        name
        for name in set(before) | set(after)
        if before.get(name) != after.get(name) and not any(name.startswith(prefix) for prefix in case.outputs)
    )
    assert not changed, f"files changed that the case did not ask to write: {changed}\n{shown}"


def _run(case: Case, pytester: pytest.Pytester) -> tuple[int, str]:
    program, *args = case.argv
    if program == "pytest":
        if case.subprocess:
            result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", timeout=case.seconds)
        else:
            result = pytester.runpytest(*args, "-p", "no:cacheprovider")
        return int(result.ret), "\n".join(result.outlines + result.errlines)
    assert program == "interp-assert", program
    from interp_assert.commands.cli import main

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # shown (and refused) as a traceback
            traceback.print_exc(file=out)
            code = -1
    return code, out.getvalue()


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> a digest of what it is (content, link target, or folder)."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if key.startswith(PYTESTER_OWN):
                continue
            if path.is_symlink():
                found[key] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            elif path.is_file():
                try:
                    found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    found[key] = f"unreadable:{path.stat().st_mtime_ns}"
            else:
                found[key] = "special"
    return found


def _writable(root: Path) -> None:
    """Undo a case's chmod so the temporary folder can be removed."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink() and (path.is_dir() or path.is_file()):
                path.chmod(path.stat().st_mode | stat.S_IRUSR | stat.S_IWUSR | (stat.S_IXUSR if path.is_dir() else 0))


@pytest.mark.parametrize("flag", ["--interp-debug", "--full-trace"])
def test_tracebacks_only_on_request(flag: str, pytester: pytest.Pytester) -> None:
    """The one-line error by default; with a debug flag, the traceback down to the reader that failed."""
    from tests.hostile_cases import SPEC, copy_model, good, spec

    folder = copy_model()(pytester.path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    (pytester.path / "model_specs").mkdir()
    (pytester.path / SPEC).write_text(spec(good(), model="../model"))
    plain = pytester.runpytest("model_specs", "-p", "no:cacheprovider")
    assert "Traceback" not in plain.stdout.str() and "SafetensorError" not in plain.stdout.str()
    plain.stdout.re_match_lines([r".*weights file .*model\.safetensors is corrupt or truncated"])
    debug = pytester.runpytest("model_specs", "-p", "no:cacheprovider", flag)
    assert debug.ret == plain.ret == 1
    out = debug.stdout.str()
    assert "SafetensorError" in out and "ModelLoadError" in out, out
    assert "direct cause" in out, out
