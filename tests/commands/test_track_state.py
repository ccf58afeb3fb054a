"""``track --out DIR`` resumes after a real ``kill -9``, ``--shard I/N`` + ``track merge`` equal one
run, and nothing stale is reused: on the shipped phase-change checkpoints (a real training run)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from interp_assert.commands.cli import main
from tests.conftest import REPO

STEPS = (0, 100, 200, 250, 500, 1000)
SPEC = "examples/phase-change/spec.yaml"


def checkpoint_args() -> list[str]:
    return [arg for step in STEPS for arg in ("--checkpoint", f"examples/phase-change/checkpoint-{step}")]


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """A track's JSON without what differs between two runs of the same numbers: seconds."""
    for checkpoint in document["checkpoints"]:
        checkpoint.pop("seconds")
    return document


def table(out: str) -> str:
    """The printed track without the lines that differ between runs (timings, what was reused, files written)."""
    varies = (" s per checkpoint", " reused from ", "wrote ")
    return "\n".join(line for line in out.splitlines() if not any(text in line for text in varies))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """One run over the six checkpoints, in one process, without a state folder."""
    here = tmp_path_factory.mktemp("whole")
    with contextlib.chdir(REPO):
        code, out = _cli(
            "track", SPEC, *checkpoint_args(), "--json", str(here / "t.json"), "--report", str(here / "rep")
        )
    assert code == 0, out
    return comparable(json.loads((here / "t.json").read_text())), out, here / "rep"


def test_a_killed_track_resumes_where_it_stopped(
    uninterrupted: tuple[dict[str, Any], str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    state = tmp_path / "state"
    command = [
        sys.executable,
        "-m",
        "interp_assert.commands.cli",
        "track",
        SPEC,
        *checkpoint_args(),
        "--out",
        str(state),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 120
    try:
        while not list((state / "checkpoints").glob("checkpoint-*.json")) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # kill -9: no handler runs, no file is closed cleanly
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (state / "checkpoints").glob("checkpoint-*.json"))
    assert 1 <= len(done) < len(STEPS), done
    # what else a crash can leave: a file cut short (a disk that filled, a copy interrupted)
    cut = state / "checkpoints" / done[0]
    cut.write_text(cut.read_text()[:40])

    code, out = _cli("track", SPEC, *checkpoint_args(), "--out", str(state), "--json", str(tmp_path / "t.json"))
    assert code == 0, out
    measured = len(STEPS) - len(done) + 1
    assert f"{measured} checkpoint(s) measured, {len(done) - 1} reused from {state}" in out
    document, whole_out, _ = uninterrupted
    assert comparable(json.loads((tmp_path / "t.json").read_text())) == document
    assert table(out) == table(whole_out)

    # a third run has nothing left to measure
    code, out = _cli("track", SPEC, *checkpoint_args(), "--out", str(state))
    assert code == 0 and f"0 checkpoint(s) measured, {len(STEPS)} reused" in out


def test_shards_merge_into_the_uninterrupted_track(
    uninterrupted: tuple[dict[str, Any], str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    shards = [tmp_path / f"shard-{i}" for i in (1, 2, 3)]
    for index, folder in enumerate(shards, start=1):
        code, out = _cli("track", SPEC, *checkpoint_args(), "--out", str(folder), "--shard", f"{index}/3")
        assert code == 0, out  # a shard leaves the verdict to the merge
        measured = sorted(p.stem for p in (folder / "checkpoints").glob("*.json"))
        assert measured == sorted(f"checkpoint-{STEPS[k]}" for k in range(index - 1, len(STEPS), 3))
    with pytest.raises(Exception, match=r"2 of 6 checkpoints were measured in none"):
        from interp_assert.commands.track_state import merge

        merge(shards[:2])
    assert _cli("track", "merge", str(shards[0]), str(shards[1]))[0] == 69  # incomplete: infrastructure

    json_path, report = tmp_path / "merged.json", tmp_path / "rep"
    code, out = _cli("track", "merge", *map(str, reversed(shards)), "--json", str(json_path), "--report", str(report))
    document, whole_out, whole_report = uninterrupted
    assert code == 0, out
    assert comparable(json.loads(json_path.read_text())) == document
    assert table(out) == table(whole_out)
    pictures = sorted(p.name for p in whole_report.glob("*.png"))
    assert pictures and pictures == sorted(p.name for p in report.glob("*.png"))
    for name in pictures:  # the same numbers draw the same figures
        assert (report / name).read_bytes() == (whole_report / name).read_bytes(), name


def test_a_changed_spec_or_checkpoint_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for step in (0, 250):
        shutil.copytree(REPO / f"examples/phase-change/checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    spec = tmp_path / "spec.yaml"
    spec.write_text((REPO / SPEC).read_text())
    argv = ("track", "spec.yaml", "--checkpoints", "checkpoint-*", "--out", "state")
    assert "2 checkpoint(s) measured, 0 reused" in _cli(*argv)[1]
    assert "0 checkpoint(s) measured, 2 reused" in _cli(*argv)[1]
    spec.write_text(spec.read_text().replace("at_least: 0.6", "at_least: 0.61"))  # one bound
    assert "2 checkpoint(s) measured, 0 reused" in _cli(*argv)[1]
    weights = tmp_path / "checkpoint-250" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert "1 checkpoint(s) measured, 1 reused" in _cli(*argv)[1]


def test_an_out_folder_of_the_users_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine\n")
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", err)
        code = main(["track", SPEC, "--checkpoint", "examples/phase-change/checkpoint-0", "--out", str(mine)])
    assert code == 2 and "is not empty and holds no interp-track.json (todo.txt)" in err.getvalue()
    assert sorted(p.name for p in mine.iterdir()) == ["todo.txt"]


def test_retries_are_opt_in_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "examples/phase-change/checkpoint-0", tmp_path / "checkpoint-0")
    broken = tmp_path / "checkpoint-50"
    shutil.copytree(REPO / "examples/phase-change/checkpoint-50", broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    (tmp_path / "spec.yaml").write_text((REPO / SPEC).read_text())
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", err)
        code, out = _cli("track", "spec.yaml", "--checkpoints", "checkpoint-*", "--retries", "2")
    assert code == 69
    assert err.getvalue().count("checkpoint-50: model") == 2 and "retry 2 of 2" in err.getvalue()
    assert "unavailable: checkpoint-50: " in out and "(after 2 retries)" in out
    assert "FAIL 0.0592" in out  # checkpoint-0 was measured


def test_a_smoke_track_is_marked_everywhere_and_kept_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    outputs = (
        "--out",
        str(tmp_path / "state"),
        "--json",
        str(tmp_path / "t.json"),
        "--markdown",
        str(tmp_path / "t.md"),
    )
    argv = ("track", SPEC, "--checkpoint", "examples/phase-change/checkpoint-0", "--checkpoint",
            "examples/phase-change/checkpoint-1000", *outputs, "--report", str(tmp_path / "rep"))  # fmt: skip
    code, full = _cli(*argv)
    assert code == 0 and "2 checkpoint(s) measured" in full
    code, out = _cli(*argv, "--interp-limit", "1", "--force")
    assert code == 0
    assert out.splitlines()[1].startswith("smoke run: 1 prompts per set: track of ")
    assert (
        "smoke run: 1 prompts per set: 2 checkpoint(s) measured, 0 reused" in out
    )  # a full run's cells are not reused
    assert "(smoke run: 1 prompts per set)" in " ".join(out.split())  # the summary line, wrapped
    assert json.loads((tmp_path / "t.json").read_text())["smoke"] == "smoke run: 1 prompts per set"
    assert "(smoke run: 1 prompts per set)" in (tmp_path / "t.md").read_text().splitlines()[0]
    assert "SMOKE RUN: 1 PROMPTS PER SET" in (tmp_path / "rep" / "index.html").read_text()
    assert table(out) != table(full)  # one prompt gives other numbers than eight
