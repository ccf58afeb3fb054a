"""``--interp-cache``: a result is reused only under the same key. One weight, one prompt character
or one bound changed each miss; a corrupt entry is a miss; a cached pass says it is cached; a
folder another user could write is refused. On a real model (a copy of the built-in tiny-neo)."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from interp_assert.errors import UsageError
from interp_assert.result_cache import ResultCache, check_folder
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import load_spec

TINY = Path(__file__).resolve().parent.parent / "interp_assert" / "builtin_models" / "tiny-neo"
SPEC = """\
model: ../model
prompts:
  words:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9 t10", "t20 t21 t22 t23 t24"]
expectations:
  - name: l0h0_previous_token
    property: head_score
    head: L0H0
    role: previous_token
    prompts: words
    at_least: 0.9
  - name: norms_grow
    property: hidden_norm_ratio
    prompts: words
    at_least: 0.5
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(TINY, tmp_path / "model")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "tiny.yaml").write_text(SPEC)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    return tmp_path


def evaluate(project: Path) -> dict[str, tuple[bool, bool, object]]:
    """name -> (passed, from the cache, value), by a fresh runner (as a new pytest session would)."""
    runner = Runner(RunOptions(cache=project / "cache" / "results"))
    spec = load_spec(project / "specs" / "tiny.yaml")
    found = {}
    for entry in spec.entries:
        outcome = runner.evaluate(spec, entry)
        found[entry.name] = (outcome.passed, runner.was_cached(spec, entry), outcome.value)
    return found


def test_one_weight_one_prompt_character_one_bound_each_miss(project: Path) -> None:
    first = evaluate(project)
    assert not any(cached for _, cached, _ in first.values())
    again = evaluate(project)
    assert all(cached for _, cached, _ in again.values())
    assert {k: (p, v) for k, (p, _, v) in again.items()} == {k: (p, v) for k, (p, _, v) in first.items()}

    spec = project / "specs" / "tiny.yaml"
    spec.write_text(SPEC.replace("at_least: 0.9", "at_least: 0.91"))  # one bound of one expectation
    assert {k: c for k, (_, c, _) in evaluate(project).items()} == {"l0h0_previous_token": False, "norms_grow": True}

    spec.write_text(SPEC.replace("at_least: 0.9", "at_least: 0.91").replace("t9 t10", "t9 t11"))  # one character
    assert not any(cached for _, cached, _ in evaluate(project).values())
    assert all(cached for _, cached, _ in evaluate(project).values())

    weights = project / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x01  # the low bit of the last weight
    weights.write_bytes(bytes(data))
    changed = evaluate(project)
    assert not any(cached for _, cached, _ in changed.values())

    for entry in (project / "cache" / "results").rglob("*.json"):  # every entry cut short: all misses
        entry.write_text(entry.read_text()[:30])
    assert not any(cached for _, cached, _ in evaluate(project).values())


def test_a_cached_pass_is_reported_as_cached(
    project: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(project / "model", pytester.path / "model")
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "tiny.yaml").write_text(SPEC)
    cache = pytester.path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("INTERP_ASSERT_CACHE", str(cache))
    args = ("specs/tiny.yaml", "--interp-cache", "-p", "no:cacheprovider", "--junitxml=run.xml")
    pytester.runpytest(*args).assert_outcomes(passed=2)
    second = pytester.runpytest(*args)
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(["2 expectations held, 0 failed; 2 held from the result cache (--interp-cache)"])
    cases = list(ET.parse(pytester.path / "run.xml").getroot().iter("testcase"))
    assert all(("cached", "true") in [(p.get("name"), p.get("value")) for p in case.iter("property")] for case in cases)


def test_a_cache_folder_others_can_write_is_refused(
    project: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = project / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(
        UsageError, match=r"shared, above it, can be changed by another user \(owner id \d+, mode drwxrwxrwx\)"
    ):
        ResultCache(shared / "results")
    assert not (shared / "results").exists()  # nothing made under a folder others can change
    check_folder(project / "cache" / "results")  # ours, 0700: accepted
    monkeypatch.setenv("INTERP_ASSERT_CACHE", str(shared))
    result = pytester.runpytest("--interp-cache", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert re.search(r"--interp-cache: .*shared, above it, can be changed by another user", result.stderr.str())


def test_an_entry_this_user_did_not_sign_is_a_miss(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache restored from elsewhere (another key) or planted: its passes are not believed."""
    first = evaluate(project)
    assert not any(cached for _, cached, _ in first.values())
    monkeypatch.setenv("INTERP_ASSERT_SIGNING_KEY", "another machine's key")
    assert not any(cached for _, cached, _ in evaluate(project).values())  # measured again, signed anew
    assert all(cached for _, cached, _ in evaluate(project).values())
