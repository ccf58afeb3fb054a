"""Fuzzing the spec loader and validator with hypothesis.

Property: any text (or bytes) either validates into a :class:`SpecFile` or raises the project's
own :class:`InterpAssertError`; never another exception, within 2 s and 64 MiB per input. Every
problem is one line with a position (or none), never a multi-line dump.

Inputs: random YAML-ish text, random bytes (BOMs, invalid UTF-8), random YAML documents built
from data, specs built from the schema's own keys with hostile values, and mutations of the
shipped specs in ``model_specs/`` (line and token deletions, key renames, value swaps and
replacements, indentation changes, truncation).

CI runs a short, derandomised profile (a few hundred inputs per test). For a long, random run:

    INTERP_FUZZ=long pytest tests/spec/test_fuzz.py          # 20,000 inputs per test
    INTERP_FUZZ=5000 pytest tests/spec/test_fuzz.py          # any number per test
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from interp_assert import spec as spec_module
from interp_assert.errors import InterpAssertError
from interp_assert.properties import registered
from interp_assert.spec import SpecFile, parse_spec
from interp_assert.spec.yamlsource import decode_spec_bytes

EXPECTATION_TYPES = registered()

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [path.read_text(encoding="utf-8") for path in sorted((REPO / "model_specs").glob("*.yaml"))]
SECONDS = 2.0
PEAK_BYTES = 64 << 20

_choice = os.environ.get("INTERP_FUZZ", "")
LONG = bool(_choice)
EXAMPLES = 20_000 if _choice == "long" else int(_choice) if _choice.isdigit() else 300

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the time bound is asserted per input below, on the parse alone
    derandomize=not LONG,  # CI sees the same inputs every run
    database=None,  # write nothing into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
STATS: dict[str, float] = {"inputs": 0, "seconds": 0.0}


def check(text: str) -> None:
    """The property, for one input. Memory is traced for one input in ten (tracing slows parsing ~3x)."""
    traced = STATS["inputs"] % 10 == 0
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        result: SpecFile | InterpAssertError = parse_spec(text, "fuzz.yaml")
    except InterpAssertError as exc:
        result = exc
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        if traced:
            tracemalloc.stop()
        STATS["inputs"] += 1
        STATS["seconds"] += elapsed
    assert elapsed < SECONDS, f"{elapsed:.2f} s for {len(text)} characters"
    assert peak < PEAK_BYTES, f"{peak >> 20} MiB for {len(text)} characters"
    problems = result.problems() if isinstance(result, SpecFile) else getattr(result, "problems", [(None, str(result))])
    for location, message in problems:
        assert message and "\n" not in message, repr(message)
        assert location is None or (location.line >= 1 and location.column >= 1)


# ---- strategies ----

YAML_CHARS = list(":-[]{},&*!|>'\"%@`#?.~ \n\t0123456789eE+") + list("abcLHxyz_") + ["\ufeff", "\x00", "é", "\u2028"]
KEYS = sorted(
    {
        "model",
        "prompts",
        "expectations",
        "device",
        "dtype",
        "revision",
        "device_map",
        "max_memory",
        "offload_folder",
        "snapshot_tolerance",
        "bos",
        "texts",
        "random_tokens",
        "pairs",
        "pair_template",
        "generate",
    }
    | {name for cls in EXPECTATION_TYPES.values() for name in cls.model_fields}
    | {name for cls in (spec_module.RandomTokens, spec_module.ToleranceSpec) for name in cls.model_fields}
)
HOSTILE_VALUES = [
    ".nan",
    ".inf",
    "-.inf",
    "1e23",
    "1e999",
    "-1",
    "0",
    "1" + "0" * 30,
    "9" * 5000,
    "[]",
    "{}",
    "[2, 2]",
    "[1, 0]",
    "[-1, -2]",
    "~",
    "null",
    "true",
    "''",
    '"x"',
    "*a",
    "&a x",
    "!!python/object/apply:os.system [x]",
    "!!binary aGk=",
    "!!set {a}",
    "!!int x",
    "!!timestamp x",
    "L0H0",
    "L99H99",
    "[L0H0, L0H0]",
    "cuda",
    "meta",
    "gpu0",
    "- x",
    "{a: *b}",
    "<<: {}",
    "0x1F",
    "010",
    "1:30",
    "prepend",
    "none",
    "previous_token",
    "head_score",
    "snapshot",
    "{length: 1e9}",
    "{length: 1000000000, repeats: 1000}",
    "{rtol: .nan}",
    "[" * 40 + "]" * 40,
]
VALUES = st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(YAML_CHARS, max_size=12), st.integers().map(str))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(KEYS),
)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
    return st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5))


data = st.recursive(scalars, _nested, max_leaves=30)


@st.composite
def schema_shaped(draw: st.DrawFn) -> str:
    """A spec with the schema's own keys and properties, filled with hostile values."""
    expectation_keys = st.sampled_from(KEYS)
    expectations = [
        {
            "property": draw(st.sampled_from([*EXPECTATION_TYPES, "nope"])),
            "name": draw(st.text("abc_", min_size=1, max_size=4)),
        }
        | draw(st.dictionaries(expectation_keys, st.one_of(scalars, data), max_size=6))
        for _ in range(draw(st.integers(0, 3)))
    ]
    document: dict[str, Any] = {
        "model": draw(st.one_of(st.just("tiny-neo"), scalars)),
        "prompts": draw(
            st.one_of(
                st.just({"p": {"bos": "prepend", "random_tokens": {"length": 4}}}),
                st.dictionaries(st.text("pq", min_size=1, max_size=2), data, max_size=3),
            )
        ),
        "expectations": expectations,
    } | draw(st.dictionaries(st.sampled_from(KEYS), st.one_of(scalars, data), max_size=3))
    return yaml.safe_dump(document, default_flow_style=draw(st.sampled_from([None, True, False])), allow_unicode=True)


def _line(draw: st.DrawFn, lines: list[str]) -> int:
    return draw(st.integers(0, max(0, len(lines) - 1)))


def _delete_line(draw: st.DrawFn, lines: list[str]) -> list[str]:
    i = _line(draw, lines)
    return lines[:i] + lines[i + 1 :]


def _duplicate_line(draw: st.DrawFn, lines: list[str]) -> list[str]:
    i, j = _line(draw, lines), _line(draw, lines)
    return [*lines[:j], lines[i] if lines else "", *lines[j:]]


def _swap_lines(draw: st.DrawFn, lines: list[str]) -> list[str]:
    i, j = _line(draw, lines), _line(draw, lines)
    out = list(lines)
    if out:
        out[i], out[j] = out[j], out[i]
    return out


def _edit_line(change: Callable[[st.DrawFn, str], str]) -> Callable[[st.DrawFn, list[str]], list[str]]:
    def mutate(draw: st.DrawFn, lines: list[str]) -> list[str]:
        candidates = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]
        if not candidates:
            return lines
        i = draw(st.sampled_from(candidates))
        return [*lines[:i], change(draw, lines[i]), *lines[i + 1 :]]

    return mutate


def _rename_key(draw: st.DrawFn, line: str) -> str:
    key, _, rest = line.partition(":")
    indent = key[: len(key) - len(key.lstrip(" -"))]
    new = draw(st.one_of(st.sampled_from(KEYS), st.text("abcdeflmnorstu_", min_size=1, max_size=10)))
    return f"{indent}{new}:{rest}"


def _replace_value(draw: st.DrawFn, line: str) -> str:
    key, _, _ = line.partition(":")
    return f"{key}: {draw(VALUES)}\n"


def _delete_token(draw: st.DrawFn, line: str) -> str:
    import re

    tokens = re.split(r"(\s+|[:,\[\]{}])", line)
    if len(tokens) < 2:
        return line
    i = draw(st.integers(0, len(tokens) - 1))
    return "".join(tokens[:i] + tokens[i + 1 :])


def _insert_text(draw: st.DrawFn, line: str) -> str:
    at = draw(st.integers(0, len(line)))
    return line[:at] + draw(st.text(YAML_CHARS, min_size=1, max_size=6)) + line[at:]


def _reindent(draw: st.DrawFn, line: str) -> str:
    stripped = line.lstrip(" ")
    return " " * draw(st.integers(0, 12)) + stripped


def _swap_values(draw: st.DrawFn, lines: list[str]) -> list[str]:
    keyed = [i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")]
    if len(keyed) < 2:
        return lines
    i, j = draw(st.sampled_from(keyed)), draw(st.sampled_from(keyed))
    out = list(lines)
    (ki, _, vi), (kj, _, vj) = out[i].partition(": "), out[j].partition(": ")
    out[i], out[j] = f"{ki}: {vj}", f"{kj}: {vi}"
    return out


def _truncate(draw: st.DrawFn, lines: list[str]) -> list[str]:
    text = "".join(lines)
    return [text[: draw(st.integers(0, len(text)))]]


MUTATIONS = [
    _delete_line,
    _duplicate_line,
    _swap_lines,
    _swap_values,
    _truncate,
    _edit_line(_rename_key),
    _edit_line(_replace_value),
    _edit_line(_replace_value),
    _edit_line(_delete_token),
    _edit_line(_insert_text),
    _edit_line(_reindent),
]


@st.composite
def mutated_shipped(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SHIPPED)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        lines = draw(st.sampled_from(MUTATIONS))(draw, lines)
    return "".join(lines)


# ---- the tests ----


def test_shipped_specs_are_valid() -> None:
    """The mutation seeds themselves validate (else mutations test nothing interesting)."""
    assert SHIPPED
    for text in SHIPPED:
        # in the shipped folder: files a spec names (stored directions) are relative to it
        assert parse_spec(text, str(REPO / "model_specs" / "shipped.yaml")).problems() == []


@FUZZ
@given(mutated_shipped())
def test_mutated_shipped_specs(text: str) -> None:
    check(text)


@FUZZ
@given(schema_shaped())
def test_schema_shaped_specs(text: str) -> None:
    check(text)


@FUZZ
@given(st.one_of(st.text(YAML_CHARS, max_size=300), st.text(max_size=100)))
def test_random_yaml_text(text: str) -> None:
    check(text)


@FUZZ
@given(data)
def test_random_yaml_documents(document: Any) -> None:
    check(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b""]).flatmap(
            lambda bom: st.binary(max_size=100).map(lambda rest: bom + rest)
        ),
    )
)
def test_random_bytes(raw: bytes) -> None:
    try:
        text = decode_spec_bytes(raw, "fuzz.yaml")
    except InterpAssertError as exc:
        assert "\n" not in str(exc)
        return
    check(text)


@pytest.fixture(scope="module", autouse=True)
def _report_rate() -> Any:
    yield
    if STATS["inputs"]:
        rate = STATS["inputs"] / max(STATS["seconds"], 1e-9)
        print(f"\nfuzz: {STATS['inputs']} inputs, {STATS['seconds']:.1f} s parsing, {rate:.0f} inputs/s")


def test_models_have_no_unvisited_fields() -> None:
    """KEYS covers every field the schema has, so renames and schema-shaped specs reach them all."""
    classes: list[type[BaseModel]] = [spec_module.SpecHeader, spec_module.PromptSet, *EXPECTATION_TYPES.values()]
    for cls in classes:
        missing = {field.alias or name for name, field in cls.model_fields.items()} - set(KEYS) - {"$schema"}
        assert not missing, (cls.__name__, missing)


# ---- the other things a user types: ini values and --interp-max-memory sizes ----


@FUZZ
@given(st.text(max_size=60))
def test_ini_booleans(text: str) -> None:
    """Any ini boolean is true, false, or one usage error line naming the file and the key."""
    from interp_assert.pytest_plugin.options import ini_bool

    try:
        value = ini_bool(text, "interp_debug", "/x/pytest.ini")
    except pytest.UsageError as exc:
        message = str(exc)
        assert message.startswith("/x/pytest.ini: ini key interp_debug = ") and "write true or false" in message
        assert "\n" not in message  # the value is shown as repr() writes it
        return
    assert isinstance(value, bool)


SIZES = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=0, max_value=10**400).map(str),
    st.builds(
        lambda number, unit: f"{number}{unit}",
        st.one_of(st.integers(min_value=0, max_value=10**60), st.floats(allow_nan=True, allow_infinity=True)),
        st.sampled_from(["", "B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB", "gb", " GB"]),
    ),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["cpu", "0", "cuda:1", "disk", "gpu", ""]), SIZES), max_size=3))
def test_max_memory_sizes(pairs: list[tuple[str, str]]) -> None:
    """``--interp-max-memory`` gives whole byte counts a machine could hold, or a ValueError of one
    line that says what would be valid; never an OverflowError."""
    from interp_assert.measure.loading.placement import MAX_SIZE, parse_max_memory_flag

    text = ",".join(f"{device}={size}" for device, size in pairs)
    try:
        parsed = parse_max_memory_flag(text)
    except ValueError as exc:
        assert "give" in str(exc) or "use" in str(exc), str(exc)
        return
    assert parsed and all(isinstance(size, int) and 1 <= size <= MAX_SIZE for _, size in parsed)
