"""The hostile-input catalogue: bad inputs a new user (or a bad day) produces, as data.

Each :class:`Case` says what files to write, what to run and what must come back: the exit
status and a regular expression that one line of the output must match. The line must name
where the problem is (``file:line:col``) or the offending value, and say what would be valid,
so every ``expect`` below carries both. ``tests/test_hostile.py`` runs every case and also
checks that no traceback is printed and that no file changed except the case's ``outputs``.

To add a case, append to :data:`CASES` (or to one of the per-category lists). ``argv`` starts
with ``pytest`` (run in-process with pytester, or in a subprocess with ``subprocess=True``
where a regression could hang) or ``interp-assert`` (the CLI, in-process).
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN = Path(__file__).resolve().parent.parent / "interp_assert" / "builtin_models" / "tiny-neo"
SPEC = "model_specs/spec.yaml"
AT = r"model_specs/spec\.yaml"  # how pytest runs name the spec file

# exit statuses
OK, FAILED, INTERRUPTED, USAGE = 0, 1, 2, 4  # pytest's
CLI_ERROR = 2  # interp-assert's for every user error
CLI_INFRA = 69  # interp-assert's for a model that cannot load, a missing device (interp_assert/exit_codes.py)

Setup = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    category: str  # yaml, schema, models, weights, cli, snapshots, filesystem, devices
    argv: tuple[str, ...]
    exit: int
    expect: str  # regex one output line must match: where or what, and what would be valid
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Setup | None = None  # for what files cannot say: symlinks, copies, permissions
    outputs: tuple[str, ...] = ()  # paths (relative, prefixes) the run may create or change
    subprocess: bool = False  # run pytest in a child process with a timeout (hang risks)
    seconds: float = 60.0  # the run must end within this
    prepare: tuple[str, ...] = ()  # a pytest run (in-process) before ``setup``, e.g. to record snapshots
    matches: int | None = None  # how many output lines must match ``expect`` (None: at least one)
    needs: str | None = None  # a condition under which the case means something (see test_hostile)
    lead: bool = False  # part of the snapshot/CLI work: xfail(strict) while it is not done
    env: dict[str, str] = field(default_factory=dict)  # environment of the run; "{root}" is the case's folder


# ---- spec text builders ----

PROMPTS = """\
prompts:
  rep:
    bos: prepend
    random_tokens: {length: 8, repeats: 2, count: 2, seed: 1}
"""
TREND = {"property": "hidden_norm_trend", "layers": "[0, 2]", "direction": "increasing"}


def spec(*expectations: dict[str, str], model: str = "tiny-neo", header: str = "", prompts: str = PROMPTS) -> str:
    """A spec whose first expectation starts on line 7 (with no ``header`` lines): ``name`` on
    line 7, ``property`` 8, ``prompts`` 9, then the other keys in order, each key at column 5 and
    its value at column ``7 + len(key)``."""
    lines = [f"model: {model}", *([header] if header else []), prompts.rstrip("\n"), "expectations:"]
    for index, fields in enumerate(expectations):
        fields = dict(fields)
        name = fields.pop("name", f"e{index}")
        prop = fields.pop("property")
        prompt_set = fields.pop("prompts", "rep")
        lines.append(f"  - name: {name}")
        lines.append(f"    property: {prop}")
        if prompt_set:  # "": none (weight properties read no prompts)
            lines.append(f"    prompts: {prompt_set}")
        lines += [f"    {key}: {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def good() -> dict[str, str]:
    return dict(TREND, name="norms_grow")


def at(line: int, column: int) -> str:
    return rf"{AT}:{line}:{column}: "


def schema_case(id: str, fields: dict[str, str], expect: str, **extra: object) -> Case:
    """One bad expectation beside a good one: the bad one fails alone (exit 1)."""
    return Case(
        id,
        "schema",
        ("pytest", "model_specs"),
        FAILED,
        expect,
        {SPEC: spec(fields, good())},
        **extra,  # type: ignore[arg-type]
    )


def yaml_case(id: str, text: str | bytes, expect: str, **extra: object) -> Case:
    """A file that is not a spec at all: a collection error (exit 2)."""
    return Case(id, "yaml", ("pytest", "model_specs"), INTERRUPTED, expect, {SPEC: text}, **extra)  # type: ignore[arg-type]


# ---- filesystem helpers for setups ----


def copy_model(name: str = "model") -> Callable[[Path], Path]:
    def copy(root: Path) -> Path:
        target = root / name
        shutil.copytree(BUILTIN, target)
        return target

    return copy


def weights_broken(change: Callable[[bytes], bytes], file: str = "model.safetensors") -> Setup:
    def setup(root: Path) -> None:
        folder = copy_model()(root)
        path = folder / file
        path.write_bytes(change(path.read_bytes()))

    return setup


def symlink(link: str, target: str) -> Setup:
    def setup(root: Path) -> None:
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / link)

    return setup


def chain(*setups: Setup) -> Setup:
    def setup(root: Path) -> None:
        for step in setups:
            step(root)

    return setup


def gguf_bytes(*, tensors: int = 0, kvs: int = 0, tail: bytes = b"") -> bytes:
    """A GGUF v3 header with the given counts, then ``tail`` (a truncated key, say)."""
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs) + tail


BILLION_LAUGHS = (
    'x0: &x0 "lol"\n'
    + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 10))
    + "model: tiny-neo\n"
)


# ---- yaml: files that are not a spec at all (collection errors, exit 2) ----

YAML: list[Case] = [
    yaml_case(
        "billion-laughs",
        BILLION_LAUGHS,
        at(1, 5) + r"anchor &x0 is not allowed.*write each value out",
        subprocess=True,
        seconds=30,
    ),
    yaml_case(
        "self-alias", "model: tiny-neo\nx: &a [*a]\n", at(2, 4) + r"anchor &a is not allowed.*write each value out"
    ),
    yaml_case("undefined-alias", "model: *nope\n", at(1, 8) + r"alias \*nope is not allowed.*write the value out"),
    yaml_case(
        "merge-key",
        "model: tiny-neo\nprompts:\n  <<: {rep: 1}\n",
        at(3, 3) + r"merge keys \(<<\) are not allowed.*write each key out",
    ),
    yaml_case("merge-key-anchor", "p: &p {bos: none}\nq:\n  <<: *p\n", at(1, 4) + r"anchor &p is not allowed"),
    yaml_case(
        "not-utf8",
        b"model: tiny-neo\n# caf\xe9\n",
        at(2, 6) + r"byte 0xe9 is not valid UTF-8; spec files must be UTF-8",
    ),
    yaml_case(
        "utf16-bom", "model: tiny-neo\n".encode("utf-16"), at(1, 1) + r"the file is UTF-16 encoded.*must be UTF-8"
    ),
    yaml_case(
        "utf16-no-bom",
        "model: tiny-neo\n".encode("utf-16-le"),
        at(1, 2) + r"character U\+0000 is not allowed.*UTF-16\?.*must be UTF-8",
    ),
    yaml_case(
        "utf32-bom", "model: tiny-neo\n".encode("utf-32"), at(1, 1) + r"the file is UTF-32 encoded.*must be UTF-8"
    ),
    yaml_case(
        "control-char", "model: tiny-neo\x07\n", at(1, 16) + r"character U\+0007 is not allowed in YAML; remove it"
    ),
    yaml_case(
        "deep-nesting",
        "model: " + "[" * 5000 + "]" * 5000 + "\n",
        at(1, 39) + r"nested more than 32 levels deep; a spec nests at most 5",
    ),
    yaml_case(
        "huge-file",
        "model: tiny-neo\n" + "#" * (2 << 20) + "\n",
        at(1, 1) + r"the file is larger than 1 MiB, the limit for a spec",
    ),
    yaml_case("many-values", "model: [" + "1, " * 30000 + "1]\n", AT + r":1:\d+: more than 20000 values in one file"),
    yaml_case(
        "tab-indent",
        "model: tiny-neo\nprompts:\n\trep: {}\n",
        at(3, 1)
        + r"malformed YAML: .*found character .*that cannot start any token; indent YAML with spaces, never tabs",
    ),
    yaml_case("two-documents", "model: a\n---\nmodel: b\n", at(2, 1) + r"malformed YAML: expected a single document"),
    yaml_case(
        "python-tag",
        "model: !!python/object/apply:os.system [echo hi]\n",
        at(1, 8) + r"tag .*python/object/apply:os\.system' is not allowed; specs are plain YAML",
    ),
    yaml_case(
        "python-name",
        "model: !!python/name:os.system x\n",
        at(1, 8) + r"cannot read value: could not determine a constructor.*python/name",
    ),
    yaml_case(
        "set-tag",
        "model: !!set {a, b}\n",
        at(1, 8) + r"tag 'tag:yaml\.org,2002:set' is not allowed; specs are plain YAML",
    ),
    yaml_case(
        "duplicate-key",
        "model: a\nmodel: b\n",
        at(2, 1) + r"duplicate key 'model' \(first given on line 1\); each key may appear once",
    ),
    yaml_case(
        "bad-int-tag", "model: tiny-neo\nx: !!int abc\n", at(2, 4) + r"cannot read 'abc' as int: not a valid int value"
    ),
    yaml_case(
        "huge-int",
        "model: tiny-neo\nx: " + "9" * 5000 + "\n",
        at(2, 4) + r"cannot read '9{40}'\.\.\. \(5000 characters\) as int",
    ),
    yaml_case("empty-file", "", at(1, 1) + r"a spec must be a mapping with 'model', 'prompts' and 'expectations'"),
    yaml_case(
        "list-document",
        "- model: tiny-neo\n",
        at(1, 1) + r"a spec must be a mapping with 'model', 'prompts' and 'expectations'",
    ),
    yaml_case(
        "unclosed-quote",
        'model: "tiny-neo\n',
        at(2, 1) + r"malformed YAML: while scanning a quoted scalar found unexpected end",
    ),
    yaml_case("complex-key", "? [a, b]\n: 1\n", at(1, 3) + r"a mapping key must be a plain value"),
    Case("utf8-bom-accepted", "yaml", ("pytest", "model_specs"), OK, r"1 passed", {SPEC: "\ufeff" + spec(good())}),
]

# ---- schema: a spec that parses, with a bad expectation (it fails alone: exit 1) ----

HNR = {"property": "hidden_norm_ratio"}
HS = {"property": "head_score", "head": "L0H0", "role": "previous_token"}
TOP = {"property": "top_heads", "role": "previous_token"}
KCOMP = {"property": "composition", "prompts": "", "composition": "K"}

SCHEMA: list[Case] = [
    schema_case(
        "nan-at-least",
        {**HNR, "at_least": ".nan"},
        at(10, 15) + r"at_least: Input should be a finite number \(got nan\)",
    ),
    schema_case(
        "inf-at-most", {**HNR, "at_most": ".inf"}, at(10, 14) + r"at_most: Input should be a finite number \(got inf\)"
    ),
    schema_case(
        "neg-inf-at-least",
        {**HS, "at_least": "-.inf"},
        at(12, 15) + r"at_least: Input should be a finite number \(got -inf\)",
    ),
    schema_case(
        "nan-huge-exponent",
        {**HNR, "at_least": "1e999"},
        at(10, 15) + r"at_least: Input should be a finite number \(got inf\)",
    ),
    schema_case(
        "nan-tolerance",
        {**TREND, "tolerance": ".nan"},
        at(12, 16) + r"tolerance: Input should be a finite number \(got nan\)",
    ),
    schema_case(
        "nan-label-threshold",
        {
            "property": "role_fraction",
            "label": "previous_token",
            "layers": "[0, 1]",
            "at_least": "0",
            "label_threshold": ".nan",
        },
        at(13, 22) + r"label_threshold: Input should be a finite number \(got nan\)",
    ),
    schema_case(
        "inf-snapshot-rtol",
        {"property": "snapshot", "tolerance": "{role_scores: {rtol: .inf}}"},
        AT + r":10:\d+: tolerance\.role_scores\.rtol: Input should be a finite number \(got inf\)",
    ),
    Case(
        "nan-header-atol",
        "schema",
        ("pytest", "model_specs"),
        FAILED,
        AT + r":2:\d+: snapshot_tolerance\.role_scores\.atol: Input should be a finite number \(got nan\)",
        {SPEC: spec(good(), header="snapshot_tolerance: {role_scores: {atol: .nan}}")},
    ),
    schema_case(
        "trend-one-point",
        {**TREND, "layers": "[2, 2]"},
        at(10, 13) + r"layers: \[2, 2\] is a single index: a trend needs at least one step",
    ),
    schema_case(
        "trend-one-point-resolved",
        {**TREND, "layers": "[2, -1]"},
        r"hidden-state range \[2, -1\] is the single index 2 on this model: "
        r"a trend needs at least one step \(indices run 0 to 2\)",
    ),
    schema_case(
        "range-reversed",
        {"property": "attention_stat", "stat": "max", "layers": "[1, 0]", "at_most": "1"},
        at(11, 13) + r"layers: range \[1, 0\] is empty: the first index must not come after the last",
    ),
    schema_case(
        "range-reversed-negative",
        {"property": "attention_stat", "stat": "max", "layers": "[-1, -2]", "at_most": "1"},
        at(11, 13) + r"layers: range \[-1, -2\] is empty: the first index must not come after the last",
    ),
    schema_case(
        "range-reversed-resolved",
        {"property": "attention_stat", "stat": "max", "layers": "[1, -2]", "at_most": "1"},
        r"layer range \[1, -2\] is empty: the first must not come after the last",
    ),
    schema_case(
        "range-three-items", {**TREND, "layers": "[0, 1, 2]"}, at(10, 13) + r"layers: List should have at most 2 items"
    ),
    schema_case(
        "k-float",
        {**TOP, "k": "1e23", "include": "[L0H0]"},
        at(11, 8) + r"k: Input should be a valid integer \(got 1e\+23\)",
    ),
    schema_case(
        "k-huge-int",
        {**TOP, "k": "1" + "0" * 25, "include": "[L0H0]"},
        r"k is 10{25} but this model has only 8 heads \(2 layers x 4 heads\); k must be between 1 and 8",
    ),
    schema_case(
        "k-over-heads",
        {**TOP, "k": "9", "include": "[L0H0]"},
        r"k is 9 but this model has only 8 heads .*k must be between 1 and 8",
    ),
    schema_case(
        "k-zero", {**TOP, "k": "0", "include": "[L0H0]"}, at(11, 8) + r"k: Input should be greater than or equal to 1"
    ),
    schema_case(
        "equals-duplicate",
        {**TOP, "k": "2", "equals": "[L0H0, L0H0]"},
        at(12, 13) + r"equals: L0H0 is listed more than once; list each head once",
    ),
    schema_case(
        "include-duplicate",
        {**TOP, "k": "3", "include": "[L1H1, L0H0, L1H1]"},
        at(12, 14) + r"include: L1H1 is listed more than once; list each head once",
    ),
    schema_case(
        "head-out-of-range",
        {**HS, "head": "L9H0", "at_least": "0.5"},
        r"head L9H0 is out of range: this model has layers 0-1 and heads 0-3 \(L0H0 to L1H3\)",
    ),
    schema_case(
        "head-bad-form",
        {**HS, "head": "l0h0", "at_least": "0.5"},
        at(10, 11) + r"head: head 'l0h0' is not of the form L<layer>H<head>",
    ),
    schema_case(
        "layer-huge",
        {"property": "dominant_layer", "role": "previous_token", "layer": "9" * 30},
        r"layer 9{30} is out of range: this model has 2 \(-2 to 1\)",
    ),
    schema_case(
        "ratio-index-out-of-range",
        {**HNR, "numerator": "7", "at_least": "1"},
        r"hidden-state index 7 is out of range: this model has 3 \(-3 to 2\)",
    ),
    schema_case(
        "unknown-property",
        {"property": "head_scor"},
        at(8, 15) + r"unknown property 'head_scor'; valid properties: head_score, top_heads",
    ),
    schema_case(
        "unknown-key", {**HS, "at_leats": "0.5"}, at(12, 5) + r"unknown key 'at_leats'; valid keys here: .*at_least"
    ),
    schema_case(
        "bound-outside-unit",
        {**HS, "at_least": "1.5"},
        at(7, 5) + r"at_least: 1\.5 is outside \[0, 1\], the range of this score",
    ),
    schema_case("no-bound", {**HS}, at(7, 5) + r"give at least one bound: 'at_least' and/or 'at_most'"),
    schema_case(
        "bound-string",
        {**HS, "at_least": "high"},
        at(12, 15) + r"at_least: Input should be a valid number \(got 'high'\)",
    ),
    schema_case("name-with-space", {**TREND, "name": "'my check'"}, at(7, 11) + r"name: String should match pattern"),
    schema_case(
        "prompt-set-undefined",
        {**TREND, "prompts": "prose"},
        at(9, 14) + r"prompt set 'prose' is not defined; defined prompt sets: rep",
    ),
    schema_case(
        "generated-sequence-negative",
        {"property": "generated_text", "contains": "x", "sequence": "-1"},
        at(11, 15) + r"sequence: Input should be greater than or equal to 0",
    ),
    # ---- read from the weights: composition and ov_copying (no prompts) ----
    schema_case(
        "composition-receiver-not-later",
        {**KCOMP, "sender": "L1H0", "receiver": "L0H0", "at_least": "4"},
        r"receiver L0H0 is not in a later layer than sender L1H0: a head reads only what earlier layers wrote",
    ),
    schema_case(
        "composition-unknown-head",
        {**KCOMP, "sender": "L0H0", "receiver": "L1H9", "at_least": "4"},
        at(7, 5) + r"e0: head L1H9 is out of range: this model has layers 0-1 and heads 0-3 \(L0H0 to L1H3\)",
    ),
    schema_case(
        "composition-zero-null-draws",
        {**KCOMP, "sender": "L0H0", "receiver": "L1H0", "at_least": "4", "null_draws": "0"},
        r"null_draws must be between 10 and 100000; got 0",
    ),
    schema_case(
        "composition-absurd-null-draws",
        {**KCOMP, "sender": "L0H0", "receiver": "L1H0", "at_least": "4", "null_draws": "100000000"},
        r"null_draws must be between 10 and 100000; got 100000000",
    ),
    schema_case(
        "composition-with-prompts",
        {**KCOMP, "prompts": "rep", "sender": "L0H0", "receiver": "L1H0", "at_least": "4"},
        r"composition reads the weights only and takes no prompts; remove 'prompts: rep'",
    ),
    schema_case(
        "composition-top-k-without-include",
        {**KCOMP, "receiver": "L1H0", "k": "2"},
        r"with only a sender \(or only a receiver\), give 'k' and 'include: \[heads\]'",
    ),
    schema_case(
        "ov-copying-bound-outside",
        {"property": "ov_copying", "prompts": "", "head": "L1H0", "at_least": "2"},
        r"at_least: 2\.0 is outside \[-1, 1\], the range of a copying score",
    ),
    # ---- what heads do: ablation_effect, loss, snapshot parts ----
    schema_case(
        "ablation-head-out-of-range",
        {"property": "ablation_effect", "heads": "[L0H0, L5H1]", "at_least": "1"},
        r"head L5H1 is out of range: this model has layers 0-1 and heads 0-3 \(L0H0 to L1H3\)",
    ),
    schema_case(
        "ablation-mode-unknown",
        {"property": "ablation_effect", "heads": "[L0H0]", "mode": "resample", "at_least": "1"},
        at(11, 11) + r"mode: Input should be 'zero' or 'mean'",
    ),
    schema_case(
        "ablation-states-nothing",
        {"property": "ablation_effect", "heads": "[L0H0]"},
        r"state something to check: 'at_least' and/or 'at_most' \(nats\), or control\.at_least_times",
    ),
    schema_case(
        "ablation-position-zero",
        {"property": "ablation_effect", "heads": "[L0H0]", "positions": "[0, -1]", "at_least": "1"},
        r"positions \[0, -1\] include position 0, which has no next-token loss: start at 1",
    ),
    schema_case(
        "ablation-control-without-others",
        {"property": "ablation_effect", "heads": "[L1H0, L1H1, L1H2]", "control": "{samples: 2}", "at_least": "1"},
        r"no random control: layer 1 has 4 heads and 3 of them are ablated: too few others to draw a control of 3",
    ),
    schema_case(
        "ablation-control-zero-samples",
        {"property": "ablation_effect", "heads": "[L0H0]", "control": "{samples: 0}", "at_least": "1"},
        r"control\.samples: Input should be greater than or equal to 1",
    ),
    schema_case(
        "loss-positions-out-of-range",
        {"property": "loss", "positions": "[2, 40]", "at_most": "1"},
        r"positions \[2, 40\] are out of range for a prompt of 17 tokens \(-17 to 16\)",
    ),
    schema_case(
        "snapshot-covers-unknown-part",
        {"property": "snapshot", "covers": "[loss, losses]"},
        r"covers\.1: Input should be 'role_scores', 'role_labels', 'layer_stats', 'hidden_norms', 'loss'",
    ),
]


def prompt_case(id: str, random_tokens: str, expect: str, exit: int = FAILED) -> Case:
    text = spec(good(), prompts=f"prompts:\n  rep:\n    bos: prepend\n    random_tokens: {random_tokens}\n")
    return Case(id, "schema", ("pytest", "model_specs"), exit, expect, {SPEC: text})


SCHEMA += [
    prompt_case(
        "seed-float",
        "{length: 8, seed: 1e26}",
        at(5, 38) + r"prompts\.rep\.random_tokens\.seed: Input should be a valid integer \(got 1e\+26\)",
    ),
    prompt_case(
        "seed-huge",
        "{length: 8, seed: " + "9" * 26 + "}",
        at(5, 38) + r"prompts\.rep\.random_tokens\.seed: Input should be less than or equal to 9223372036854775807",
    ),
    prompt_case(
        "length-float",
        "{length: 1e9}",
        at(5, 29) + r"prompts\.rep\.random_tokens\.length: Input should be a valid integer \(got 1000000000\.0\)",
    ),
    prompt_case(
        "length-huge",
        "{length: 1000000000}",
        at(5, 29) + r"prompts\.rep\.random_tokens\.length: Input should be less than or equal to 1048576",
    ),
    prompt_case(
        "length-over-context",
        "{length: 1000}",
        r"prompt set 'rep': a prompt is 2001 tokens long but the model's context is 256 tokens; shorten it",
    ),
    prompt_case(
        "tokens-over-cap",
        "{length: 1048576, repeats: 2}",
        at(5, 20) + r"prompts\.rep\.random_tokens: length \* repeats = 2097152 tokens per sequence; at most 1048576",
    ),
    prompt_case(
        "repeats-one", "{length: 8, repeats: 1}", AT + r":5:\d+: .*repeats: Input should be greater than or equal to 2"
    ),
    prompt_case(
        "count-zero", "{length: 8, count: 0}", AT + r":5:\d+: .*count: Input should be greater than or equal to 1"
    ),
    prompt_case(
        "count-huge", "{length: 8, count: 100000}", AT + r":5:\d+: .*count: Input should be less than or equal to 256"
    ),
    prompt_case(
        "batch-over-cap",
        "{length: 8192, count: 200}",
        at(5, 20) + r"prompts\.rep\.random_tokens: count \* length \* repeats = 3276800 tokens; at most 1048576",
    ),
    Case(
        "generate-huge",
        "schema",
        ("pytest", "model_specs"),
        FAILED,
        AT + r":6:15: prompts\.rep\.generate: Input should be less than or equal to 4096",
        {SPEC: spec(good(), prompts=PROMPTS + "    generate: 99999999999\n")},
    ),
    Case(
        "empty-text",
        "schema",
        ("pytest", "model_specs"),
        FAILED,
        AT + r":5:\d+: prompts\.rep\.texts\.0: String should have at least 1 character",
        {SPEC: spec(good(), prompts='prompts:\n  rep:\n    bos: prepend\n    texts: [""]\n')},
    ),
]

# ---- model references: overrides and paths ----

MISSING_MODEL = r"a model folder holds config\.json and \*\.safetensors weights"
RUN = ("pytest", "model_specs")
TINY = {SPEC: spec(good())}


def model_case(
    id: str, model: str, expect: str, setup: Setup | None = None, *argv: str, exit: int = FAILED, lead: bool = False
) -> Case:
    return Case(id, "models", (*RUN, "-x", *argv), exit, expect, {SPEC: spec(good(), model=model)}, setup, lead=lead)


ADAPTER_CONFIG = '{"base_model_name_or_path": "some/base", "peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}'


MODELS: list[Case] = [
    Case(
        "override-typo",
        "models",
        (*RUN, "--interp-model", "tiny_neo=./x"),
        USAGE,
        r"--interp-model tiny_neo=\./x: no collected spec uses a model named 'tiny_neo'"
        r".*models the collected specs use: tiny-neo",
        TINY,
    ),
    Case(
        "override-twice",
        "models",
        (*RUN, "--interp-model", "tiny-neo=a", "--interp-model", "tiny-neo=b"),
        USAGE,
        r"--interp-model tiny-neo is given twice \('a' and 'b'\); a model can be replaced by one checkpoint per run",
        TINY,
    ),
    Case(
        "override-twice-no-spec",
        "models",
        ("pytest", "empty", "--interp-model", "m=a", "--interp-model", "m=b"),
        USAGE,
        r"--interp-model m is given twice",
        {"empty/README": "nothing to collect\n"},
    ),
    Case(
        "override-no-spec",
        "models",
        ("pytest", "empty", "--interp-model", "m=a"),
        USAGE,
        r"--interp-model m=a: no collected spec uses a model named 'm'.*use: none \(no spec file was collected\)",
        {"empty/README": "x\n"},
    ),
    Case(
        "override-no-equals",
        "models",
        (*RUN, "--interp-model", "tiny-neo"),
        USAGE,
        r"--interp-model 'tiny-neo': expected SPEC_MODEL=PATH_OR_ID",
        TINY,
    ),
    Case(
        "override-empty-target",
        "models",
        (*RUN, "--interp-model", "tiny-neo="),
        USAGE,
        r"--interp-model 'tiny-neo=': expected SPEC_MODEL=PATH_OR_ID",
        TINY,
    ),
    Case(
        "override-missing-path",
        "models",
        (*RUN, "-x", "--interp-model", "tiny-neo=./no-such"),
        FAILED,
        r"model '\./no-such': no such file or folder \(.*no-such\); " + MISSING_MODEL,
        TINY,
    ),
    model_case(
        "model-etc", "../../../../../../../../etc", r"/etc is not a model folder \(no config\.json\); " + MISSING_MODEL
    ),
    model_case(
        "model-empty-folder",
        "../empty",
        r"empty is not a model folder \(no config\.json\); " + MISSING_MODEL,
        lambda root: (root / "empty").mkdir(),
    ),
    model_case("model-missing-path", "./no-such", r"model '\./no-such': no such file or folder .*" + MISSING_MODEL),
    model_case(
        "model-hub-offline",
        "someorg/some-model",
        r"model 'someorg/some-model' is not a known alias \(smollm2-135m-instruct, tiny-neo\)"
        r".*cannot be downloaded offline",
    ),
    model_case(
        "model-is-a-file",
        "../notes.txt",
        r"notes\.txt is neither a directory nor a \.gguf file",
        lambda root: (root / "notes.txt").write_text("hi\n"),
    ),
    model_case(
        "model-config-only",
        "../cfg",
        r"cfg has no weights \(no \*\.safetensors\); " + MISSING_MODEL,
        lambda root: ((root / "cfg").mkdir(), shutil.copy(BUILTIN / "config.json", root / "cfg"))[0],
    ),
    model_case(
        "model-pickle-only",
        "../pickled",
        r"has only pickled weights \(pytorch_model\.bin\).*allow them with --interp-allow-pickle",
        lambda root: (
            (root / "pickled").mkdir(),
            shutil.copy(BUILTIN / "config.json", root / "pickled"),
            (root / "pickled" / "pytorch_model.bin").write_bytes(b"x"),
        )[0],
    ),
    model_case(
        "adapter-base-dot",
        "../adapter",
        r"adapter .*adapter names '\.' as its base, which is the adapter folder itself",
        lambda root: (
            (root / "adapter").mkdir(),
            (root / "adapter" / "adapter_config.json").write_text(
                '{"base_model_name_or_path": ".", "peft_type": "LORA"}'
            ),
        )[0],
    ),
    Case(
        "override-adapter-base-typo",
        "models",
        (*RUN, "--interp-model", "other/base=tiny-neo"),
        USAGE,
        r"--interp-model other/base=tiny-neo: no collected spec uses a model named 'other/base'"
        r".*models the collected specs use: \.\./adapter, some/base",
        {SPEC: spec(good(), model="../adapter"), "adapter/adapter_config.json": ADAPTER_CONFIG},
    ),
    model_case(
        "adapter-no-weights",
        "../adapter",
        r"adapter .*adapter.*(no adapter weights|adapter_model\.safetensors)",
        lambda root: (
            (root / "adapter").mkdir(),
            (root / "adapter" / "adapter_config.json").write_text(ADAPTER_CONFIG),
        )[0],
        "--interp-model",
        "some/base=tiny-neo",
    ),
    Case(
        "model-empty-string",
        "models",
        RUN,
        FAILED,
        at(1, 8) + r"model: String should have at least 1 character",
        {SPEC: spec(good(), model="''")},
    ),
    Case(
        "model-number",
        "models",
        RUN,
        FAILED,
        at(1, 8) + r"model: Input should be a valid string \(got 42\)",
        {SPEC: spec(good(), model="42")},
    ),
    Case(
        "load-error-said-once",
        "models",
        (*RUN, "-x", "--interp-model", "tiny-neo=./gone"),
        FAILED,
        r"model not available: model '\./gone': no such file or folder",
        TINY,
        matches=1,
    ),
]

# ---- weights files: a model folder (a copy of tiny-neo) with a broken file ----

CORRUPT = r"weights file .*model/model\.safetensors is corrupt or truncated \(.*\); copy or save it again"


def weights_case(id: str, setup: Setup, expect: str, *argv: str, exit: int = FAILED, model: str = "../model") -> Case:
    return Case(id, "weights", (*RUN, "-x", "-rs", *argv), exit, expect, {SPEC: spec(good(), model=model)}, setup)


WEIGHTS: list[Case] = [
    weights_case("safetensors-truncated", weights_broken(lambda b: b[: len(b) // 2]), CORRUPT),
    weights_case("safetensors-huge-header", weights_broken(lambda b: b"\xff" * 7 + b"\x7f" + b[8:100]), CORRUPT),
    weights_case("safetensors-empty", weights_broken(lambda b: b""), CORRUPT),
    weights_case("safetensors-garbage", weights_broken(lambda b: os.urandom(4096)), CORRUPT),
    weights_case(
        "safetensors-bad-json", weights_broken(lambda b: struct.pack("<Q", 8) + b"{nojson}" + b[16:]), CORRUPT
    ),
    weights_case(
        "truncated-skip",
        weights_broken(lambda b: b[: len(b) // 2]),
        r"SKIPPED .*model not available: .*model\.safetensors is corrupt or truncated",
        "--interp-missing=skip",
        exit=OK,
    ),
    weights_case(
        "config-bad-json",
        weights_broken(lambda b: b"{not json", "config.json"),
        r"model '.*model' at .*model could not be loaded: .*not a valid JSON file",
    ),
    weights_case(
        "config-unknown-type",
        weights_broken(lambda b: b'{"model_type": "no-such-arch"}', "config.json"),
        r"model '.*model' at .*model could not be loaded: "
        r".*model type `no-such-arch` but Transformers does not recognize",
    ),
    weights_case(
        "gguf-header-only",
        lambda root: (root / "only.gguf").write_bytes(gguf_bytes()),
        r"could not read GGUF file .*only\.gguf: .*; is it a complete \.gguf file\?",
        model="../only.gguf",
    ),
    weights_case(
        "gguf-truncated-key",
        lambda root: (root / "cut.gguf").write_bytes(gguf_bytes(kvs=5, tail=struct.pack("<Q", 1000) + b"gen")),
        r"could not read GGUF file .*cut\.gguf: .*; is it a complete \.gguf file\?",
        model="../cut.gguf",
    ),
    weights_case(
        "gguf-junk",
        lambda root: (root / "junk.gguf").write_bytes(b"junk" * 10),
        r"could not read GGUF file .*junk\.gguf: .*not a GGUF file.*; is it a complete \.gguf file\?",
        model="../junk.gguf",
    ),
    weights_case(
        "gguf-empty",
        lambda root: (root / "empty.gguf").write_bytes(b""),
        r"could not read GGUF file .*empty\.gguf: .*; is it a complete \.gguf file\?",
        model="../empty.gguf",
    ),
    weights_case(
        "gguf-skip",
        lambda root: (root / "only.gguf").write_bytes(gguf_bytes()),
        r"SKIPPED .*model not available: could not read GGUF file .*only\.gguf",
        "--interp-missing=skip",
        exit=OK,
        model="../only.gguf",
    ),
]

# ---- CLI flags: pytest's options and the interp-assert command ----

CLI: list[Case] = [
    Case(
        "missing-choice",
        "cli",
        (*RUN, "--interp-missing=maybe"),
        USAGE,
        r"argument --interp-missing: invalid choice: 'maybe' \(choose from 'error', 'skip'\)",
        TINY,
    ),
    Case(
        "dtype-choice",
        "cli",
        (*RUN, "--interp-dtype=float64"),
        USAGE,
        r"argument --interp-dtype: invalid choice: 'float64' \(choose from 'float32', 'float16', 'bfloat16'\)",
        TINY,
    ),
    Case(
        "cli-unknown-command",
        "cli",
        ("interp-assert", "frobnicate"),
        CLI_ERROR,
        r"argument COMMAND: invalid choice: 'frobnicate' \(choose from 'discover', 'report', 'audit'",
    ),
    Case(
        "cli-threshold",
        "cli",
        ("interp-assert", "discover", "tiny-neo", "-o", "out.yaml", "--threshold", "2"),
        CLI_ERROR,
        r"argument --threshold: 2 is outside \(0, 1\]",
    ),
    Case(
        "cli-max-heads",
        "cli",
        ("interp-assert", "discover", "tiny-neo", "-o", "out.yaml", "--max-heads", "0"),
        CLI_ERROR,
        r"argument --max-heads: 0 is not at least 1",
    ),
    Case(
        "cli-discover-exists",
        "cli",
        ("interp-assert", "discover", "tiny-neo", "-o", "out.yaml"),
        CLI_ERROR,
        r"interp-assert: error: out\.yaml exists; pass --force to overwrite it",
        {"out.yaml": "mine\n"},
    ),
    Case(
        "cli-discover-empty-folder",
        "cli",
        ("interp-assert", "discover", "./empty", "-o", "out.yaml"),
        CLI_INFRA,
        r"interp-assert: error: model '\./empty': .*empty is not a model folder \(no config\.json\); " + MISSING_MODEL,
        setup=lambda root: (root / "empty").mkdir(),
    ),
    Case(
        "cli-report-no-spec",
        "cli",
        ("interp-assert", "report", "nope.yaml", "-o", "out"),
        CLI_ERROR,
        r"interp-assert: error: nope\.yaml: no such spec file",
    ),
    Case(
        "cli-report-alias-bomb",
        "cli",
        ("interp-assert", "report", SPEC, "-o", "out"),
        CLI_ERROR,
        r"interp-assert: error: model_specs/spec\.yaml:1:5: anchor &x0 is not allowed",
        {SPEC: BILLION_LAUGHS},
        outputs=("out",),
    ),
    Case(
        "cli-audit-not-utf8",
        "cli",
        ("interp-assert", "audit", SPEC, "--checkpoint", "tiny-neo"),
        CLI_ERROR,
        r"interp-assert: error: model_specs/spec\.yaml:1:8: byte 0xff is not valid UTF-8",
        {SPEC: b"model: \xff\n"},
    ),
    Case(
        "cli-audit-checkpoint-etc",
        "cli",
        ("interp-assert", "audit", SPEC, "--checkpoint", "/etc"),
        CLI_INFRA,
        r"interp-assert: error: .*/etc is not a model folder \(no config\.json\); " + MISSING_MODEL,
        TINY,
    ),
    Case(
        "cli-report-device-meta",
        "cli",
        ("interp-assert", "report", SPEC, "-o", "out", "--device", "meta"),
        CLI_ERROR,
        r"interp-assert: error: model .*device 'meta' is not valid "
        r"\(a meta tensor holds no weights.*use cpu, cuda, cuda:N",
        TINY,
        outputs=("out",),
    ),
    Case(
        "cli-report-truncated",
        "cli",
        ("interp-assert", "report", SPEC, "-o", "out"),
        CLI_INFRA,
        r"interp-assert: error: .*" + CORRUPT,
        {SPEC: spec(good(), model="../model")},
        weights_broken(lambda b: b[:100]),
        outputs=("out",),
    ),
]

# ---- snapshot files (the snapshot work; cases the lead may extend) ----

SNAPSHOT_SPEC = spec(good(), {"property": "snapshot", "name": "fingerprint"})
AMBR = "model_specs/__snapshots__/spec.ambr"


RECORD = ("pytest", "model_specs", "--snapshot-update")  # the ``prepare`` run that writes the .ambr


SNAPSHOTS: list[Case] = [
    Case(
        "mistyped-name-update",
        "snapshots",
        (*RUN, "--snapshot-update"),
        FAILED,
        r"spec\.ambr: snapshot\(s\) fingerprint match no expectation, but .*spec\.yaml has invalid expectations; kept",
        {SPEC: SNAPSHOT_SPEC},
        lambda root: (root / SPEC).write_text(SNAPSHOT_SPEC.replace("- name: fingerprint", "- nmae: fingerprint")),
        prepare=RECORD,
    ),
    Case(
        "ambr-garbage",
        "snapshots",
        RUN,
        FAILED,
        r"spec\.ambr.*cannot read snapshot",
        {SPEC: SNAPSHOT_SPEC},
        lambda root: (root / AMBR).write_text("# name: fingerprint\n  garbage {{{\n"),
        prepare=RECORD,
    ),
    Case(
        "ambr-not-utf8",
        "snapshots",
        RUN,
        FAILED,
        r"spec\.ambr.*cannot read snapshot",
        {SPEC: SNAPSHOT_SPEC},
        lambda root: (root / AMBR).write_bytes(b"\xff\xfe\x00garbage"),
        prepare=RECORD,
    ),
    Case(
        "ambr-is-a-folder",
        "snapshots",
        RUN,
        FAILED,
        r"spec\.ambr.*cannot read snapshot",
        {SPEC: SNAPSHOT_SPEC},
        lambda root: (root / AMBR).mkdir(parents=True),
    ),
    Case(
        "snapshots-read-only-update",
        "snapshots",
        (*RUN, "--snapshot-update"),
        FAILED,
        r"spec\.ambr.*(read-only|Permission denied|cannot write)",
        {SPEC: SNAPSHOT_SPEC},
        lambda root: (root / AMBR).parent.chmod(0o555),
        prepare=RECORD,
        needs="not-root",
    ),
]

SNAPSHOTS += [
    Case(
        "ambr-empty",
        "snapshots",
        RUN,
        FAILED,
        r"spec\.ambr: cannot read snapshot .fingerprint.: .*re-record it with --snapshot-update",
        {SPEC: SNAPSHOT_SPEC},
        lambda root: (root / AMBR).write_text(""),
        prepare=RECORD,
    ),
    Case(
        "snapshots-dir-is-file",
        "snapshots",
        (*RUN, "--snapshot-update"),
        FAILED,
        r"__snapshots__.*(Not a directory|not a folder|cannot write)",
        {SPEC: SNAPSHOT_SPEC, "model_specs/__snapshots__": "not a folder\n"},
    ),
]

# ---- filesystem ----

FILESYSTEM: list[Case] = [
    Case(
        "symlink-loop-parent",
        "filesystem",
        ("pytest", "model_specs", "--co", "-q"),
        OK,
        r"^1 test collected",
        TINY,
        symlink("model_specs/loop", ".."),
        subprocess=True,
        seconds=60,
    ),
    Case(
        "symlink-loops-two",
        "filesystem",
        ("pytest", "model_specs", "--co", "-q"),
        OK,
        r"^1 test collected",
        TINY,
        chain(symlink("model_specs/a", "."), symlink("model_specs/b", ".")),
        subprocess=True,
        seconds=60,
    ),
    Case(
        "symlink-loop-cross",
        "filesystem",
        ("pytest", "model_specs", "--co", "-q"),
        OK,
        r"^1 test collected",
        TINY,
        chain(symlink("model_specs/a", "../other"), symlink("other/back", "../model_specs")),
        subprocess=True,
        seconds=60,
    ),
    Case(
        "symlink-self",
        "filesystem",
        ("pytest", "model_specs", "--co", "-q"),
        OK,
        r"^1 test collected",
        TINY,
        symlink("model_specs/self", "self"),
    ),
    Case(
        "spec-is-fifo",
        "filesystem",
        ("pytest", "model_specs/fifo.yaml"),
        USAGE,
        r"ERROR: not found: .*model_specs/fifo\.yaml",
        setup=lambda root: ((root / "model_specs").mkdir(), os.mkfifo(root / "model_specs" / "fifo.yaml"))[0],
        subprocess=True,
        seconds=60,
    ),
    Case(
        "cli-spec-is-fifo",
        "filesystem",
        ("interp-assert", "audit", "model_specs/fifo.yaml", "--checkpoint", "tiny-neo"),
        CLI_ERROR,
        r"interp-assert: error: model_specs/fifo\.yaml: not a regular file; a spec is a YAML text file",
        setup=lambda root: ((root / "model_specs").mkdir(), os.mkfifo(root / "model_specs" / "fifo.yaml"))[0],
    ),
    Case(
        "spec-unreadable",
        "filesystem",
        RUN,
        INTERRUPTED,
        r"model_specs/spec\.yaml: cannot read the spec file: Permission denied",
        TINY,
        lambda root: (root / SPEC).chmod(0),
        needs="not-root",
    ),
    Case(
        "spec-dangling-symlink",
        "filesystem",
        ("pytest", "model_specs/gone.yaml"),
        USAGE,
        r"file or directory not found: model_specs/gone\.yaml",
        setup=symlink("model_specs/gone.yaml", "nowhere.yaml"),
    ),
]

# ---- devices ----

DEVICE_VALID = r"use cpu, cuda, cuda:N, mps, xpu or xpu:N"


def device_spec(device: str) -> dict[str, str]:
    return {SPEC: spec(good(), header=f"device: {device}")}


DEVICES: list[Case] = [
    Case(
        "flag-cuda-unavailable",
        "devices",
        (*RUN, "--interp-device", "cuda"),
        USAGE,
        r"--interp-device cuda: device 'cuda' is not available on this machine .*valid devices are cpu, cuda",
        TINY,
        needs="no-cuda",
    ),
    Case(
        "flag-cuda-index",
        "devices",
        (*RUN, "--interp-device", "cuda:7"),
        USAGE,
        r"--interp-device cuda:7: device 'cuda:7' (is not available|does not exist)",
        TINY,
    ),
    Case(
        "flag-gpu0",
        "devices",
        (*RUN, "--interp-device", "gpu0"),
        USAGE,
        r"--interp-device gpu0: device 'gpu0' is not valid \(did you mean cuda:0\?\); " + DEVICE_VALID,
        TINY,
    ),
    Case(
        "flag-meta",
        "devices",
        (*RUN, "--interp-device", "meta"),
        USAGE,
        r"--interp-device meta: device 'meta' is not valid \(a meta tensor holds no weights.*\); " + DEVICE_VALID,
        TINY,
    ),
    Case(
        "flag-empty",
        "devices",
        (*RUN, "--interp-device", ""),
        USAGE,
        r"--interp-device : device '' is not valid; " + DEVICE_VALID,
        TINY,
    ),
    Case(
        "flag-mps",
        "devices",
        (*RUN, "--interp-device", "mps"),
        USAGE,
        r"device 'mps' is not available on this machine",
        TINY,
        needs="no-mps",
    ),
    Case(
        "spec-meta",
        "devices",
        RUN,
        FAILED,
        at(2, 9) + r"device: device 'meta' is not valid \(a meta tensor.*\); " + DEVICE_VALID,
        device_spec("meta"),
    ),
    Case(
        "spec-gpu0",
        "devices",
        RUN,
        FAILED,
        at(2, 9) + r"device: device 'gpu0' is not valid \(did you mean cuda:0\?\); " + DEVICE_VALID,
        device_spec("gpu0"),
    ),
    Case(
        "spec-number",
        "devices",
        RUN,
        FAILED,
        at(2, 9) + r"device: Input should be a valid string \(got 0\)",
        device_spec("0"),
    ),
    Case(
        "spec-cuda-unavailable",
        "devices",
        (*RUN, "-x"),
        FAILED,
        r"model 'tiny-neo': device 'cuda' is not available on this machine",
        device_spec("cuda"),
        needs="no-cuda",
    ),
    Case(
        "spec-cuda-skip",
        "devices",
        (*RUN, "-rs", "--interp-missing=skip"),
        OK,
        r"SKIPPED .*model not available: model 'tiny-neo': device 'cuda' is not available on this machine",
        device_spec("cuda"),
        needs="no-cuda",
    ),
    Case(
        "cli-device-gpu0",
        "devices",
        ("interp-assert", "audit", SPEC, "--checkpoint", "tiny-neo", "--device", "gpu0"),
        CLI_ERROR,
        r"interp-assert: error: .*device 'gpu0' is not valid \(did you mean cuda:0\?\); " + DEVICE_VALID,
        TINY,
    ),
]

# ---- checkpoints of a training run: interp-assert track and pytest --interp-checkpoints ----


def llama_checkpoint(name: str) -> Setup:
    """A real (random) 2-layer Llama saved where a GPT-Neo run's checkpoint is expected."""

    def setup(root: Path) -> None:
        from tests.builders import llama_config, save_model

        save_model(llama_config(), root / name)

    return setup


TRACK_CMD = ("interp-assert", "track", SPEC)
A_CHECKPOINT = r"give a model folder, an adapter folder, a \.gguf file or a glob such as 'run/checkpoint-\*'"
NOT_A_CHECKPOINT = r"a checkpoint is a model folder, an adapter folder or a \.gguf file"
TRACK: list[Case] = [
    Case(
        "track-missing-checkpoint",
        "cli",
        (*TRACK_CMD, "--checkpoint", "run/checkpoint-0", "--checkpoint", "run/checkpoint-99"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint 'run/checkpoint-99' does not exist \(.*/run/checkpoint-99\); "
        + A_CHECKPOINT,
        TINY,
        copy_model("run/checkpoint-0"),
    ),
    Case(
        "track-glob-matches-nothing",
        "cli",
        (*TRACK_CMD, "--checkpoints", "run/ckpt-*"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint glob 'run/ckpt-\*' matches nothing under .*; " + NOT_A_CHECKPOINT,
        TINY,
        copy_model("run/checkpoint-0"),
    ),
    Case(
        "track-glob-matches-files",
        "cli",
        (*TRACK_CMD, "--checkpoints", "run/*.log"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint glob 'run/\*\.log' matches only files that are not checkpoints "
        r"\(train-100\.log\) under .*; " + NOT_A_CHECKPOINT,
        {SPEC: spec(good()), "run/train-100.log": "loss 2.3\n"},
    ),
    Case(
        "track-same-step",
        "cli",
        (*TRACK_CMD, "--checkpoints", "*/checkpoint-10"),
        CLI_ERROR,
        r"interp-assert: error: checkpoints 'a/checkpoint-10' and 'b/checkpoint-10' have the same step 10; "
        r"track one run at a time, or pass --order given",
        TINY,
        chain(copy_model("a/checkpoint-10"), copy_model("b/checkpoint-10")),
    ),
    Case(
        "track-no-step",
        "cli",
        (*TRACK_CMD, "--checkpoint", "model"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint 'model' has no step number in its name \(the last integer, as in "
        r"checkpoint-200\); rename it, or pass --order given",
        TINY,
        copy_model("model"),
    ),
    Case(
        "track-other-architecture",
        "cli",
        (*TRACK_CMD, "--checkpoints", "run/checkpoint-*"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint 'run/checkpoint-20' is llama \(LlamaForCausalLM\), 2 layers x 4 heads, "
        r"64 wide, not gpt_neo \(GPTNeoForCausalLM\), 2 layers x 4 heads, 64 wide like checkpoint "
        r"'run/checkpoint-10'; track compares checkpoints of one model",
        TINY,
        chain(copy_model("run/checkpoint-10"), llama_checkpoint("run/checkpoint-20")),
    ),
    Case(
        "track-json-exists",
        "cli",
        (*TRACK_CMD, "--checkpoints", "run/checkpoint-*", "--json", "track.json"),
        CLI_ERROR,
        r"interp-assert: error: track\.json exists; pass --force to overwrite it",
        {SPEC: spec(good()), "track.json": "{}\n"},
        copy_model("run/checkpoint-0"),
    ),
    Case(
        "track-json-folder",
        "cli",
        (*TRACK_CMD, "--checkpoints", "run/checkpoint-*", "--json", "run"),
        CLI_ERROR,
        r"interp-assert: error: run is a folder; give a file name for the JSON",
        TINY,
        copy_model("run/checkpoint-0"),
    ),
    Case(
        "pytest-checkpoints-glob-nothing",
        "cli",
        (*RUN, "--interp-checkpoints", "run/ckpt-*"),
        USAGE,
        r"--interp-checkpoints: checkpoint glob 'run/ckpt-\*' matches nothing under .*; " + NOT_A_CHECKPOINT,
        TINY,
    ),
    Case(
        "pytest-checkpoints-other-architecture",
        "cli",
        (*RUN, "--interp-checkpoints", "run/checkpoint-10,run/checkpoint-20"),
        USAGE,
        r"--interp-checkpoints: checkpoint 'run/checkpoint-20' is llama \(LlamaForCausalLM\), .* not gpt_neo "
        r"\(GPTNeoForCausalLM\), .* like checkpoint 'run/checkpoint-10'",
        TINY,
        chain(copy_model("run/checkpoint-10"), llama_checkpoint("run/checkpoint-20")),
    ),
    Case(
        "pytest-checkpoints-snapshot-update",
        "cli",
        (*RUN, "--snapshot-update", "--interp-checkpoints", "run/checkpoint-*"),
        USAGE,
        r"--snapshot-update with --interp-checkpoints would store a checkpoint's numbers as the spec's own snapshot",
        TINY,
        copy_model("run/checkpoint-0"),
    ),
]

# ---- hub revisions (issue 14) ----

REVISION_VALID = r"give a branch, tag or full commit sha \(letters, digits, '\.', '_', '-', '/'; no '\.\.', no spaces\)"

REVISIONS: list[Case] = [
    Case(
        "spec-revision-path",
        "models",
        RUN,
        FAILED,
        at(2, 11) + r"revision: '\.\./\.\./etc' is not valid; " + REVISION_VALID,
        {SPEC: spec(good(), header="revision: ../../etc")},
    ),
    Case(
        "spec-revision-space",
        "models",
        RUN,
        FAILED,
        at(2, 11) + r"revision: 'main branch' is not valid; " + REVISION_VALID,
        {SPEC: spec(good(), header="revision: main branch")},
    ),
    Case(
        "flag-revision-bad",
        "models",
        (*RUN, "--interp-revision", "tiny-neo=a..b"),
        USAGE,
        r"--interp-revision tiny-neo=a\.\.b: revision 'a\.\.b' is not valid; " + REVISION_VALID,
        TINY,
    ),
    Case(
        "flag-revision-typo",
        "models",
        (*RUN, "--interp-revision", "tiny_neo=v2"),
        USAGE,
        r"--interp-revision tiny_neo=v2: no collected spec uses a model named 'tiny_neo'"
        r".*models the collected specs use: tiny-neo",
        TINY,
    ),
    Case(
        "flag-revision-no-equals",
        "models",
        (*RUN, "--interp-revision", "v2"),
        USAGE,
        r"--interp-revision 'v2': expected SPEC_MODEL=REVISION",
        TINY,
    ),
    model_case(
        "revision-of-an-alias",
        "tiny-neo",
        r"model 'tiny-neo' is a built-in alias, so revision 'v2' cannot apply; a revision selects a version of a "
        r"Hugging Face hub id",
        None,
        "--interp-revision",
        "tiny-neo=v2",
    ),
    model_case(
        "hub-revision-offline",
        "someorg/some-model",
        r"model 'someorg/some-model' at revision 'v2' is not a known alias .*cannot be downloaded offline: "
        r"pre-fetch it with `hf download someorg/some-model --revision v2`",
        None,
        "--interp-revision",
        "someorg/some-model=v2",
    ),
    Case(
        "cli-revision-bad",
        "cli",
        ("interp-assert", "measure", "tiny-neo", "--revision=../x"),
        CLI_ERROR,
        r"interp-assert: error: revision '\.\./x' is not valid; " + REVISION_VALID,
    ),
]

# ---- big models: device_map, max_memory, offload_folder (issue 14) ----

MAP_VALID = r"use auto, balanced, balanced_low_0, sequential, or a mapping of module name \('' for the whole model\)"
SIZE_VALID = r"give a size such as 20GiB, 500MB or 1\.5GB, or a whole number of bytes"

PLACEMENT: list[Case] = [
    Case(
        "spec-device-map-word",
        "devices",
        RUN,
        FAILED,
        at(2, 13) + r"device_map: 'gpu' is not valid; " + MAP_VALID,
        {SPEC: spec(good(), header="device_map: gpu")},
    ),
    Case(
        "spec-device-map-one-device",
        "devices",
        RUN,
        FAILED,
        at(2, 13) + r"device_map: 'cuda:0' is not valid \(for one device, use device: instead\); " + MAP_VALID,
        {SPEC: spec(good(), header="device_map: cuda:0")},
    ),
    Case(
        "spec-device-map-bad-device",
        "devices",
        RUN,
        FAILED,
        at(2, 13) + r"device_map: 'transformer\.h\.0': device 'gpu1' is not valid \(did you mean cuda:1\?\)",
        {SPEC: spec(good(), header="device_map: {transformer.h.0: gpu1, '': cpu}")},
    ),
    Case(
        "spec-device-map-and-device",
        "devices",
        RUN,
        FAILED,
        at(1, 1) + r"give device \(one device\) or device_map \(weights spread by accelerate\), not both",
        {SPEC: spec(good(), header="device: cpu\ndevice_map: auto")},
    ),
    Case(
        "spec-device-map-unknown-module",
        "devices",
        (*RUN, "-x"),
        FAILED,
        r"model 'tiny-neo': device_map names module 'model\.layers\.0', which this GPTNeoForCausalLM does not "
        r"have; its top-level modules are transformer, lm_head, its first block is transformer\.h\.0",
        {SPEC: spec(good(), header="device_map: {'': cpu, model.layers.0: disk}")},
    ),
    Case(
        "spec-max-memory-size",
        "devices",
        RUN,
        FAILED,
        at(3, 13) + r"max_memory: 'cpu': size '2 gigs' is not valid; " + SIZE_VALID,
        {SPEC: spec(good(), header="device_map: auto\nmax_memory: {cpu: 2 gigs}")},
    ),
    Case(
        "spec-max-memory-device",
        "devices",
        RUN,
        FAILED,
        at(3, 13) + r"max_memory: key 'gpu' is not a device; use cpu, disk, mps, a GPU number, cuda, cuda:N or xpu:N",
        {SPEC: spec(good(), header="device_map: auto\nmax_memory: {gpu: 2GiB}")},
    ),
    Case(
        "spec-max-memory-without-map",
        "devices",
        RUN,
        FAILED,
        at(1, 1) + r"max_memory applies only with a device_map; add device_map: auto",
        {SPEC: spec(good(), header="max_memory: {cpu: 2GiB}")},
    ),
    Case(
        "spec-offload-folder-is-a-file",
        "devices",
        RUN,
        FAILED,
        at(3, 17) + r"offload_folder '.*notes\.txt': the offload folder is a file, not a folder; give a folder",
        {SPEC: spec(good(), header="device_map: auto\noffload_folder: ../notes.txt"), "notes.txt": "x\n"},
    ),
    Case(
        "flag-device-map-bad",
        "devices",
        (*RUN, "--interp-device-map", "everywhere"),
        USAGE,
        r"--interp-device-map everywhere: device_map 'everywhere' is not valid; " + MAP_VALID,
        TINY,
    ),
    Case(
        "flag-device-map-pair",
        "devices",
        (*RUN, "--interp-device-map", "transformer.h.0"),
        USAGE,
        r"--interp-device-map transformer\.h\.0: device_map 'transformer\.h\.0' is not valid",
        TINY,
    ),
    Case(
        "flag-device-and-device-map",
        "devices",
        (*RUN, "--interp-device", "cpu", "--interp-device-map", "auto"),
        USAGE,
        r"--interp-device cpu and --interp-device-map auto: give one device, or a device map, not both",
        TINY,
    ),
    Case(
        "flag-max-memory-size",
        "devices",
        (*RUN, "--interp-device-map", "auto", "--interp-max-memory", "cpu=lots"),
        USAGE,
        r"--interp-max-memory cpu=lots: max_memory 'cpu': size 'lots' is not valid; " + SIZE_VALID,
        TINY,
    ),
    Case(
        "flag-max-memory-without-map",
        "devices",
        (*RUN, "-x", "--interp-max-memory", "cpu=1GiB"),
        FAILED,
        r"model 'tiny-neo': max_memory applies only with a device_map; add device_map: auto",
        TINY,
    ),
    Case(
        "flag-offload-folder-is-a-file",
        "devices",
        (*RUN, "--interp-device-map", "auto", "--interp-offload-folder", "notes.txt"),
        USAGE,
        r"--interp-offload-folder notes\.txt: offload_folder '.*notes\.txt': the offload folder is a file, not a "
        r"folder; give a folder",
        {**TINY, "notes.txt": "x\n"},
    ),
    Case(
        "cli-device-map-bad",
        "cli",
        ("interp-assert", "audit", SPEC, "--checkpoint", "tiny-neo", "--device-map", "gpu"),
        CLI_ERROR,
        r"interp-assert: error: --interp-device-map gpu: device_map 'gpu' is not valid; " + MAP_VALID,
        TINY,
    ),
    Case(
        "cli-max-memory-size",
        "cli",
        ("interp-assert", "measure", "tiny-neo", "--device-map", "auto", "--max-memory", "0=-1GB"),
        CLI_ERROR,
        r"interp-assert: error: --interp-max-memory 0=-1GB: max_memory '0': size '-1GB' is not valid; " + SIZE_VALID,
    ),
    Case(
        "cli-offload-folder-is-a-file",
        "cli",
        ("interp-assert", "measure", "tiny-neo", "--device-map", "auto", "--offload-folder", "notes.txt/sub"),
        CLI_ERROR,
        r"interp-assert: error: --interp-offload-folder notes\.txt/sub: offload_folder '\S*notes\.txt/sub': "
        r"\S*notes\.txt, on the way to the offload folder, is "
        r"a file, not a folder; give a folder",
        {"notes.txt": "x\n"},
    ),
]

# ---- third trust round (issue 25): settings, caches, outputs and checks that pass on nothing ----

INI = "model_specs/pytest.ini"
TRUST_ONLY_TYPED = (
    r"come only from the person running the command.*give --interp-{flag} on the command line "
    r"or set INTERP_ASSERT_{var}=1"
)


def _gguf_cache(root: Path, *, mode: int = 0o700, plant: bool = False) -> None:
    """A tiny .gguf at ``root/tiny.gguf`` and a cache folder for it: group-writable (``mode``), or
    holding its conversion with another model's weights planted in it."""
    from interp_assert.measure.loading.models import LoadOptions, gguf_as_safetensors
    from tests.builders import tiny_gguf

    gguf = tiny_gguf(root / "tiny.gguf")
    (root / "cache" / "gguf").mkdir(parents=True, mode=0o700)
    (root / "cache" / "gguf").chmod(mode)
    if plant:
        entry = gguf_as_safetensors(gguf, LoadOptions(cache_dir=root / "cache"))
        (root / "other").mkdir()
        other = gguf_as_safetensors(tiny_gguf(root / "other" / "tiny.gguf", seed=1), LoadOptions(cache_dir=root / "o"))
        shutil.copyfile(other / "model.safetensors", entry / "model.safetensors")


FAILING_HEAD = {"name": "sink", "property": "head_score", "head": "L0H0", "role": "first_token", "at_least": "0.99"}


def _edit_config(name: str, changes: dict[str, object]) -> Setup:
    """A copy of tiny-neo at ``name`` whose config.json has ``changes``."""

    def setup(root: Path) -> None:
        import json

        folder = copy_model(name)(root)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | changes))

    return setup


def _adapter(breakage: str) -> Setup:
    """A real LoRA adapter on tiny-neo (peft's save_pretrained, with the tokenizer), then broken:
    ``weights`` truncated, ``tokenizer`` (a tokenizer.json that is not JSON), or ``custom-code``
    (a tokenizer config that asks for the adapter's own code)."""

    def setup(root: Path) -> None:
        import json
        import warnings

        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = root / "adapter"
        base = AutoModelForCausalLM.from_pretrained(BUILTIN)
        with warnings.catch_warnings():  # peft's own deprecation and base-config notices
            warnings.simplefilter("ignore")
            lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
            lora.peft_config["default"].base_model_name_or_path = "tiny-neo"
            lora.save_pretrained(folder)
        AutoTokenizer.from_pretrained(BUILTIN).save_pretrained(folder)
        if breakage == "weights":
            weights = folder / "adapter_model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
        elif breakage == "tokenizer":
            (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
        elif breakage == "custom-code":
            config = json.loads((folder / "tokenizer_config.json").read_text())
            config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
            (folder / "tokenizer_config.json").write_text(json.dumps(config))
            (folder / "tokenization_evil.py").write_text("raise SystemExit('custom code ran')\n")

    return setup


TRUST3: list[Case] = [
    Case(
        "ini-in-specs-trusts-remote-code",
        "cli",
        RUN,
        USAGE,
        r"model_specs/pytest\.ini: ini key interp_trust_remote_code is not read: .*"
        + TRUST_ONLY_TYPED.format(flag="trust-remote-code", var="TRUST_REMOTE_CODE"),
        {INI: "[pytest]\ninterp_trust_remote_code = true\n", **TINY},
    ),
    Case(
        "ini-in-specs-allows-pickle",
        "cli",
        RUN,
        USAGE,
        r"model_specs/pytest\.ini: ini key interp_allow_pickle is not read: .*"
        + TRUST_ONLY_TYPED.format(flag="allow-pickle", var="ALLOW_PICKLE"),
        {INI: "[pytest]\ninterp_allow_pickle = 1\n", **TINY},
    ),
    Case(
        "ini-addopts-trusts-remote-code",
        "cli",
        RUN,
        USAGE,
        r"model_specs/pytest\.ini: addopts passes --interp-trust-remote-code, which is not read from ini files",
        {INI: "[pytest]\naddopts = --interp-trust-remote-code\n", **TINY},
    ),
    Case(
        "pyproject-allows-pickle",
        "cli",
        RUN,
        USAGE,
        r"pyproject\.toml: ini key interp_allow_pickle is not read: .*INTERP_ASSERT_ALLOW_PICKLE=1",
        {"pyproject.toml": "[tool.pytest.ini_options]\ninterp_allow_pickle = true\n", **TINY},
    ),
    Case(
        "ini-trust-false-is-harmless",
        "cli",
        RUN,
        OK,
        r"1 passed",
        {INI: "[pytest]\ninterp_allow_pickle = false\ninterp_trust_remote_code = no\n", **TINY},
    ),
    Case(
        "max-memory-huge-gb",
        "cli",
        ("interp-assert", "measure", "tiny-neo", "--device-map", "auto", "--max-memory", "cpu=" + "9" * 30 + "GB"),
        CLI_ERROR,
        r"--interp-max-memory cpu=9+GB: max_memory 'cpu': size '9+GB' is more than any machine holds \(at most 1 PiB\)"
        r"; give a size such as 20GiB",
    ),
    Case(
        "max-memory-plain-bytes",
        "cli",
        (*RUN, "--interp-device-map", "auto", "--interp-max-memory", "cpu=1000000000"),
        OK,
        r"1 passed",
        TINY,
    ),
    Case(
        "gguf-cache-group-writable",
        "filesystem",
        ("interp-assert", "measure", "./tiny.gguf"),
        CLI_INFRA,  # the model cannot be loaded safely from here: infrastructure, not the spec
        r"converted-model cache \S*cache/gguf is refused: \S*cache/gguf is writable by other users \(mode drwxrwx---\)"
        r", so a model found there could have been swapped; make it yours alone \(chmod go-w\), or point "
        r"INTERP_ASSERT_CACHE at a folder only you can write",
        setup=lambda root: _gguf_cache(root, mode=0o770),
        env={"INTERP_ASSERT_CACHE": "{root}/cache"},
    ),
    Case(
        "gguf-cache-planted-entry",
        "filesystem",
        ("interp-assert", "measure", "./tiny.gguf", "--top", "1"),
        OK,
        r"converted-model cache entry \S*cache/gguf/tiny-\w+-\w+ is rebuilt: model\.safetensors changed since it "
        r"was written",
        setup=lambda root: _gguf_cache(root, plant=True),
        env={"INTERP_ASSERT_CACHE": "{root}/cache"},
        outputs=("cache",),
    ),
    Case(
        "report-folder-with-user-pictures",
        "filesystem",
        ("interp-assert", "report", SPEC, "-o", "out"),
        CLI_ERROR,
        r"interp-assert: error: out is not empty \(it holds my-heatmap\.png, notes\.txt\), and the report's files "
        r"could replace them; give a new or empty folder, or pass --force",
        {SPEC: spec(good()), "out/my-heatmap.png": b"\x89PNG mine", "out/notes.txt": "mine\n"},
    ),
    Case(
        "audit-report-folder-with-user-pictures",
        "filesystem",
        ("interp-assert", "audit", SPEC, "--checkpoint", "tiny-neo", "--report", "rep"),
        CLI_ERROR,
        r"interp-assert: error: rep is not empty \(it holds L0H0\.png\).*pass --force",
        {SPEC: spec(good()), "rep/L0H0.png": b"\x89PNG mine"},
    ),
    Case(
        "track-report-folder-with-user-pictures",
        "filesystem",
        (*TRACK_CMD, "--checkpoints", "run/checkpoint-*", "--report", "rep"),
        CLI_ERROR,
        r"interp-assert: error: rep is not empty \(it holds track-norms_grow\.png\).*pass --force",
        {SPEC: spec(good()), "rep/track-norms_grow.png": b"\x89PNG mine"},
        copy_model("run/checkpoint-0"),
    ),
    Case(
        "artifacts-folder-with-user-files",
        "filesystem",
        (*RUN, "--interp-artifacts", "pics"),
        USAGE,
        r"--interp-artifacts pics: \S*pics is not empty \(it holds holiday\.png\) and was not made by "
        r"--interp-artifacts.*give a new or empty folder",
        {SPEC: spec(FAILING_HEAD), "pics/holiday.png": b"\x89PNG mine"},
    ),
    Case(
        "artifacts-spec-stem-dotdot",
        "filesystem",
        (*RUN, "--interp-artifacts", "pics"),
        FAILED,
        r"heatmap: pics/_-[0-9a-f]{8}/sink-L0H0-pattern\.png",
        {"model_specs/...yaml": spec(FAILING_HEAD), "sink-L0H0-pattern.png": b"\x89PNG mine"},
        outputs=("pics",),
    ),
    Case(
        "snapshot-file-shared-yaml-yml",
        "snapshots",
        (*RUN, "--snapshot-update"),
        INTERRUPTED,
        r"model_specs/tiny\.yaml: tiny\.yaml and tiny\.yml would share one snapshot file, "
        r"model_specs/__snapshots__/tiny\.ambr, and overwrite each other's snapshots; rename one of them",
        {"model_specs/tiny.yaml": SNAPSHOT_SPEC, "model_specs/tiny.yml": SNAPSHOT_SPEC},
    ),
    Case(
        "audit-checkpoint-other-shape",
        "models",
        ("interp-assert", "audit", SPEC, "--checkpoint", "smollm2-135m-instruct"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint 'smollm2-135m-instruct' has 30 layers x 9 heads, but the spec's model "
        r"'tiny-neo' has 2 layers x 4 heads, so the spec's heads and layers would name other things; audit a "
        r"checkpoint of the same model",
        TINY,
        seconds=20,
    ),
    Case(
        "track-one-checkpoint-other-shape",
        "models",
        (*TRACK_CMD, "--checkpoint", "smollm2-135m-instruct"),
        CLI_ERROR,
        r"interp-assert: error: checkpoint 'smollm2-135m-instruct' has 30 layers x 9 heads, but the spec's model "
        r"'tiny-neo' has 2 layers x 4 heads.*track checkpoints of the spec's model",
        TINY,
        seconds=20,
    ),
    Case(
        "override-other-shape",
        "models",
        (*RUN, "--interp-model", "tiny-neo=smollm2-135m-instruct"),
        USAGE,
        r"--interp-model: tiny-neo=smollm2-135m-instruct has 30 layers x 9 heads, but the spec's model 'tiny-neo' "
        r"has 2 layers x 4 heads, so the spec's heads and layers would name other things",
        TINY,
        seconds=20,
    ),
    Case(
        "checkpoints-other-shape",
        "models",
        (*RUN, "--interp-checkpoints", "run/checkpoint-*"),
        USAGE,
        r"--interp-checkpoints: checkpoint 'run/checkpoint-10' has 1 layers x 4 heads, but the spec's model "
        r"'tiny-neo' has 2 layers x 4 heads",
        TINY,
        _edit_config("run/checkpoint-10", {"num_layers": 1, "attention_types": [[["global"], 1]]}),
    ),
    Case(
        "config-architectures-number",
        "models",
        (*RUN, "--interp-checkpoints", "run/checkpoint-*"),
        USAGE,
        r"--interp-checkpoints: checkpoint 'run/checkpoint-10' is gpt_neo \(5\), 2 layers x 4 heads, 64 wide, not "
        r"gpt_neo \(GPTNeoForCausalLM\).*like checkpoint 'run/checkpoint-0'; track compares checkpoints of one model",
        TINY,
        chain(copy_model("run/checkpoint-0"), _edit_config("run/checkpoint-10", {"architectures": 5})),
    ),
    Case(
        "config-nested-deeply",
        "models",
        (*RUN, "--interp-model", "tiny-neo=../model"),
        FAILED,
        r"model '\.\./model' at \S*model could not be loaded: RecursionError: maximum recursion depth exceeded",
        TINY,
        weights_broken(lambda b: b'{"a":' * 100000 + b"1" + b"}" * 100000, "config.json"),
    ),
    model_case(
        "adapter-weights-truncated",
        "../adapter",
        r"adapter \S*adapter: its weights could not be read: SafetensorError: ",
        _adapter("weights"),
    ),
    model_case(
        "adapter-tokenizer-broken",
        "../adapter",
        r"adapter \S*adapter: its tokenizer could not be loaded: ",
        _adapter("tokenizer"),
    ),
    model_case(  # the tokenizer's own code is never run (it would exit the run): the adapter measures as usual
        "adapter-tokenizer-custom-code",
        "../adapter",
        r"1 passed",
        _adapter("custom-code"),
        exit=OK,
    ),
    Case(
        "discover-output-under-a-file",
        "filesystem",
        ("interp-assert", "discover", "tiny-neo", "-o", "afile/spec.yaml"),
        CLI_ERROR,
        r"interp-assert: error: -o afile/spec\.yaml: afile, on the way to afile/spec\.yaml, is a file, not a folder",
        {"afile": "mine\n"},
        seconds=10,  # refused before the model loads
    ),
    Case(
        "discover-output-folder-read-only",
        "filesystem",
        ("interp-assert", "discover", "tiny-neo", "-o", "locked/spec.yaml"),
        CLI_ERROR,
        r"interp-assert: error: -o locked/spec\.yaml: locked cannot be written \(Permission denied\)",
        setup=lambda root: (root / "locked").mkdir(mode=0o555),
        needs="not-root",
        seconds=10,
    ),
    schema_case(
        "logit-lens-kl-single-index",
        {"property": "logit_lens", "kl_non_increasing": "[1, 1]"},
        at(10, 24) + r"kl_non_increasing: \[1, 1\] is a single index: kl_non_increasing needs at least one step, "
        r"so give two different indices",
    ),
    schema_case(
        "logit-lens-kl-one-index-on-this-model",
        {"property": "logit_lens", "kl_non_increasing": "[-1, 2]"},
        at(7, 5) + r"e0: hidden-state index range \[-1, 2\] is the single index 2 on this model: kl_non_increasing "
        r"needs at least one step \(indices run 0 to 2\)",
    ),
    Case(
        "bos-none-text-spells-bos",
        "schema",
        RUN,
        FAILED,
        AT + r":3:3: prompt set 'rep': text 0 \('<bos>t5 t6 t7'\) spells the tokenizer's BOS token '<bos>', which "
        r"would put a real BOS in a set that says bos: none; remove it from the text, or use bos: prepend",
        {SPEC: spec(good(), prompts='prompts:\n  rep:\n    bos: none\n    texts: ["<bos>t5 t6 t7"]\n')},
    ),
    schema_case(
        "massive-activation-position-beyond-prompt",
        {"property": "massive_activation", "position": "99"},
        at(7, 5) + r"e0: position 99 is beyond the prompts: the longest prompt of 'rep' is 17 tokens "
        r"\(positions 0 to 16\)",
    ),
    Case(
        "python-api-records-snapshot",
        "snapshots",
        ("pytest", "test_api.py", "--snapshot-update"),
        OK,
        r"1 passed",
        {
            "test_api.py": "REP = {'bos': 'prepend', 'random_tokens': {'length': 8, 'repeats': 2, 'count': 2, "
            "'seed': 1}}\n\n\ndef test_fp(interp):\n"
            "    interp.model('tiny-neo').expect('snapshot', prompts=REP, name='fp')\n"
        },
        outputs=("__interp_snapshots__",),
    ),
    Case(
        "env-allow-pickle-maybe",
        "cli",
        RUN,
        USAGE,
        r"INTERP_ASSERT_ALLOW_PICKLE='maybe' is not valid; set it to 1 \(allow\) or 0 \(refuse\), or unset it",
        TINY,
        env={"INTERP_ASSERT_ALLOW_PICKLE": "maybe"},
    ),
    Case(
        "cli-env-trust-remote-code-maybe",
        "cli",
        ("interp-assert", "measure", "tiny-neo"),
        CLI_ERROR,
        r"interp-assert: error: INTERP_ASSERT_TRUST_REMOTE_CODE='maybe' is not valid; set it to 1 \(allow\) or 0",
        env={"INTERP_ASSERT_TRUST_REMOTE_CODE": "maybe"},
    ),
    Case(
        "ini-boolean-maybe",
        "cli",
        RUN,
        USAGE,
        r"model_specs/pytest\.ini: ini key interp_debug = 'maybe' is not a boolean; write true or false",
        {INI: "[pytest]\ninterp_debug = maybe\n", **TINY},
    ),
]


# ---- prompt pairs, logit_diff and patching (issue 20) ----


def pair_case(id: str, pairs: str, expect: str, fields: dict[str, str] | None = None, exit: int = FAILED) -> Case:
    """A pair set ``names`` (lines 6-8, its pairs from line 9) and one expectation on it."""
    prompts = PROMPTS + "  names:\n    bos: none\n    pairs:\n" + pairs
    wanted = fields or {"property": "logit_diff", "at_least": "-100"}
    return Case(
        id,
        "schema",
        ("pytest", "model_specs"),
        exit,
        expect,
        {SPEC: spec({**wanted, "prompts": "names"}, prompts=prompts)},
    )


GOOD_PAIR = '      - {clean: "t5 t6 t7 t8", corrupt: "t5 t9 t7 t8", answer: " t6", wrong: " t9"}\n'
SWAPPED_PAIR = '      - {clean: "t5 t9 t7 t8", corrupt: "t5 t6 t7 t8", answer: " t6", wrong: " t9"}\n'
PAIRS = [
    pair_case(
        "pairs-unequal-length",
        '      - {clean: "t5 t6 t7 t8", corrupt: "t5 t6 t11 t7 t8", answer: " t6", wrong: " t9"}\n',
        r"prompt set 'names': pair 0 \('t5 t6 t7 t8' / 't5 t6 t11 t7 t8'\): clean is 4 tokens, corrupt 5; they first "
        r"differ at token 2: clean 't7' 't8' vs corrupt 't11' 't7'; patching needs"
        r" clean and corrupt of equal token length",
    ),
    pair_case(
        "pairs-multi-token-answer",
        '      - {clean: "t5 t6 t7 t8", corrupt: "t5 t9 t7 t8", answer: " t6 t7", wrong: " t9"}\n',
        r"pair 0: answer ' t6 t7' is 2 tokens \('t6' 't7'\); it must be exactly one token",
    ),
    pair_case(
        "pairs-identical",
        '      - {clean: "t5 t6 t7 t8", corrupt: "t5 t6 t7 t8", answer: " t6", wrong: " t9"}\n',
        at(9, 9) + r"prompts\.names\.pairs\.0: .*clean and corrupt are identical \('t5 t6 t7 t8'\)",
    ),
    pair_case(
        "pairs-empty",
        "",
        r"spec\.yaml:\d+:\d+: .*'pairs' is empty: list at least one \{clean, corrupt, answer, wrong\}",
    ),
    pair_case(
        "patching-head-out-of-range",
        GOOD_PAIR,
        r"head L9H0 is out of range: this model has layers 0-1 and heads 0-3 \(L0H0 to L1H3\)",
        {"property": "patching", "heads": "[L9H0]", "at_least": "0.1"},
    ),
    pair_case(
        "patching-position-out-of-range",
        GOOD_PAIR,
        r"position 12 is out of range: the shortest prompt of this set is 4 tokens \(positions -4 to 3\)",
        {"property": "patching", "heads": "[L0H0]", "positions": "[12]", "at_least": "0.1"},
    ),
    pair_case(
        "patching-normalisation-undefined",
        GOOD_PAIR + SWAPPED_PAIR,  # each pair's corruption is the other's clean: the means coincide
        r"the clean and corrupt mean logit differences are (-?\d+\.\d{6}) and \1 .*: the normalisation "
        r"\(patched - corrupt\) / \(clean - corrupt\) is undefined",
        {"property": "patching", "heads": "[L0H0]", "at_least": "0.1"},
    ),
    Case(
        "logit-diff-on-texts",
        "schema",
        ("pytest", "model_specs"),
        FAILED,
        at(9, 14) + r"logit_diff needs a prompt set of pairs \('pairs' or 'pair_template'\); 'rep' has none; pair "
        r"sets here: none",
        {SPEC: spec({"property": "logit_diff", "at_least": "1"})},
    ),
    pair_case(
        "patching-direct-on-resid",
        GOOD_PAIR,
        r"effect: direct is defined for heads and MLPs, not the residual stream \(use total\)",
        {"property": "patching", "resid": "[{layer: 0, position: 1}]", "effect": "direct", "at_least": "0.1"},
    ),
]

CASES: list[Case] = [
    *YAML,
    *SCHEMA,
    *PAIRS,
    *MODELS,
    *WEIGHTS,
    *CLI,
    *TRACK,
    *SNAPSHOTS,
    *FILESYSTEM,
    *DEVICES,
    *REVISIONS,
    *PLACEMENT,
    *TRUST3,
]


# ---- SAEs, stored directions and probes (issue 23) ----

TEXT_SETS = """\
prompts:
  rep:
    bos: prepend
    random_tokens: {length: 8, repeats: 2, count: 2, seed: 1}
  pos:
    bos: none
    texts: ["a b c", "b c d", "c d e", "d e f"]
  neg:
    bos: none
    texts: ["f e d", "e d c", "d c b"]
"""


def sae_folder(folder: str, *, d_in: int = 64, nan: str = "", cfg: dict[str, object] | None = None) -> Setup:
    """A SAELens folder under the spec's folder: zeros, with a NaN in ``nan`` if named."""

    def setup(root: Path) -> None:
        import torch

        from tests.sae_builders import write_saelens

        weights = {"W_enc": torch.zeros(d_in, 16), "b_enc": torch.zeros(16), "W_dec": torch.zeros(16, d_in),
                   "b_dec": torch.zeros(d_in)}  # fmt: skip
        if nan:
            weights[nan][0] = float("nan")
        extra = {"d_in": d_in, "d_sae": 16, "hook_name": "blocks.1.hook_resid_post", **(cfg or {})}
        write_saelens(root / "model_specs" / folder, weights, **extra)

    return setup


def direction_file(name: str, width: int) -> Setup:
    def setup(root: Path) -> None:
        import numpy as np

        from interp_assert.properties.representation import save_directions

        save_directions(root / "model_specs" / name, {"d": np.ones(width)}, {})

    return setup


def sae_case(id: str, setup: Setup, expect: str) -> Case:
    quality = {"property": "sae_quality", "sae": "my_sae", "metric": "l0", "at_most": "20"}
    return Case(id, "weights", (*RUN,), FAILED, expect, {SPEC: spec(quality, good())}, setup)


REPRESENTATIONS: list[Case] = [
    schema_case(
        "sae-folder-missing",
        {"property": "sae_quality", "sae": "no_such_sae", "metric": "l0", "at_most": "20"},
        at(10, 10)
        + r"sae: SAE folder 'no_such_sae' not found \(looked in \S+; built-in SAEs: smollm2-135m-res14-topk\)",
    ),
    schema_case(
        "sae-metric-unknown",
        {"property": "sae_quality", "sae": "smollm2-135m-res14-topk", "metric": "sparsity", "at_most": "20"},
        at(11, 13) + r".*'l0', 'explained_variance', 'dead_fraction' or 'ce_recovered'",
    ),
    Case(
        "probe-sets-too-small",
        "schema",
        ("pytest", "model_specs"),
        FAILED,
        r"too few prompts: 4 positive and 3 negative; each class needs at least 4 .*prompts 'pos', negative 'neg'",
        {
            SPEC: spec(
                {"property": "probe", "prompts": "pos", "negative": "neg", "layer": "0", "at_least": "0.9"},
                good(),
                prompts=TEXT_SETS,
            )
        },
    ),
    sae_case(
        "sae-width-mismatch",
        sae_folder("my_sae", d_in=32),
        r"SAE \S+my_sae reads 32 features at blocks\.1\.hook_resid_post, but this model \(gpt_neo\) is 64 wide",
    ),
    sae_case(
        "sae-hook-point-missing",
        sae_folder("my_sae", cfg={"hook_name": "blocks.9.hook_resid_post"}),
        r"hook point 'blocks\.9\.hook_resid_post' names block 9, but this model \(gpt_neo\) has blocks 0-1",
    ),
    sae_case("sae-nan", sae_folder("my_sae", nan="W_dec"), r"W_dec has 64 NaN or infinite value\(s\) of 1024"),
    sae_case(
        "sae-unknown-activation",
        sae_folder("my_sae", cfg={"architecture": "gated"}),
        r"unknown activation \(architecture 'gated', activation ''\); known: architecture standard \(ReLU\)",
    ),
    Case(
        "probe-direction-wrong-size",
        "weights",
        (*RUN,),
        FAILED,
        r"probe\.safetensors: d has 10 entries, but the model is 64 wide there",
        {
            SPEC: spec(
                {
                    "property": "probe",
                    "prompts": "pos",
                    "negative": "neg",
                    "layer": "0",
                    "holdout": "0.25",
                    "direction": "probe.safetensors",
                    "key": "d",
                    "cosine_at_least": "0.5",
                },
                good(),
                prompts=TEXT_SETS.replace('"d c b"]', '"d c b", "c b a"]'),
            )
        },
        direction_file("probe.safetensors", 10),
    ),
]
CASES += REPRESENTATIONS
