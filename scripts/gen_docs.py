"""Write the docs that are generated from the code, so that they cannot drift from it.

- ``docs/properties.md``, whole: one section per built-in property, in registry order, from the
  property's module docstring, its ``reference`` row (keys, passes when) and its pydantic schema
  (every key with its type, default and whether it is required).
- The blocks of ``docs/cli.md`` between ``<!-- BEGIN GENERATED: NAME -->`` and
  ``<!-- END GENERATED: NAME -->``: the pytest options and ini keys (from
  ``interp_assert.option_table``) and every ``interp-assert`` verb's arguments (from the argparse
  parser the command builds). The prose around the blocks is written by hand.

``python scripts/gen_docs.py`` rewrites them; ``python scripts/gen_docs.py --check`` writes nothing
and exits 1, naming the files, when a committed page differs from what it would write
(``tests/test_docs.py`` runs the same check).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROPERTIES_PAGE = DOCS / "properties.md"
CLI_PAGE = DOCS / "cli.md"
COMMAND = "python scripts/gen_docs.py"

BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED: {name} -->"


def _cell(text: str) -> str:
    """Text that fits in one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _rst_to_markdown(text: str) -> str:
    """A docstring's reST spellings (``code``, :mod:`x`) as Markdown."""
    text = re.sub(r":(?:mod|class|meth|func|data|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _docstring_paragraphs(doc: str) -> str:
    """A module docstring as Markdown paragraphs (its hard line breaks kept: Markdown reflows them)."""
    import inspect

    return _rst_to_markdown(inspect.cleandoc(doc)).strip()


# --- properties ------------------------------------------------------------------------------


def _schema_type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON Schema node in a few words: ``int >= 1``, ``list of head``, ``one of a, b``."""
    if "$ref" in node:
        return f"mapping ({node['$ref'].rsplit('/', 1)[-1]})"
    if "const" in node:
        return f"`{node['const']}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{value}`" for value in node["enum"])
    if "anyOf" in node:
        kinds = [_schema_type(sub, defs) for sub in node["anyOf"] if sub.get("type") != "null"]
        return " or ".join(kinds)
    kind = node.get("type")
    if kind == "array":
        items = _schema_type(node.get("items", {}), defs) if node.get("items") else "value"
        size = ""
        low, high = node.get("minItems"), node.get("maxItems")
        if low is not None and low == high:
            size = f" ({low} items)"
        elif low:
            size = f" (at least {low})"
        return f"list of {items}{size}"
    if kind == "object":
        values = node.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"mapping to {_schema_type(values, defs)}"
        return "mapping"
    names = {"integer": "int", "number": "number", "string": "text", "boolean": "bool"}
    text = names.get(str(kind), str(kind))
    limits = [
        f"{symbol} {node[key]:g}" if isinstance(node[key], float) else f"{symbol} {node[key]}"
        for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in node
    ]
    if "pattern" in node:
        limits.append(f"matching `{node['pattern']}`")
    return " ".join([text, *limits])


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{value}`"


def _keys_table(
    schema: dict[str, Any],
    defs: dict[str, Any],
    *,
    skip: frozenset[str] = frozenset(),
    fields: dict[str, Any] | None = None,
) -> list[str]:
    """One row per key: its type, whether it is required, its default (a default factory's value too)."""
    rows = ["| key | type | required | default |", "| --- | --- | --- | --- |"]
    required = set(schema.get("required", ()))
    for key, node in schema.get("properties", {}).items():
        if key in skip:
            continue
        field = (fields or {}).get(key)
        if "default" not in node and field is not None and field.default_factory is not None:
            value = field.default_factory()
            node = {**node, "default": list(value) if isinstance(value, tuple | frozenset | set) else value}
        default = _cell(_default(node))
        rows.append(f"| `{key}` | {_cell(_schema_type(node, defs))} | {'yes' if key in required else ''} | {default} |")
    return rows


def _nested(schema: dict[str, Any], defs: dict[str, Any]) -> Iterator[str]:
    """The names of the mappings (``$defs``) a property's keys use, in first-use order."""
    seen: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.append(name)
                    walk(defs.get(name, {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema.get("properties", {}))
    yield from seen


COMMON_KEYS = frozenset({"property", "name", "prompts", "description"})


def properties_page() -> str:
    """``docs/properties.md``: every built-in property, from the registry."""
    from interp_assert.properties import BUILTIN, tag_of
    from interp_assert.spec.schema import property_table

    lines = [
        f"<!-- Generated by `{COMMAND}` from the property registry (interp_assert/properties): do not edit. -->",
        "",
        "# Properties",
        "",
        "Every kind of expectation a spec can state. Each expectation also takes the keys every property "
        "has: `name` (required, unique in the file: the test id and snapshot key; letters, digits, `_`, `.`, "
        "`-`), `property` (the tag below), `prompts` (the prompt set it is measured on; required except "
        "where the table below says otherwise) and `description` (free text: say where the number came "
        "from). Bounds are always explicit: `at_least`, `at_most` or both, never a bare threshold; for "
        "scores in [0, 1] a bound outside [0, 1] is rejected. Prompt sets, head and layer names and the "
        "role scores are defined in the [spec reference](spec.md); a new property is "
        "[one module](writing-a-property.md).",
        "",
        "## Summary",
        "",
        property_table(),
        "",
    ]
    for cls in BUILTIN:
        tag = tag_of(cls)
        module = sys.modules[cls.__module__]
        schema = cls.model_json_schema()
        defs = schema.get("$defs", {})
        keys, passes = cls.reference
        lines += [f"## `{tag}`", ""]
        if module.__doc__:
            lines += [_docstring_paragraphs(module.__doc__), ""]
        plain_keys = " ".join(keys.replace("\\|", "|").split())
        lines += [f"**Passes when** {passes}.", "", f"**Keys** ({plain_keys}):", ""]
        lines += _keys_table(schema, defs, skip=COMMON_KEYS, fields=cls.model_fields)
        lines.append("")
        for name in _nested(schema, defs):
            lines += [f"`{name}`:", ""]
            lines += _keys_table(defs[name], defs)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- the command line ------------------------------------------------------------------------


def pytest_options_block() -> str:
    """Every ``--interp-*`` option: flag, ini key, the verbs' spelling, values and help."""
    from interp_assert.option_table import OPTIONS

    rows = [
        "| pytest flag | ini key | `interp-assert` verbs | value | help |",
        "| --- | --- | --- | --- | --- |",
    ]
    for option in OPTIONS:
        if option.kind == "flag":
            value = "flag"
        elif option.choices:
            value = " \\| ".join(f"`{choice}`" for choice in option.choices)
        else:
            value = f"`{option.metavar}`" if option.metavar else "text"
        if option.kind == "append":
            value += " (repeatable)"
        if option.default not in (None, ""):
            value += f"; default `{option.default}`"
        verbs = ""
        if option.verbs:
            verbs = " ".join(f"`{flag}`" for flag in (option.short, option.flag) if flag)
        rows.append(f"| `{option.flag}` | `{option.name}` | {verbs} | {value} | {_cell(option.help)} |")
    return "\n".join(rows)


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}"
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if not nested:
                    yield path, sub
                yield from _subcommands(sub, path)


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{flag}`" for flag in action.option_strings)
    else:
        names = f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        value = "flag"
    elif action.choices:
        value = " \\| ".join(f"`{choice}`" for choice in action.choices)
    elif action.option_strings:
        value = f"`{action.metavar or action.dest.upper()}`"
    else:
        value = "(positional)" if action.nargs is None else "(positional, one or more)"
    if isinstance(action, argparse._AppendAction):
        value += " (repeatable)"
    if action.required and action.option_strings:
        value += ", required"
    default = action.default
    if default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0:
        value += f"; default `{default}`"
    return f"| {names} | {value} | {_cell(action.help or '')} |"


def verbs_block() -> str:
    """Every ``interp-assert`` verb: its purpose and its arguments, the shared model flags once."""
    from interp_assert.commands import cli
    from interp_assert.commands import track as track_command

    parser = cli.build_parser()
    verbs = list(_subcommands(parser, cli.PROG))
    verbs.insert(
        [name for name, _ in verbs].index(f"{cli.PROG} track") + 1,
        (f"{cli.PROG} track merge", track_command.merge_parser(cli.PROG, lambda args: 0)),
    )
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
    lines: list[str] = []
    model_group = None
    for name, sub in verbs:
        lines += [f"### `{name}`", ""]
        summary = helps.get(name.split()[1]) if len(name.split()) == 2 else None
        text = sub.description or summary or ""
        lines += [_cell(text), ""]
        rows = ["| argument | value | meaning |", "| --- | --- | --- |"]
        shared = False
        for group in sub._action_groups:
            if group.title == "model loading":
                shared = bool(group._group_actions)
                model_group = model_group or group
                continue
            for action in group._group_actions:
                if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                    continue
                rows.append(_argument_row(action))
        if len(rows) > 2:
            lines += [*rows, ""]
        if shared:
            lines += ["It also takes the [model loading flags](#model-loading-flags-every-verb).", ""]
    if model_group is not None:
        lines += ["### Model loading flags (every verb)", ""]
        lines += ["| argument | value | meaning |", "| --- | --- | --- |"]
        lines += [_argument_row(action) for action in model_group._group_actions]
    return "\n".join(lines).rstrip()


BLOCKS = {"pytest options": pytest_options_block, "verbs": verbs_block}


def with_blocks(text: str) -> str:
    """``text`` with every generated block replaced by what its generator writes now."""
    for name, make in BLOCKS.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        start, stop = text.index(begin) + len(begin), text.index(end)
        text = text[:start] + "\n" + make() + "\n" + text[stop:]
    return text


def generated() -> dict[Path, str]:
    """Every generated page as it should read now."""
    return {PROPERTIES_PAGE: properties_page(), CLI_PAGE: with_blocks(CLI_PAGE.read_text())}


def stale() -> list[Path]:
    """The pages whose committed text differs from what would be generated."""
    return [path for path, text in generated().items() if not path.is_file() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"stale: {path.relative_to(ROOT)} (run: {COMMAND})")
        return 1 if old else 0
    for path, text in generated().items():
        path.write_text(text)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
