"""The pytest plugin, driven from outside with pytester on small real models."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.builders import uniform_first_token_score

PROMPT = "t5 t6 t7 t8 t9 t10 t11"  # + BOS = 8 tokens
UNIFORM = uniform_first_token_score(8)


def spec_text(model: Path | str, expectations: str, prompts: str | None = None) -> str:
    prompts = prompts or f'  prose:\n    bos: prepend\n    texts: ["{PROMPT}"]\n'
    return f"model: {model}\nprompts:\n{prompts}expectations:\n{expectations}"


def head_score(name: str, role: str = "first_token", head: str = "L0H0", bounds: str = "at_least: 0.24") -> str:
    return (
        f"  - name: {name}\n    property: head_score\n    head: {head}\n    role: {role}\n"
        f"    prompts: prose\n    {bounds}\n"
    )


def write_spec(pytester: pytest.Pytester, name: str, text: str) -> Path:
    path = pytester.path / "model_specs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_passing_spec(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    body = head_score("sink", bounds=f"at_least: {UNIFORM - 0.001}\n    at_most: {UNIFORM + 0.001}")
    body += head_score("prev", role="previous_token", head="L1H3", bounds=f"at_least: {UNIFORM - 0.001}")
    write_spec(pytester, "uniform.yaml", spec_text(uniform_llama, body))
    result = pytester.runpytest("model_specs", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*model_specs/uniform.yaml::sink PASSED*", "*uniform.yaml::prev PASSED*"])


def test_failing_spec_message(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    write_spec(pytester, "claims.yaml", spec_text(uniform_llama, head_score("sink", bounds="at_least: 0.9")))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "model_specs/claims.yaml:7:5: expectation 'sink' (head_score) failed" in out
    assert f"L0H0 first_token = {UNIFORM:.4f}, expected at_least 0.9: short by {0.9 - UNIFORM:.4f}" in out
    assert re.search(r"top 5 first_token heads: (L\dH\d 0\.2454, ){4}L\dH\d 0\.2454", out)
    assert "Traceback" not in out


JUNIT_KEYS = {"property", "passed", "value", "bound_low", "bound_high", "model", "model_source", "weights_sha256"}


def test_junitxml_has_a_stable_schema_a_dashboard_can_parse(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    top = "  - name: top\n    property: top_heads\n    role: first_token\n    k: 2\n    include: [L0H0]\n"
    top += "    prompts: prose\n"
    write_spec(pytester, "u.yaml", spec_text(uniform_llama, head_score("sink") + top))
    pytester.runpytest("model_specs", "--junitxml=out.xml")
    rows = {}
    for case in ET.parse(pytester.path / "out.xml").iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert set(properties) >= JUNIT_KEYS, case.get("name")
        rows[case.get("name")] = properties
    sink = rows["sink"]
    assert sink["property"] == "head_score" and sink["passed"] == "true"
    assert float(sink["value"]) == pytest.approx(UNIFORM, abs=1e-6)
    assert float(sink["bound_low"]) == 0.24 and sink["bound_high"] == ""
    assert sink["model"] == str(uniform_llama) and Path(sink["model_source"]) == uniform_llama
    assert re.fullmatch(r"[0-9a-f]{16}", sink["weights_sha256"])
    assert rows["top"]["property"] == "top_heads" and len(rows["top"]["value"].split()) == 2


def test_malformed_yaml_is_collection_error(pytester: pytest.Pytester) -> None:
    write_spec(pytester, "broken.yaml", "model: x\nprompts: {a: [1, 2}\n")
    result = pytester.runpytest("model_specs")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*model_specs/broken.yaml:2:*malformed YAML*"])


def test_invalid_expectation_fails_alone(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    body = (
        head_score("fine") + head_score("bad_head_syntax", head="L0X0") + head_score("too_high", bounds="at_least: 1.5")
    )
    write_spec(pytester, "mixed.yaml", spec_text(uniform_llama, body))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "model_specs/mixed.yaml:15:11: head: head 'L0X0' is not of the form L<layer>H<head>" in out
    assert "at_least: 1.5 is outside [0, 1], the range of this score" in out


def test_invalid_spec_among_valid_files(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    write_spec(pytester, "a_good.yaml", spec_text(uniform_llama, head_score("fine")))
    write_spec(pytester, "b_bad.yaml", spec_text(uniform_llama, head_score("fine")).replace("model:", "modle:"))
    result = pytester.runpytest("model_specs", "-v")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "b_bad.yaml::spec FAILED" in out
    assert "unknown key 'modle'" in out and "valid keys here: $schema, model, dtype, device" in out


def test_unknown_property_lists_valid_ones(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    write_spec(pytester, "p.yaml", spec_text(uniform_llama, head_score("x").replace("head_score", "head_scores")))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown property 'head_scores'; valid properties: head_score, top_heads*"])


def test_head_out_of_range_names_valid_range(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    write_spec(pytester, "r.yaml", spec_text(uniform_llama, head_score("far", head="L40H0")))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*r.yaml:7:5: far: head L40H0 is out of range: this model has layers 0-1 and heads 0-3*"]
    )


def test_prompt_longer_than_context(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    prompts = "  prose:\n    bos: prepend\n    random_tokens: {length: 100, repeats: 2}\n"
    write_spec(pytester, "long.yaml", spec_text(uniform_llama, head_score("x"), prompts))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*long.yaml:3:3: prompt set 'prose': a prompt is 201 tokens long but the model's context is 128 tokens*"]
    )


def test_empty_prompt_set(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    prompts = "  prose:\n    bos: prepend\n    texts: []\n"
    write_spec(pytester, "empty.yaml", spec_text(uniform_llama, head_score("x"), prompts))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*empty.yaml:5:12: prompts.prose.texts: List should have at least 1 item*"])


def test_duplicate_expectation_name(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    write_spec(pytester, "d.yaml", spec_text(uniform_llama, head_score("same") + head_score("same")))
    result = pytester.runpytest("model_specs")
    result.stdout.fnmatch_lines(["*d.yaml:13:11: duplicate expectation name 'same' (first on line 7)*"])
    assert result.parseoutcomes().get("failed") == 1


def test_duplicate_key_is_collection_error(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    write_spec(pytester, "k.yaml", spec_text(uniform_llama, head_score("x")) + "model: other\n")
    result = pytester.runpytest("model_specs")
    result.stdout.fnmatch_lines(["*k.yaml:13:1: duplicate key 'model' (first given on line 1)*"])


def test_missing_model_is_an_error_by_default(pytester: pytest.Pytester) -> None:
    write_spec(pytester, "m.yaml", spec_text("nobody/no-such-model", head_score("x")))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "model 'nobody/no-such-model' is not a known alias" in out
    assert "cannot be downloaded offline" in out
    assert "Traceback" not in out


def test_missing_model_skipped_on_request(pytester: pytest.Pytester) -> None:
    write_spec(pytester, "m.yaml", spec_text("nobody/no-such-model", head_score("x")))
    result = pytester.runpytest("model_specs", "--interp-missing=skip", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*model not available: model 'nobody/no-such-model' is not a known alias*"])


def test_pickled_weights_refused(pytester: pytest.Pytester, uniform_llama: Path, tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(uniform_llama, pickled)
    weights = pickled / "model.safetensors"
    torch.save(load_file(weights), pickled / "pytorch_model.bin")
    weights.unlink()
    write_spec(pytester, "p.yaml", spec_text(pickled, head_score("x")))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*has only pickled weights (pytorch_model.bin)*--interp-allow-pickle*"])
    pytester.runpytest("model_specs", "--interp-allow-pickle").assert_outcomes(passed=1)
    # the environment of the run may allow them too; an ini file beside the specs may not
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTERP_ASSERT_ALLOW_PICKLE", "1")
        pytester.runpytest("model_specs").assert_outcomes(passed=1)
    (pytester.path / "model_specs" / "pytest.ini").write_text("[pytest]\ninterp_allow_pickle = true\n")
    planted = pytester.runpytest("model_specs")
    assert planted.ret == pytest.ExitCode.USAGE_ERROR
    planted.stderr.fnmatch_lines(["*model_specs/pytest.ini: ini key interp_allow_pickle is not read*"])


def test_each_model_loads_once(pytester: pytest.Pytester, uniform_llama: Path, random_llama: Path) -> None:
    pytester.makeconftest(
        """
        import interp_assert.runner as runner
        loads = []
        original = runner.load_model
        def counting(reference, *args, **kwargs):
            loads.append(reference)
            return original(reference, *args, **kwargs)
        runner.load_model = counting
        def pytest_sessionfinish(session):
            print("LOADS", len(loads), len(set(loads)))
        """
    )
    write_spec(pytester, "a.yaml", spec_text(uniform_llama, head_score("x")))
    write_spec(pytester, "b.yaml", spec_text(random_llama, head_score("x", bounds="at_least: 0.0")))
    write_spec(pytester, "c.yaml", spec_text(uniform_llama, head_score("y")))
    result = pytester.runpytest("model_specs", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*LOADS 2 2*"])


def test_model_override(pytester: pytest.Pytester, uniform_llama: Path, random_llama: Path) -> None:
    write_spec(
        pytester,
        "o.yaml",
        spec_text(
            "base-model",
            head_score("sink", bounds=f"at_least: {UNIFORM - 0.001}\n    at_most: {UNIFORM + 0.001}"),
        ),
    )
    pytester.runpytest("model_specs", f"--interp-model=base-model={uniform_llama}").assert_outcomes(passed=1)
    pytester.runpytest("model_specs", f"--interp-model=base-model={random_llama}").assert_outcomes(failed=1)


def test_help_does_not_import_torch(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert "--interp-model" in result.stdout.str()
    probe = pytester.makepyfile(
        "import sys, subprocess\n"
        "def test_probe():\n"
        '    code = \'import pytest, sys; pytest.main(["--help"]); print("TORCH", "torch" in sys.modules)\'\n'
        "    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout\n"
        "    assert 'TORCH False' in out\n"
    )
    pytester.runpytest_subprocess(probe).assert_outcomes(passed=1)


def test_every_option_has_an_ini_key_and_the_command_line_wins(pytester: pytest.Pytester) -> None:
    from interp_assert.pytest_plugin.options import OPTIONS

    pytester.makeini("[pytest]\ninterp_missing = skip\n")
    write_spec(pytester, "gone.yaml", spec_text("nobody/no-such-model", head_score("sink")))
    pytester.runpytest("model_specs").assert_outcomes(skipped=1)
    pytester.runpytest("model_specs", "--interp-missing=error").assert_outcomes(errors=1)
    help_text = pytester.runpytest("--help").stdout.str()
    for option in OPTIONS:
        assert option.flag in help_text and f"{option.name} (" in help_text, option.name


def test_an_invalid_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ninterp_missing = sometimes\n")
    write_spec(pytester, "gone.yaml", spec_text("nobody/no-such-model", head_score("sink")))
    result = pytester.runpytest("model_specs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option interp_missing = 'sometimes' is not valid; choose one of error, skip"])


def test_python_api_records_and_checks_a_snapshot(pytester: pytest.Pytester) -> None:
    """``expect("snapshot", ...)`` from a Python test: missing, then recorded with --snapshot-update
    beside the module (where syrupy's own sweep never deletes it), then checked."""
    pytester.makepyfile(
        test_fingerprint="""
        PROMPTS = {"bos": "prepend", "random_tokens": {"length": 8, "repeats": 2, "count": 2, "seed": 1}}

        def test_fingerprint(interp):
            interp.model("tiny-neo").expect("snapshot", prompts=PROMPTS, name="tiny_fp")
        """
    )
    missing = pytester.runpytest("-p", "no:cacheprovider")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*no snapshot 'tiny_fp' in *__interp_snapshots__*test_fingerprint.ambr*"])
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=1)
    stored = pytester.path / "__interp_snapshots__" / "test_fingerprint.ambr"
    assert "tiny_fp" in stored.read_text()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=1)
    assert "tiny_fp" in stored.read_text()  # a second update run keeps it
