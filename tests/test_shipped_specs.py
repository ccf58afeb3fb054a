"""The shipped specs, run as a user runs them, on the real models."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

SMOLLM2_SPEC = REPO / "model_specs" / "smollm2-135m-instruct.yaml"


TINY_NEO_SPEC = REPO / "model_specs" / "tiny-neo.yaml"


def copy_spec(pytester: pytest.Pytester, text: str | None = None, spec: Path = SMOLLM2_SPEC) -> None:
    """The spec and its snapshots, as a user's checkout has them."""
    target = pytester.path / "model_specs" / spec.name
    target.parent.mkdir(exist_ok=True)
    shutil.copytree(spec.parent / "__snapshots__", target.parent / "__snapshots__", dirs_exist_ok=True)
    if text is None:
        shutil.copy(spec, target)
    else:
        target.write_text(text)


def test_smollm2_spec_passes(pytester: pytest.Pytester, smollm2_dir: object) -> None:
    copy_spec(pytester)
    result = pytester.runpytest("model_specs")
    n_expectations = SMOLLM2_SPEC.read_text().count("\n  - name: ")
    assert n_expectations >= 12
    result.assert_outcomes(passed=n_expectations)


def test_tiny_neo_spec_passes(pytester: pytest.Pytester) -> None:
    copy_spec(pytester, spec=TINY_NEO_SPEC)
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(passed=TINY_NEO_SPEC.read_text().count("\n  - name: "))


def test_smollm2_false_claim_fails_with_location_value_and_real_heads(
    pytester: pytest.Pytester, smollm2_dir: object
) -> None:
    text = SMOLLM2_SPEC.read_text()
    claim = "  - name: l16h0_previous_token\n"
    assert claim in text
    edited = text.replace(claim, claim.replace("previous_token", "first_token"), 1)
    edited = re.sub(
        r"(- name: l16h0_first_token\n(?:    .*\n)*?    role: )previous_token(\n(?:    .*\n)*?    at_least: )0\.65",
        r"\1first_token\g<2>0.9",
        edited,
    )
    line = edited.splitlines().index("  - name: l16h0_first_token") + 1
    copy_spec(pytester, edited)
    # only the edited item: the whole spec passing is test_smollm2_spec_passes's job
    result = pytester.runpytest("model_specs", "-k", "l16h0_first_token")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*model_specs/smollm2-135m-instruct.yaml:{line}:5: expectation 'l16h0_first_token' (head_score) failed",
            "*L16H0 first_token = 0.1*, expected at_least 0.9: short by 0.*",
            "*top 5 first_token heads: L18H8 1.0000, L18H7 1.0000*",
        ]
    )


GPT_NEO_SPEC = REPO / "model_specs" / "gpt-neo-125m.yaml"


def test_gpt_neo_125m_spec_is_a_clear_error_offline(pytester: pytest.Pytester) -> None:
    target = pytester.path / "model_specs" / GPT_NEO_SPEC.name
    target.parent.mkdir()
    shutil.copy(GPT_NEO_SPEC, target)
    n_expectations = GPT_NEO_SPEC.read_text().count("\n  - name: ")
    failed = pytester.runpytest("model_specs")
    failed.assert_outcomes(errors=n_expectations)
    failed.stdout.fnmatch_lines(
        ["*model not available: model 'EleutherAI/gpt-neo-125m' is not a known alias*cannot be downloaded offline*"]
    )
    skipped = pytester.runpytest("model_specs", "--interp-missing=skip", "-rs")
    skipped.assert_outcomes(skipped=n_expectations)
    assert skipped.ret == 0
