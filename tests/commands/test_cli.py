"""The interp-assert command, run in-process, and the specs `discover` writes, run by pytest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from interp_assert.commands.cli import main
from interp_assert.measure.loading.models import BUILTIN_MODELS
from interp_assert.properties.findings import monotone_runs, robust_top_set, round_outward
from interp_assert.spec import load_spec

TEXT_PROMPTS = """\
prompts:
  words:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9 t10 t11 t12 t13 t14 t15 t16", "t20 t21 t22 t23 t24 t25 t26 t27 t28 t29 t30 t31"]
  repeats:
    bos: prepend
    random_tokens: {length: 12, repeats: 2, count: 3, seed: 1}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- help and errors ----


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in ("discover", "report", "audit", "examples:", "MODEL"):
        assert word in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("discover", ["MODEL", "--output", "--prompts", "--threshold", "--max-heads", "--keep", "--dtype", "prose"]),
        ("report", ["SPEC.yaml", "--output", "--model", "--allow-pickle", "heatmap"]),
        ("audit", ["SPEC.yaml", "--checkpoint", "--json"]),
    ],
)
def test_each_command_has_complete_help(capsys: pytest.CaptureFixture[str], command: str, expected: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out, word


def test_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "report", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "out"))
    assert (code, err.count("\n")) == (2, 1)
    assert err.startswith("interp-assert: error: ") and "missing.yaml" in err

    code, _, err = run(capsys, "discover", "no-such/model-anywhere", "-o", str(tmp_path / "x.yaml"))
    assert (code, err.count("\n")) == (69, 1)  # a model that cannot load: infrastructure, not a usage error
    assert "cannot be downloaded offline" in err and "Traceback" not in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nprompts: {}\nexpectations: []\n")
    code, _, err = run(capsys, "report", str(bad), "-o", str(tmp_path / "out"))
    assert (code, err.count("\n")) == (2, 1)
    assert "bad.yaml:" in err


def test_discover_will_not_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "spec.yaml"
    existing.write_text("# hand-written\n")
    code, _, err = run(capsys, "discover", "tiny-neo", "-o", str(existing))
    assert code == 2 and "--force" in err
    assert existing.read_text() == "# hand-written\n"


def test_bad_prompt_file_names_the_prompt_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  words:\n    texts: [a b c]\n")
    code, _, err = run(capsys, "discover", "tiny-neo", "-o", str(tmp_path / "x.yaml"), "--prompts", str(prompts))
    assert code == 2 and err.count("\n") == 1
    assert "prompts.yaml:3:5: prompt set 'words': missing required key 'bos'" in err


# ---- the pieces of discovery that decide what is claimed ----


def test_bounds_round_outward() -> None:
    assert round_outward(0.6315, "down") == 0.63
    assert round_outward(249.9, "down") == 240.0
    assert round_outward(0.0553, "up") == 0.056
    assert round_outward(0.84999, "down") == 0.84


def test_score_bounds_say_near_certain_heads_are_near_certain() -> None:
    """A score falls by at most 15% of itself or 0.05, whichever is less (the rule in docs/discover.md)."""
    from interp_assert.properties.findings import score_lower_bound

    assert score_lower_bound(0.99999, 0.85) == 0.94  # not 0.84: a sink head must stay nearly certain
    assert score_lower_bound(0.74, 0.85) == 0.69
    assert score_lower_bound(0.5, 0.85) == 0.45
    assert score_lower_bound(0.2, 0.85) == 0.17  # low scores keep the fraction


def test_top_set_avoids_near_ties() -> None:
    clear = [("L1H0", 0.9), ("L2H0", 0.8), ("L3H0", 0.5), ("L4H0", 0.4)]
    assert robust_top_set(clear, 2, 0.02) == (["L1H0", "L2H0"], 2)
    # rank 2 and 3 tie: the boundary moves past the tie instead of cutting through it
    tied = [("L1H0", 0.9), ("L2H0", 0.8), ("L3H0", 0.795), ("L4H0", 0.4)]
    assert robust_top_set(tied, 2, 0.02) == (["L1H0", "L2H0"], 3)
    flat = [(f"L{i}H0", 1.0 - i * 0.001) for i in range(12)]
    assert robust_top_set(flat, 3, 0.02) is None


def test_monotone_runs_share_their_ends() -> None:
    norms = np.array([1.0, 2.0, 3.0, 2.5, 2.0, 4.0])
    assert monotone_runs(norms) == [(0, 2, "increasing"), (2, 4, "decreasing"), (4, 5, "increasing")]


# ---- discover, then pytest on what it wrote ----


def discover_and_run(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], model: str, *extra: str
) -> tuple[Path, str]:
    target = pytester.path / "model_specs" / "discovered.yaml"
    code, out, err = run(capsys, "discover", model, "-o", str(target), *extra)
    assert code == 0, err
    assert out.startswith(f"wrote {target}: ")
    text = target.read_text()
    spec = load_spec(target)
    assert not spec.problems()
    result = pytester.runpytest("model_specs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(spec.entries))
    return target, text


def test_discovered_spec_passes_on_its_model(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], random_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the model as a path relative to the working folder, as a user would type it
    shutil.copytree(random_llama, pytester.path / "models" / "llama")
    (pytester.path / "prompts.yaml").write_text(TEXT_PROMPTS)
    monkeypatch.chdir(pytester.path)
    _, text = discover_and_run(pytester, capsys, "models/llama", "--prompts", "prompts.yaml", "--threshold", "0.15")
    assert "\nmodel: ../models/llama\n" in text  # relative to the spec's folder, where it is resolved
    assert text.startswith("# Discovered by `interp-assert discover models/llama`")
    assert "property: head_score" in text and "property: hidden_norm_trend" in text
    assert "property: hidden_norm_ratio" in text and "property: attention_stat" in text
    assert "  words:\n    bos: prepend\n    texts:\n" in text
    assert "random_tokens: {length: 12, repeats: 2, count: 3, seed: 1}" in text
    assert "description: measured " in text


@pytest.mark.skipif(not (BUILTIN_MODELS / "tiny-neo" / "config.json").exists(), reason="tiny-neo not built yet")
def test_discover_finds_tiny_neo_heads(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    _, text = discover_and_run(pytester, capsys, "tiny-neo")
    assert "\nmodel: tiny-neo\n" in text
    assert "property: head_score" in text and "role: induction" in text  # trained on repeated blocks
    # what the induction head does: zeroing it costs nats on the repeats, random heads do not
    assert "property: ablation_effect\n    heads: [L1H0]\n    prompts: repeated\n    positions: [52, -1]" in text
    assert "control: {samples: 5, seed: 0, at_least_times: 10.0}" in text
    # read from the weights: the previous-token head feeds the induction head's keys; it copies
    assert "property: composition\n    composition: K\n    sender: L0H0\n    receiver: L1H0\n    at_least: 41.0" in text
    assert "property: ov_copying\n    head: L1H0\n    at_least: 0.84" in text


@pytest.mark.slow
def test_discover_smollm2(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], smollm2_dir: Path) -> None:
    _, text = discover_and_run(pytester, capsys, "smollm2-135m-instruct")
    # the seed's findings, rediscovered: previous-token, sink and induction heads, norm growth
    for line in ("head: L16H0\n    role: previous_token", "head: L18H8\n    role: first_token", "head: L18H6"):
        assert line in text
    assert "property: ablation_effect\n    heads: [L17H3, L17H4, L18H6]" in text
    assert "property: logit_lens" in text and "first_reaching: 0.5" in text
    assert "name: norm_ratio_last_to_first" in text and "layers: [12, 30]\n    direction: increasing" in text


def test_offline_load_says_nothing_of_hub_kernels(tmp_path: Path) -> None:
    """transformers registers hub attention kernels that are never used here; offline, the kernels
    package would print a 'Skipping publisher trust check' line for each. A fresh process, as a
    user's, so the notice cannot have been said (and swallowed) earlier in this session."""
    import os
    import subprocess
    import sys

    code = "from interp_assert.commands.cli import main; raise SystemExit(main(['measure', 'tiny-neo', '--top', '1']))"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tiny-neo (GPTNeoForCausalLM" in done.stdout
    assert "publisher trust" not in done.stderr + done.stdout
