"""``interp-assert measure`` and the frequent-token flag (attribution), on real models."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from interp_assert.commands.cli import main
from interp_assert.measure.capture import attribution

COMMAS = """\
prompts:
  lists:
    bos: prepend
    texts: ["We bought apples, pears, plums, grapes, lemons, limes, melons, figs, dates, cherries, peaches and kiwis."]
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_row_scores_follow_the_role_definitions() -> None:
    tokens = ["<s>", "a", ",", "b", ",", "a"]
    size = len(tokens)
    pattern = np.tril(np.ones((size, size)))
    pattern /= pattern.sum(axis=1, keepdims=True)  # uniform causal attention
    previous = attribution.row_scores(pattern, tokens, "previous_token")
    assert np.isnan(previous[0]) and previous[3] == pytest.approx(1 / 4)
    duplicate = attribution.row_scores(pattern, tokens, "duplicate_token")
    assert np.isnan(duplicate[3]) and duplicate[4] == pytest.approx(1 / 5) and duplicate[5] == pytest.approx(1 / 6)
    induction = attribution.row_scores(pattern, tokens, "induction")  # key j counts when token[j-1] == token[i]
    assert induction[4] == pytest.approx(1 / 5) and induction[5] == pytest.approx(1 / 6) and np.isnan(induction[3])


def test_a_score_carried_by_one_frequent_token_is_flagged() -> None:
    tokens = ["<s>", "x", ",", "y", ",", "z", ",", "w", ",", "v"]
    rows = np.full(len(tokens), np.nan)
    rows[[4, 6, 8]] = 0.9  # commas attend to earlier commas
    rows[9] = 0.1
    found = attribution.dominant_token(rows, tokens)
    assert found is not None and found.token == "," and found.rows == 3 and found.share == pytest.approx(2.7 / 2.8)
    rows[[6, 8]] = np.nan  # one comma row only: not a frequent token
    assert attribution.dominant_token(rows, tokens) is None


@pytest.mark.slow
def test_measure_names_top_heads_and_flags_commas(tmp_path: Path) -> None:
    prompts = tmp_path / "commas.yaml"
    prompts.write_text(COMMAS)
    code, out, _ = run(
        "measure", "smollm2-135m-instruct", "--prompts", str(prompts), "--role", "duplicate_token", "--head", "L16H0"
    )
    assert code == 0
    assert "duplicate_token: L0H1 0.9" in out and "L16H0: duplicate_token" in out
    assert (
        "flag: L0H1's duplicate_token score comes mostly from one token: 100% of it from the 9 rows whose "
        "query is ','" in out
    )


def test_measure_json_on_tiny_neo() -> None:
    code, out, _ = run("measure", "tiny-neo", "--role", "induction", "--head", "L1H0", "--json")
    assert code == 0
    document = json.loads(out)
    repeated = next(s for s in document["prompt_sets"] if s["name"] == "repeated")
    assert repeated["top_heads"]["induction"][0][0] == "L1H0" and repeated["top_heads"]["induction"][0][1] > 0.99
    assert repeated["heads"]["L1H0"]["induction"] > 0.99 and len(repeated["hidden_norms"]) == 3


def test_measure_rejects_a_head_the_model_lacks() -> None:
    code, _, err = run("measure", "tiny-neo", "--head", "L7H0")
    assert code == 2 and "--head L7H0: this model has layers 0-1 and heads 0-3" in err


@pytest.mark.slow
def test_failure_text_flags_a_token_driven_score(pytester: pytest.Pytester) -> None:
    spec = COMMAS.replace("prompts:\n", "model: smollm2-135m-instruct\nprompts:\n", 1) + (
        "expectations:\n  - name: commas\n    property: head_score\n    head: L0H1\n    role: duplicate_token\n"
        "    prompts: lists\n    at_least: 0.99\n"
    )
    (pytester.path / "model_specs").mkdir()
    (pytester.path / "model_specs" / "lists.yaml").write_text(spec)
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*flag: L0H1's duplicate_token score comes mostly from one token: * ','*"])


@pytest.mark.slow
def test_discover_flags_token_driven_heads(tmp_path: Path) -> None:
    prompts = tmp_path / "commas.yaml"
    prompts.write_text(COMMAS)
    code, _, err = run("discover", "smollm2-135m-instruct", "--prompts", str(prompts), "-o", str(tmp_path / "d.yaml"))
    assert code == 0, err
    text = (tmp_path / "d.yaml").read_text()
    assert "duplicate_token" in text and "flag: 100% of it comes from the 9 rows whose query is ','" in text


def test_failure_diagnostics_capture_only_the_head_pattern(tmp_path: Path) -> None:
    """Each failing head expectation's token flag needs one head's pattern: it must not repeat the
    spec's whole capture (here one ablation per layer) once per failure."""
    from interp_assert.run_options import RunOptions
    from interp_assert.runner import Runner
    from interp_assert.spec import load_spec

    heads = "".join(
        f"  - name: sink_{head}\n    property: head_score\n    head: {head}\n    role: first_token\n"
        f"    prompts: rep\n    at_least: 0.999\n"
        for head in ("L0H0", "L0H1", "L1H2")
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "model: tiny-neo\nprompts:\n  rep:\n    bos: prepend\n"
        "    random_tokens: {length: 8, repeats: 2, count: 2, seed: 1}\n"
        "expectations:\n  - name: fingerprint\n    property: snapshot\n    prompts: rep\n"
        "    covers: [hidden_norms, layer_ablation]\n" + heads
    )
    spec = load_spec(spec_path)
    runner = Runner(RunOptions())
    outcomes = [runner.evaluate(spec, entry) for entry in spec.entries]
    assert [outcome.passed for outcome in outcomes[1:]] == [False, False, False]
    requests = [key[2] for key in runner._measurements]
    assert sum(request.layer_ablations for request in requests) == 1, requests
    assert sum(bool(request.patterns) for request in requests) == 3  # one pattern capture per failing head
