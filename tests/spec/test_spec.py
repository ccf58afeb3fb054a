"""Spec loading and validation: every problem reported at once, with its position."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interp_assert.errors import SpecSyntaxError
from interp_assert.spec import HeadScore, parse_spec, spec_json_schema

HEADER = """\
model: some-model
prompts:
  prose: {bos: prepend, texts: ["a b c"]}
expectations:
"""

GOOD = """\
  - name: good
    property: head_score
    head: L1H2
    role: previous_token
    prompts: prose
    at_least: 1e-5
"""


def problems(text: str) -> list[str]:
    return [f"{loc.line}:{loc.column} {msg}" if loc else msg for loc, msg in parse_spec(text, "s.yaml").problems()]


def test_valid_spec_and_yaml_1_2_floats() -> None:
    spec = parse_spec(HEADER + GOOD, "s.yaml")
    assert spec.problems() == []
    expectation = spec.entries[0].expectation
    assert isinstance(expectation, HeadScore)
    assert expectation.at_least == 1e-5
    assert spec.entries[0].location.line == 5


def test_malformed_yaml_names_line() -> None:
    with pytest.raises(SpecSyntaxError) as info:
        parse_spec("model: [unclosed\nprompts: {}\n", "bad.yaml")
    assert "bad.yaml:2:" in str(info.value)
    assert "malformed YAML" in str(info.value)


def test_duplicate_key_rejected_with_both_lines() -> None:
    with pytest.raises(SpecSyntaxError) as info:
        parse_spec("model: a\nmodel: b\n", "dup.yaml")
    assert "dup.yaml:2:1: duplicate key 'model' (first given on line 1)" in str(info.value)


def test_python_tags_are_not_loaded() -> None:
    with pytest.raises(SpecSyntaxError):
        parse_spec("model: !!python/object/apply:os.system [echo hi]\n", "evil.yaml")


def test_unknown_key_lists_valid_keys() -> None:
    found = problems(HEADER + GOOD + "    colour: red\n")
    assert len(found) == 1
    assert found[0].startswith("11:5 unknown key 'colour'; valid keys here:")
    assert "at_least" in found[0] and "head" in found[0]


def test_unknown_property_lists_valid_properties() -> None:
    found = problems(HEADER + GOOD.replace("head_score", "head_scor"))
    assert "unknown property 'head_scor'; valid properties: head_score, top_heads" in found[0]


def test_wrong_types_and_bad_values_all_reported() -> None:
    text = HEADER + GOOD.replace("L1H2", "L1X2").replace("previous_token", "prev").replace("prose", "nope")
    found = problems(text + "    at_most: high\n")
    joined = "\n".join(found)
    assert "7:11 head: head 'L1X2' is not of the form L<layer>H<head>" in joined
    assert "8:11 role: Input should be 'previous_token'" in joined
    assert "prompt set 'nope' is not defined; defined prompt sets: prose" in joined
    assert "at_most: Input should be a valid number" in joined
    assert len(found) == 4


def test_bound_outside_unit_interval() -> None:
    found = problems(HEADER + GOOD.replace("1e-5", "1.5"))
    assert found == ["5:5 at_least: 1.5 is outside [0, 1], the range of this score"]


def test_missing_bound_and_inverted_bounds() -> None:
    assert "give at least one bound" in problems(HEADER + GOOD.replace("    at_least: 1e-5\n", ""))[0]
    assert "greater than at_most" in problems(HEADER + GOOD + "    at_most: 0.0\n".replace("0.0", "-1"))[0]


def test_duplicate_expectation_name() -> None:
    found = problems(HEADER + GOOD + GOOD)
    assert found == [
        "11:11 duplicate expectation name 'good' (first on line 5); names are test ids and snapshot keys, "
        "so each must be unique in its file"
    ]


def test_empty_prompt_set() -> None:
    found = problems(HEADER.replace('texts: ["a b c"]', "texts: []") + GOOD)
    assert any("prompts.prose.texts: List should have at least 1 item" in f for f in found)


def test_prompt_set_needs_exactly_one_source_and_bos() -> None:
    found = problems(HEADER.replace("bos: prepend, ", "") + GOOD)
    assert any("missing required key 'bos'" in f for f in found)


def test_json_schema_is_published_and_current() -> None:
    shipped = Path(__file__).resolve().parents[2] / "interp_assert" / "spec.schema.json"
    assert json.loads(shipped.read_text()) == spec_json_schema(), "run: python -m interp_assert.spec.schema"
