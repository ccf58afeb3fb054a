"""YAML text -> plain Python data plus a map from data paths to file positions.

Safe loading only (``yaml.SafeLoader`` resolution, no Python tags). YAML 1.1
traps are closed here: ``1e-5`` is read as a float (YAML 1.1 wants ``1.0e-5``),
integers are YAML 1.2 ones (``010`` is ten, not octal eight; ``1:30`` is text,
not a base-60 number), and a mapping that repeats a key is an error instead of
silently keeping the last value.

Hostile input is refused with a position, never expanded: anchors and aliases
(``&a``/``*a``, the "billion laughs" bomb and self-referencing nodes) and merge
keys (``<<``) are not part of the spec language, nesting is capped at
:data:`MAX_DEPTH`, files at :data:`MAX_SPEC_BYTES`, and a file must be UTF-8
(a UTF-8 byte-order mark is accepted).
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent

from interp_assert.errors import Location, SpecSyntaxError

KeyPath = tuple[str | int, ...]  # keys and indices from the document root to a node

MAX_SPEC_BYTES = 1 << 20  # 1 MiB: a spec of a thousand expectations is about 200 KB
MAX_DEPTH = 32  # a spec nests 5 deep; the YAML composer recurses once per level
MAX_NODES = 20_000  # values in one file (a 1000-expectation spec has about 17k); 20k parse in ~0.5 s

_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT_1_2 = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Refused(yaml.YAMLError):
    """Raised inside the composer; turned into a positioned :class:`SpecSyntaxError`."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers that refuses anchors, aliases and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            raise _Refused(
                event.start_mark,
                f"alias *{event.anchor} is not allowed: specs do not use YAML anchors or aliases "
                "(they can expand without bound); write the value out in full",
            )
        if event.anchor is not None:
            raise _Refused(
                event.start_mark,
                f"anchor &{event.anchor} is not allowed: specs do not use YAML anchors or aliases; "
                "write each value out in full",
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(event.start_mark, f"more than {MAX_NODES} values in one file, the limit for a spec")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep; a spec nests at most 5")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)


_SpecLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_1_2, list("-+0123456789"))
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


@dataclass(frozen=True)
class SourceDocument:
    """Parsed YAML and where each value came from."""

    path: str
    data: Any
    positions: dict[KeyPath, Location] = field(default_factory=dict)
    key_positions: dict[KeyPath, Location] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, key: bool = False) -> Location:
        """The position of ``path`` (of its key if ``key``), or of its nearest enclosing value."""
        if key and tuple(path) in self.key_positions:
            return self.key_positions[tuple(path)]
        for cut in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:cut]))
            if found is not None:
                return found
        return Location(self.path, 1, 1)


_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_spec_text(path: str | Path, shown: str | None = None) -> str:
    """The text of a spec (or prompt) file, refused with a one-line positioned error when it
    cannot be read, is too large, or is not UTF-8."""
    shown = shown or str(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise SpecSyntaxError([(None, f"{shown}: not a regular file; a spec is a YAML text file")])
        with open(path, "rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecSyntaxError([(None, f"{shown}: cannot read the spec file: {exc.strerror or exc}")]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(
            [(Location(shown, 1, 1), f"the file is larger than {MAX_SPEC_BYTES >> 20} MiB, the limit for a spec")]
        )
    return decode_spec_bytes(data, shown)


def decode_spec_bytes(data: bytes, shown: str) -> str:
    """UTF-8 (with or without a byte-order mark) -> text; anything else is a positioned error."""
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            raise SpecSyntaxError(
                [
                    (
                        Location(shown, 1, 1),
                        f"the file is {encoding} encoded (it starts with a {encoding} byte-order mark); "
                        "spec files must be UTF-8: re-save it as UTF-8",
                    )
                ]
            )
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecSyntaxError(
            [
                (
                    Location(shown, line, column),
                    f"byte 0x{data[exc.start]:02x} is not valid UTF-8; spec files must be UTF-8 text "
                    "(re-save the file as UTF-8)",
                )
            ]
        ) from None


def load_source(text: str, path: str) -> SourceDocument:
    """Parse ``text`` (the contents of ``path``) into a :class:`SourceDocument`.

    Raises :class:`SpecSyntaxError` naming line and column for malformed YAML,
    more than one document, a repeated key, an anchor, alias or merge key, or
    nesting deeper than :data:`MAX_DEPTH`.
    """
    if len(text) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(
            [(Location(path, 1, 1), f"the text is larger than {MAX_SPEC_BYTES >> 20} MiB, the limit for a spec")]
        )
    try:
        loader = _SpecLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except _Refused as exc:
        raise SpecSyntaxError([(_at(path, exc.mark), exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _at(path, mark) if mark else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        if "'\\t'" in problem:
            problem += "; indent YAML with spaces, never tabs"
        raise SpecSyntaxError([(where, f"malformed YAML: {problem}")]) from None
    except yaml.reader.ReaderError as exc:
        raise SpecSyntaxError([_reader_problem(text, path, exc)]) from None
    except yaml.YAMLError as exc:
        raise SpecSyntaxError([(Location(path, 1, 1), f"malformed YAML: {exc}")]) from None
    positions: dict[KeyPath, Location] = {}
    key_positions: dict[KeyPath, Location] = {}
    if node is None:
        return SourceDocument(path, None, positions, key_positions)
    data = _construct(node, (), path, (positions, key_positions), loader)
    return SourceDocument(path, data, positions, key_positions)


def _at(path: str, mark: Any) -> Location:
    return Location(path, mark.line + 1, mark.column + 1)


def _reader_problem(text: str, path: str, exc: yaml.reader.ReaderError) -> tuple[Location, str]:
    position = max(0, min(int(exc.position), len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    character = exc.character if isinstance(exc.character, int) else 0
    hint = " (a NUL character: is the file UTF-16? spec files must be UTF-8)" if character == 0 else ""
    message = f"character U+{character:04X} is not allowed in YAML{hint}; remove it or re-save the file as UTF-8 text"
    return Location(path, line, column), message


def _construct(
    node: yaml.Node,
    at: KeyPath,
    path: str,
    maps: tuple[dict[KeyPath, Location], dict[KeyPath, Location]],
    loader: _SpecLoader,
) -> Any:
    positions, key_positions = maps
    positions[at] = _at(path, node.start_mark)
    if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise SpecSyntaxError([(positions[at], f"tag {node.tag!r} is not allowed; specs are plain YAML")])
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        first_seen: dict[Hashable, int] = {}
        for key_node, value_node in node.value:
            where = _at(path, key_node.start_mark)
            if key_node.tag == _MERGE_TAG:
                raise SpecSyntaxError(
                    [(where, "merge keys (<<) are not allowed: specs do not use YAML merges; write each key out")]
                )
            if isinstance(key_node, yaml.CollectionNode):
                raise SpecSyntaxError([(where, "a mapping key must be a plain value")])
            key = _scalar(key_node, where, loader)
            if not isinstance(key, Hashable):
                raise SpecSyntaxError([(where, "a mapping key must be a plain value")])
            if key in first_seen:
                raise SpecSyntaxError(
                    [
                        (
                            where,
                            f"duplicate key {key!r} (first given on line {first_seen[key]}); "
                            "each key may appear once per mapping",
                        )
                    ]
                )
            first_seen[key] = key_node.start_mark.line + 1
            key_positions[(*at, str(key))] = where
            result[key] = _construct(value_node, (*at, str(key)), path, maps, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*at, index), path, maps, loader) for index, item in enumerate(node.value)]
    return _scalar(node, positions[at], loader)


def _scalar(node: yaml.Node, where: Location, loader: _SpecLoader) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise SpecSyntaxError([(where, f"cannot read value: {exc.problem}")]) from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        # an explicit tag on text that is not of that type (``!!int abc``), or a number too long to read
        text = str(node.value)
        shown = repr(text) if len(text) <= 40 else repr(text[:40]) + f"... ({len(text)} characters)"
        kind = str(node.tag).rsplit(":", 1)[-1]
        raise SpecSyntaxError([(where, f"cannot read {shown} as {kind}: not a valid {kind} value")]) from None
