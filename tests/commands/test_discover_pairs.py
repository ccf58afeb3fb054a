"""``discover`` with prompt pairs: attribution screening, exact confirmation, and a spec that passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp_assert.spec import load_spec
from tests.commands.test_cli import run

# tiny-neo was trained on repeated random blocks: the second "{A} {B}" is followed by what
# followed it the first time. The corrupt prompt puts W there instead, so it points at W.
PAIR_PROMPTS = """\
prompts:
  copies:
    bos: prepend
    pair_template:
      texts:
        - "{A} {B} {X} {D} {E} t60 {A} {B}"
        - "{D} {A} {B} {X} t61 {E} {A} {B}"
        - "t62 {E} {A} {B} {X} {D} {A} {B}"
      fills:
        - {A: t5, B: t9, C: t14, D: t20, E: t33, W: t41}
        - {A: t7, B: t12, C: t25, D: t30, E: t44, W: t50}
        - {A: t8, B: t17, C: t22, D: t35, E: t47, W: t55}
        - {A: t10, B: t19, C: t28, D: t38, E: t52, W: t57}
      clean: {X: C}
      corrupt: {X: W}
      answer: " {C}"
      wrong: " {W}"
"""


def test_discover_with_pairs_writes_a_spec_that_passes(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = pytester.path / "prompts.yaml"
    prompts.write_text(PAIR_PROMPTS)
    target = pytester.path / "model_specs" / "discovered.yaml"
    code, _, err = run(capsys, "discover", "tiny-neo", "-o", str(target), "--prompts", str(prompts))
    assert code == 0, err
    text = target.read_text()
    assert "property: logit_diff" in text and "property: patching" in text, text
    assert "pair_template:" in text and "texts: [" in text
    # the screen is compared with exact patching, and the comparison is said
    assert "discover: copies (denoise): attribution vs exact total effect over the 8 screened heads" in err
    assert "rank correlation" in text
    spec = load_spec(target)
    assert not spec.problems()
    result = pytester.runpytest("model_specs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(spec.entries))
    assert len(spec.entries) >= 3


def test_report_draws_single_head_effect_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PAIR_PROMPTS)
    target = tmp_path / "model_specs" / "discovered.yaml"
    assert run(capsys, "discover", "tiny-neo", "-o", str(target), "--prompts", str(prompts))[0] == 0
    code, _, err = run(capsys, "report", str(target), "-o", str(tmp_path / "report"))
    assert code == 0, err
    drawn = sorted(p.name for p in (tmp_path / "report").rglob("patching-*.png"))
    assert drawn == ["patching-largest_direct_effect_denoise.png", "patching-largest_direct_effect_noise.png"]
    page = next((tmp_path / "report").rglob("*.html")).read_text()
    assert "every head patched alone, denoise, direct effect" in page
