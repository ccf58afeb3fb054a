"""One options table: every model option the verbs take is pytest's, with the same spellings,
choices and help text, and fills the same ``Flags`` field on both sides."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from interp_assert.commands.cli import build_parser
from interp_assert.option_table import OPTIONS, flag_values
from interp_assert.run_options import Flags

VERBS = ("discover", "report", "audit", "track", "measure")


def verb_actions(verb: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in subparsers.choices[verb]._actions}


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_takes_the_shared_options_as_pytest_declares_them(verb: str) -> None:
    actions = verb_actions(verb)
    for option in OPTIONS:
        if not option.verbs:
            assert option.name not in actions, f"{verb} takes pytest-only {option.flag}"
            continue
        action = actions[option.name]
        assert option.flag in action.option_strings
        assert option.short is None or option.short in action.option_strings
        assert action.help == option.help
        assert tuple(action.choices or ()) == option.choices


def test_each_field_is_a_flags_field_and_every_flags_field_has_an_option() -> None:
    fields = {f.name for f in dataclasses.fields(Flags)}
    declared = {option.field for option in OPTIONS if option.field and option.field != "debug"}
    assert declared <= fields
    assert fields - declared == {"update_snapshots"}  # from syrupy's own --snapshot-update


def test_a_verb_and_pytest_read_the_same_flags_into_the_same_fields() -> None:
    args = build_parser().parse_args(
        ["measure", "m", "--dtype", "bfloat16", "--interp-device", "cpu", "--interp-model", "a=b", "--allow-pickle"]
    )
    values = flag_values(lambda option: getattr(args, option.name), verbs_only=True)
    assert values["dtype"] == "bfloat16" and values["device"] == "cpu" and values["models"] == ["a=b"]
    assert values["allow_pickle"] is True and "limit" not in values and "cache" not in values


def test_pytest_help_lists_every_option_with_its_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    for option in OPTIONS:
        assert option.flag in text
        assert " ".join(option.help.split())[:60] in text
