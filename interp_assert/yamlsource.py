"""YAML text -> plain Python data plus a map from data paths to file positions.

Safe loading only (``yaml.SafeLoader`` resolution, no Python tags). Two YAML 1.1
traps are closed here: ``1e-5`` is read as a float (YAML 1.1 wants ``1.0e-5``)
and a mapping that repeats a key is an error instead of silently keeping the
last value.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from interp_assert.errors import Location, SpecSyntaxError

Path = tuple[str | int, ...]

_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose float resolver also accepts ``1e-5``."""


_SpecLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass(frozen=True)
class SourceDocument:
    """Parsed YAML and where each value came from."""

    path: str
    data: Any
    positions: dict[Path, Location] = field(default_factory=dict)
    key_positions: dict[Path, Location] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The position of ``path`` (of its key if ``key``), or of its nearest enclosing value."""
        if key and tuple(path) in self.key_positions:
            return self.key_positions[tuple(path)]
        for cut in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:cut]))
            if found is not None:
                return found
        return Location(self.path, 1, 1)


def load_source(text: str, path: str) -> SourceDocument:
    """Parse ``text`` (the contents of ``path``) into a :class:`SourceDocument`.

    Raises :class:`SpecSyntaxError` naming line and column for malformed YAML,
    more than one document, or a repeated key.
    """
    try:
        loader = _SpecLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpecSyntaxError([(where, f"malformed YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecSyntaxError([(Location(path, 1, 1), f"malformed YAML: {exc}")]) from None
    positions: dict[Path, Location] = {}
    key_positions: dict[Path, Location] = {}
    if node is None:
        return SourceDocument(path, None, positions, key_positions)
    data = _construct(node, (), path, (positions, key_positions), loader)
    return SourceDocument(path, data, positions, key_positions)


def _construct(
    node: yaml.Node,
    at: Path,
    path: str,
    maps: tuple[dict[Path, Location], dict[Path, Location]],
    loader: _SpecLoader,
) -> Any:
    positions, key_positions = maps
    positions[at] = Location(path, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise SpecSyntaxError([(positions[at], f"tag {node.tag!r} is not allowed; specs are plain YAML")])
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        first_seen: dict[Hashable, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                where = Location(path, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                raise SpecSyntaxError([(where, "a mapping key must be a plain value")])
            if key in first_seen:
                where = Location(path, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
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
            key_positions[(*at, str(key))] = Location(
                path, key_node.start_mark.line + 1, key_node.start_mark.column + 1
            )
            result[key] = _construct(value_node, (*at, str(key)), path, maps, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*at, index), path, maps, loader) for index, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise SpecSyntaxError([(positions[at], f"cannot read value: {exc.problem}")]) from None
