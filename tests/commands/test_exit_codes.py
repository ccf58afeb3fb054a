"""Every verb's exit status, from the one table in ``interp_assert/exit_codes.py``, on real runs of
the built-in tiny-neo: held 0, failed 1, usage or spec error 2, infrastructure 69 (a model or
checkpoint that cannot load, a device this machine lacks), internal error 3. Every ``--json``
document carries ``schema_version`` and ``kind``, and the schema shipped beside the spec schema
lists the keys each kind has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from interp_assert import exit_codes
from interp_assert.commands.cli import main
from interp_assert.output_schema import SCHEMA_PATH, SCHEMA_VERSION, load_schema

HOLDS = """\
model: tiny-neo
prompts:
  rep:
    bos: prepend
    random_tokens: {length: 10, repeats: 2, count: 2, seed: 0}
expectations:
  - name: l0h0_previous_token
    property: head_score
    head: L0H0
    role: previous_token
    prompts: rep
    at_least: 0.9
"""
FAILS = HOLDS.replace("at_least: 0.9", "at_most: 0.1")
INVALID = HOLDS.replace("role: previous_token", "role: previous_tokn")
TINY = str(Path(__file__).resolve().parents[2] / "interp_assert" / "builtin_models" / "tiny-neo")


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "holds.yaml").write_text(HOLDS)
    (tmp_path / "fails.yaml").write_text(FAILS)
    (tmp_path / "invalid.yaml").write_text(INVALID)
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "README").write_text("not a model\n")
    return tmp_path


TRACK_BOTH = ("track", "holds.yaml", "--checkpoint", TINY, "--checkpoint", "notamodel", "--order", "given")
CASES = [
    # (id, argv, exit status, a regex stderr must match, or "" for none)
    ("discover-held", ["discover", "tiny-neo", "-o", "d.yaml"], exit_codes.HELD, ""),
    ("discover-usage", ["discover", "tiny-neo", "-o", "holds.yaml"], exit_codes.USAGE, r"exists; pass --force"),
    ("discover-infra", ["discover", "./notamodel", "-o", "d.yaml"], exit_codes.INFRASTRUCTURE, r"not a model folder"),
    ("measure-held", ["measure", "tiny-neo", "--role", "previous_token"], exit_codes.HELD, ""),
    ("measure-usage", ["measure", "tiny-neo", "--head", "L9H0"], exit_codes.USAGE, r"L9H0"),
    ("measure-infra-device", ["measure", "tiny-neo", "--device", "cuda:7"], exit_codes.INFRASTRUCTURE, r"cuda"),
    ("measure-usage-device", ["measure", "tiny-neo", "--device", "gpu0"], exit_codes.USAGE, r"did you mean cuda:0"),
    ("audit-held", ["audit", "holds.yaml", "--checkpoint", "tiny-neo"], exit_codes.HELD, ""),
    ("audit-failed", ["audit", "fails.yaml", "--checkpoint", "tiny-neo"], exit_codes.FAILED, ""),
    ("audit-spec", ["audit", "invalid.yaml", "--checkpoint", "tiny-neo"], exit_codes.USAGE, r"invalid\.yaml:\d+:\d+"),
    ("audit-infra", ["audit", "holds.yaml", "--checkpoint", "./notamodel"], exit_codes.INFRASTRUCTURE, r"notamodel"),
    ("report-failed", ["report", "fails.yaml", "-o", "rep"], exit_codes.FAILED, ""),
    ("report-usage", ["report", "missing.yaml", "-o", "rep"], exit_codes.USAGE, r"missing\.yaml: no such spec"),
    ("report-infra", ["report", "holds.yaml", "-o", "r", "--model", "./notamodel"], exit_codes.INFRASTRUCTURE, ""),
    ("track-held", ["track", "holds.yaml", "--checkpoint", "tiny-neo", "--order", "given"], exit_codes.HELD, ""),
    ("track-failed", ["track", "fails.yaml", "--checkpoint", "tiny-neo", "--order", "given"], exit_codes.FAILED, ""),
    ("track-usage", ["track", "holds.yaml", "--checkpoints", "nothing-*"], exit_codes.USAGE, r"matches nothing"),
    ("track-infra", [*TRACK_BOTH], exit_codes.INFRASTRUCTURE, ""),
    ("merge-usage", ["track", "merge", "notamodel"], exit_codes.USAGE, r"no track state"),
]


@pytest.mark.parametrize(("argv", "code", "said"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_every_verb_exits_by_the_table(
    here: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, said: str
) -> None:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == code, err
    if said:
        assert re.search(said, err), err
    if code not in (exit_codes.HELD, exit_codes.FAILED):
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_an_unavailable_checkpoint_is_reported_and_the_others_still_run(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([*TRACK_BOTH])
    out = capsys.readouterr().out
    assert status == exit_codes.INFRASTRUCTURE
    flat = " ".join(out.split())  # the reason is wrapped at 120 columns
    assert re.search(r"unavailable: notamodel: model '\S*notamodel': \S*notamodel is not a model folder", flat), out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert re.search(r"^l0h0_previous_token +1\.0000 +UNAVAILABLE$", out, re.M), out


def test_internal_errors_exit_3_and_say_how_to_see_the_traceback(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours cannot be caused for real by input: the verb's worker is replaced by one that raises."""
    from interp_assert.commands import measure

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(measure, "measure_model", broken)
    assert main(["measure", "tiny-neo"]) == exit_codes.INTERNAL
    err = capsys.readouterr().err
    assert err.startswith("interp-assert: internal error: KeyError: 'a bug'") and "--debug" in err


def test_out_of_memory_and_full_disks_are_infrastructure() -> None:
    import errno

    import torch

    assert exit_codes.code_for(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == 69
    assert exit_codes.code_for(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory")) == 69
    assert exit_codes.code_for(MemoryError()) == 69
    assert exit_codes.code_for(OSError(errno.ENOSPC, "No space left on device")) == 69
    assert exit_codes.code_for(FileNotFoundError(errno.ENOENT, "No such file")) == exit_codes.USAGE
    assert exit_codes.code_for(RuntimeError("shape mismatch")) == exit_codes.INTERNAL
    assert exit_codes.worst(exit_codes.FAILED, exit_codes.INFRASTRUCTURE) == exit_codes.INFRASTRUCTURE
    assert exit_codes.worst(exit_codes.HELD, exit_codes.FAILED) == exit_codes.FAILED


def test_the_docs_and_help_show_the_table() -> None:
    ci_page = (Path(__file__).resolve().parents[2] / "docs" / "ci.md").read_text()
    assert exit_codes.markdown_table() in ci_page, "paste exit_codes.markdown_table() into docs/ci.md"
    from interp_assert.commands.cli import EPILOG

    for entry in exit_codes.TABLE:
        assert re.search(rf"^  {entry.code} +\S", EPILOG, re.M), entry


def test_json_outputs_carry_the_schema_version(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = load_schema()
    assert SCHEMA_PATH.parent == Path(__file__).resolve().parents[2] / "interp_assert"
    assert (SCHEMA_PATH.parent / "spec.schema.json").is_file()  # shipped side by side
    documents = {}
    assert main(["audit", "holds.yaml", "--checkpoint", "tiny-neo", "--json"]) == 0
    documents["audit"] = json.loads(capsys.readouterr().out)
    assert main(["measure", "tiny-neo", "--role", "previous_token", "--json"]) == 0
    documents["measure"] = json.loads(capsys.readouterr().out)
    argv = ["track", "holds.yaml", "--checkpoint", "tiny-neo", "--order", "given", "--json", "t.json", "--out", "state"]
    assert main(argv) == 0
    documents["track"] = json.loads((here / "t.json").read_text())
    documents["track-state"] = json.loads((here / "state" / "interp-track.json").read_text())
    documents["track-checkpoint"] = json.loads((here / "state" / "checkpoints" / "tiny-neo.json").read_text())
    for kind, document in documents.items():
        assert document["schema_version"] == SCHEMA_VERSION and document["kind"] == kind
        _conforms(document, schema["$defs"][kind], kind)


def _conforms(document: object, schema: dict[str, object], where: str) -> None:
    """The parts of JSON Schema the shipped schema uses: type, const, required, properties, items."""
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool}
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)  # type: ignore[arg-type]
        ok = any(document is None if t == "null" else isinstance(document, kinds[t]) for t in allowed)
        assert ok, f"{where}: {document!r} is not {allowed}"
    if "const" in schema:
        assert document == schema["const"], where
    if isinstance(document, dict):
        for key in schema.get("required", []):  # type: ignore[attr-defined]
            assert key in document, f"{where}: no {key!r}"
        for key, sub in schema.get("properties", {}).items():  # type: ignore[attr-defined]
            if key in document:
                _conforms(document[key], sub, f"{where}.{key}")
    if isinstance(document, list) and "items" in schema:
        for index, item in enumerate(document):
            _conforms(item, schema["items"], f"{where}[{index}]")  # type: ignore[arg-type]


def test_audit_of_several_checkpoints_measures_the_base_once(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checkpoints (a copy of tiny-neo, and one whose L0H0 attends uniformly: its queries zeroed)
    against one measurement of the base; the Markdown summary says which keeps what."""
    import shutil

    from safetensors.torch import load_file, save_file

    import interp_assert.runner as runner_module

    broken = here / "zeroed"
    shutil.copytree(TINY, broken)
    shutil.copytree(TINY, here / "same")
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("h.0.attn.attention.q_proj.weight"))
    weights[name] = weights[name].clone()
    weights[name][:16] = 0.0  # head 0 of 4 (16 of 64 query rows): uniform attention, no previous-token head
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})

    measured = []
    real = runner_module.measure

    def counting(loaded: object, *args: object) -> object:
        measured.append(getattr(loaded, "source", "?"))
        return real(loaded, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "measure", counting)  # the runner's one capture call
    argv = ["audit", "holds.yaml", "--checkpoint", "./same", "--checkpoint", "./zeroed", "--markdown", "pr.md"]
    status = main(argv)
    out = capsys.readouterr().out
    assert status == exit_codes.FAILED, out
    assert measured.count(TINY) == 1, measured  # the base (the built-in tiny-neo), once for both checkpoints
    assert "1 of 2 checkpoints keep every expectation; failing: ./zeroed" in out
    markdown = (here / "pr.md").read_text()
    assert "### ✅ interp_assert audit of `./same`" in markdown
    assert "### ❌ interp_assert audit of `./zeroed`" in markdown
    assert re.search(r"^\| ❌ l0h0_previous_token \| head_score \| 1\.0000 \| 0\.\d+ \| -0\.\d+ \|$", markdown, re.M)

    assert main([*argv[:6], "--json"]) == exit_codes.FAILED
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "audit-set" and [a["checkpoint"] for a in document["audits"]] == ["./same", "./zeroed"]
    _conforms(document, load_schema()["$defs"]["audit-set"], "audit-set")


def test_the_command_line_parses_without_torch() -> None:
    """``interp-assert --help`` (and a usage error) answer at once: building the parser, the new
    flags' types included, imports no torch."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom interp_assert.commands.cli import build_parser, track_command\n"
        "build_parser().parse_args(['track', 's.yaml', '--shard', '2/4', '--retries', '1'])\n"
        "track_command.merge_parser('interp-assert', print)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_smoke_audit_says_so_everywhere(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smoke = "smoke run: 1 prompts per set"
    argv = ["audit", "holds.yaml", "--checkpoint", "tiny-neo", "--interp-limit", "1"]
    assert main([*argv, "--markdown", "pr.md"]) == exit_codes.HELD
    out = capsys.readouterr().out
    assert out.startswith(f"{smoke}: not a full audit\n") and f"({smoke}: not a full audit)" in out
    assert f"**{smoke}: not a full audit**" in (here / "pr.md").read_text()
    assert main([*argv, "--json"]) == exit_codes.HELD
    document = json.loads(capsys.readouterr().out)
    assert document["smoke"] == smoke
    _conforms(document, load_schema()["$defs"]["audit"], "audit")
    assert main([*argv, "--report", "rep"]) == exit_codes.USAGE  # a report would not say it
    assert "a smoke run writes no report" in capsys.readouterr().err and not (here / "rep").exists()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--shard", "0/4"], r"--shard 0/4: I must be 1 to N"),
        (["--shard", "5/4"], r"--shard 5/4: I must be 1 to N"),
        (["--shard", "half"], r"--shard 'half' is not I/N"),
        (["--shard", "1/2"], r"--shard 1/2 needs --out DIR"),
        (["--retries", "-1"], r"'-1' is not a whole number from 0 to 100"),
        (["--interp-limit", "0"], r"'0' is not a whole number from 0 to 100|at least 1"),
        (["--out", "holds.yaml"], r"--out holds\.yaml is a file; give a folder"),
    ],
)
def test_track_refuses_bad_state_flags_in_one_line(
    here: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    try:
        status = main(["track", "holds.yaml", "--checkpoint", "tiny-neo", "--order", "given", *flags])
    except SystemExit as exc:  # argparse: exit 2 with its usage line
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == exit_codes.USAGE and re.search(said, err), err
    assert "Traceback" not in err
