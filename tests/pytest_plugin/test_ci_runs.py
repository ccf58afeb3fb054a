"""pytest in CI: a model that cannot load stays a setup error and the summary counts what held,
failed and could not run (and why); ``--interp-limit N`` is a smoke run, marked everywhere,
that never writes snapshots. Real runs of the built-in tiny-neo."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import load_spec

SPEC = """\
model: {model}
prompts:
  words:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9 t10", "t20 t21 t22 t23 t30 t31 t32 t33 t34", "t40 t41 t42"]
expectations:
  - name: l0h0_previous_token
    property: head_score
    head: L0H0
    role: previous_token
    prompts: words
    at_least: 0.9
  - name: l1h0_is_not_previous_token
    property: head_score
    head: L1H0
    role: previous_token
    prompts: words
    at_least: 0.9
  - name: fingerprint
    property: snapshot
    prompts: words
"""


def test_failures_and_unavailable_models_are_told_apart(pytester: pytest.Pytester) -> None:
    specs = pytester.mkdir("model_specs")
    (specs / "tiny.yaml").write_text(SPEC.format(model="tiny-neo"))
    (specs / "gone.yaml").write_text(SPEC.format(model="./no-such-model"))
    assert pytester.runpytest("model_specs/tiny.yaml", "--snapshot-update", "-p", "no:cacheprovider").ret == 1
    result = pytester.runpytest("model_specs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, errors=3)  # the missing model: setup errors, not failures
    result.stdout.fnmatch_lines(
        [
            "*= interp_assert =*",
            "2 expectations held, 1 failed, 3 could not run",
            "  3 could not run: model not available: model './no-such-model' (the errors above say why)",
        ]
    )


def test_a_smoke_run_is_marked_and_never_writes_snapshots(pytester: pytest.Pytester) -> None:
    specs = pytester.mkdir("model_specs")
    (specs / "tiny.yaml").write_text(SPEC.format(model="tiny-neo"))
    refused = pytester.runpytest("model_specs", "--interp-limit", "1", "--snapshot-update", "-p", "no:cacheprovider")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "a smoke run never writes snapshots" in refused.stderr.str()
    assert not (specs / "__snapshots__").exists()

    result = pytester.runpytest(
        "model_specs", "--interp-limit", "1", "-p", "no:cacheprovider", "--junitxml=s.xml", "-rs"
    )
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "interp_assert: SMOKE RUN (smoke run: 1 prompts per set): snapshots are skipped and never written",
            "[[]smoke run: 1 prompts per set[]] *expectation 'l1h0_is_not_previous_token' (head_score) failed",
            "1 expectations held, 1 failed, 1 skipped (smoke run: 1 prompts per set)",
            "SKIPPED *smoke run: 1 prompts per set: a snapshot compares whole prompt sets; not compared, not written",
        ]
    )
    assert not (specs / "__snapshots__").exists()
    for case in ET.parse(pytester.path / "s.xml").getroot().iter("testcase"):
        if case.find("skipped") is None:
            properties = {p.get("name"): p.get("value") for p in case.iter("property")}
            assert properties["smoke"] == "1 prompts per set", properties


def test_the_limit_measures_the_first_prompts_only(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "tiny.yaml"  # type: ignore[operator]
    path.write_text(SPEC.format(model="tiny-neo"))
    spec = load_spec(path)
    entry = spec.entries[1]  # L1H0's previous-token score differs between the prompts
    values = {limit: Runner(RunOptions(limit=limit)).evaluate(spec, entry).value for limit in (None, 1, 3, 9)}
    assert values[None] == values[3] == values[9] != values[1]
    only_first = SPEC.format(model="tiny-neo").replace(
        '["t5 t6 t7 t8 t9 t10", "t20 t21 t22 t23 t30 t31 t32 t33 t34", "t40 t41 t42"]', '["t5 t6 t7 t8 t9 t10"]'
    )
    path.write_text(only_first)
    assert Runner(RunOptions()).evaluate(load_spec(path), entry).value == values[1]


def test_running_out_of_memory_is_a_setup_error_not_a_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU that runs out of memory cannot be made to on purpose here: capture is replaced by one
    that raises torch's own OutOfMemoryError (the one mock: nothing real can run out of memory cheaply)."""
    import torch

    import interp_assert.runner as runner_module

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(runner_module, "measure", out_of_memory)  # what the runner captures with
    specs = pytester.mkdir("model_specs")
    (specs / "tiny.yaml").write_text(SPEC.format(model="tiny-neo").split("  - name: fingerprint")[0])
    result = pytester.runpytest("model_specs", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "model_specs/tiny.yaml::l0h0_previous_token: could not run: OutOfMemoryError: CUDA out of memory.*",
            "0 expectations held, 0 failed, 2 could not run",
            "  2 could not run: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB",
        ]
    )
