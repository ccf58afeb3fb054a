"""Fine-tuned checkpoints built from the SmolLM2 weights: a broken head, tiny noise, a LoRA adapter.

The spec names SmolLM2; each checkpoint runs in its place through --interp-model
(pytest) and through ``interp-assert audit``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from interp_assert.commands.cli import main_audit
from tests.builders import perturbed_copy
from tests.finetunes import quiet_peft

SPEC = """\
model: smollm2-135m-instruct
prompts:
  prose:
    bos: prepend
    texts: ["The old lighthouse keeper climbed the spiral stairs every evening to light the lamp."]
expectations:
  - name: l16h0_previous_token
    property: head_score
    head: L16H0
    role: previous_token
    prompts: prose
    at_least: 0.6
  - name: l18h8_first_token
    property: head_score
    head: L18H8
    role: first_token
    prompts: prose
    at_least: 0.95
  - name: fingerprint
    property: snapshot
    prompts: prose
"""
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def checkpoints(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    zeroed = perturbed_copy(smollm2_dir, root / "zeroed", zero_query_head=(16, 0))
    noisy = perturbed_copy(smollm2_dir, root / "noisy", noise=1e-4)
    return {"zeroed": zeroed, "noisy": noisy, "lora": lora_adapter(smollm2_dir, root / "lora")}


def lora_adapter(base: Path, target: Path) -> Path:
    """A LoRA adapter as initialised by peft: B is zero, so it changes nothing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(0)
    with quiet_peft():
        adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=True))
    b_weights = [p for name, p in adapted.named_parameters() if "lora_B" in name]
    assert b_weights and all(float(p.detach().abs().max()) == 0.0 for p in b_weights)
    adapted.save_pretrained(target)
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    return target


@pytest.fixture
def spec_dir(pytester: pytest.Pytester) -> Path:
    path = pytester.path / "model_specs" / "smol.yaml"
    path.parent.mkdir()
    path.write_text(SPEC)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=3)
    return path


def test_zeroed_head_fails_its_expectation_and_the_snapshot(
    pytester: pytest.Pytester, spec_dir: Path, checkpoints: dict[str, Path]
) -> None:
    result = pytester.runpytest("model_specs", f"--interp-model={MODEL}={checkpoints['zeroed']}")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "L16H0 previous_token = 0.1" in out
    report = out.split("heads that moved most:")[1].splitlines()
    assert report[1].strip().startswith("L16H0 "), report[:3]
    assert "(label previous_token -> " in report[1]


def test_tiny_noise_passes(pytester: pytest.Pytester, spec_dir: Path, checkpoints: dict[str, Path]) -> None:
    before = (spec_dir.parent / "__snapshots__" / "smol.ambr").read_text()
    result = pytester.runpytest("model_specs", f"--interp-model={MODEL}={checkpoints['noisy']}")
    result.assert_outcomes(passed=3)
    assert (spec_dir.parent / "__snapshots__" / "smol.ambr").read_text() == before


def test_zero_lora_adapter_passes(pytester: pytest.Pytester, spec_dir: Path, checkpoints: dict[str, Path]) -> None:
    result = pytester.runpytest("model_specs", f"--interp-model={MODEL}={checkpoints['lora']}")
    result.assert_outcomes(passed=3)
    # it passes because the adapter changes nothing, not because it was ignored: it was loaded and merged
    result.stdout.fnmatch_lines([f"*adapter '{checkpoints['lora']}': base '*' found at *"])


def test_audit_table_and_exit_codes(spec_dir: Path, checkpoints: dict[str, Path]) -> None:
    out = io.StringIO()
    assert main_audit(str(spec_dir), str(checkpoints["zeroed"]), as_json=False, out=out) == 1
    table = out.getvalue()
    assert "l16h0_previous_token  FAIL" in table and "l18h8_first_token     pass" in table
    assert "snapshot 'fingerprint' drifted" in table and "1 of 3 expectations hold on the checkpoint" in table

    out = io.StringIO()
    assert main_audit(str(spec_dir), str(checkpoints["noisy"]), as_json=True, out=out) == 0
    report = json.loads(out.getvalue())
    assert report["passed"] is True
    row = report["expectations"][0]
    assert row["name"] == "l16h0_previous_token" and abs(row["change"]) < 0.01
    assert abs(row["base"]["value"] - row["checkpoint"]["value"]) < 0.01 and row["bound_low"] == 0.6


def test_audit_against_another_base(spec_dir: Path, checkpoints: dict[str, Path]) -> None:
    """--base compares two checkpoints directly: the zeroed head against the noisy copy."""
    out = io.StringIO()
    code = main_audit(str(spec_dir), str(checkpoints["zeroed"]), out=out, base=str(checkpoints["noisy"]))
    assert code == 1
    table = out.getvalue()
    said = " ".join(table.split())  # prose is wrapped at 120 columns
    assert f"base {str(checkpoints['noisy'])!r} vs checkpoint {str(checkpoints['zeroed'])!r}" in said
    row = next(line for line in table.splitlines() if line.startswith("l16h0_previous_token"))
    base_value, checkpoint_value, change = (float(v) for v in row.split()[2:5])
    assert base_value > 0.6 > checkpoint_value and change == pytest.approx(checkpoint_value - base_value, abs=2e-4)


def test_audit_json_writes_nan_as_null(tmp_path: Path, uniform_llama: Path, random_llama: Path) -> None:
    """An unmeasurable score (induction on text that repeats nothing) is NaN; JSON has no NaN."""
    spec = tmp_path / "nan.yaml"
    spec.write_text(
        f"model: {uniform_llama}\nprompts:\n  words:\n    bos: prepend\n    texts: ['t5 t6 t7 t8 t9']\n"
        "expectations:\n  - name: no_induction_here\n    property: head_score\n    head: L0H0\n"
        "    role: induction\n    prompts: words\n    at_least: 0.1\n"
    )
    out = io.StringIO()
    assert main_audit(str(spec), str(random_llama), as_json=True, out=out) == 1
    document = json.loads(out.getvalue())  # strict: NaN would not parse back as JSON null
    row = document["expectations"][0]
    assert row["base"]["value"] is None and row["checkpoint"]["value"] is None and row["change"] is None
    assert "NaN" not in out.getvalue()


def test_report_outlines_only_moves_beyond_tolerance(tmp_path: Path, random_llama: Path) -> None:
    """Noise far below the tolerance is not drawn as a move, nor as heads that changed label;
    large changes are."""
    from tests.builders import perturbed_copy

    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"model: {random_llama}\nprompts:\n  words:\n    bos: prepend\n    texts: ['t5 t6 t7 t8 t9 t10 t11 t12']\n"
        "expectations:\n  - name: sink\n    property: head_score\n    head: L0H0\n    role: first_token\n"
        "    prompts: words\n    at_least: 0.0\n  - name: fingerprint\n    property: snapshot\n    prompts: words\n"
    )
    noisy = perturbed_copy(random_llama, tmp_path / "noisy", noise=1e-5)
    assert main_audit(str(spec), str(noisy), out=io.StringIO(), report_dir=tmp_path / "quiet") == 0
    page = (tmp_path / "quiet" / "index.html").read_text()
    assert "no head moved by more than the tolerance" in page and "largest moves" not in page
    assert "0 heads changed label" in page
    shaken = perturbed_copy(random_llama, tmp_path / "shaken", noise=30.0)  # sharper attention: scores move
    assert main_audit(str(spec), str(shaken), out=io.StringIO(), report_dir=tmp_path / "moved") == 1
    assert re.search(r"largest moves: L\dH\d [+-]0\.\d{3}", (tmp_path / "moved" / "index.html").read_text())


def test_delta_title_states_the_largest_change_measured() -> None:
    import numpy as np

    from interp_assert.figures.diff_figures import delta_title

    base = np.zeros((2, 3))
    assert delta_title("t", base, base + 0.001) == "t\nlargest |change| 0.001 (colour scale to 0.05)"
    assert delta_title("t", base, base - 0.25) == "t\nlargest |change| 0.25"


def test_generated_prompts_compare_the_same_tokens(tmp_path: Path, random_llama: Path) -> None:
    """A checkpoint that differs only in its unembedding continues the prompt differently, yet no
    attention weight changed: teacher-forced on the base's continuation, every role score is equal."""
    import shutil

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from interp_assert.commands.audit import run_audit
    from interp_assert.spec import load_spec

    other = tmp_path / "other_head"
    shutil.copytree(random_llama, other)
    weights = load_file(other / "model.safetensors")
    weights["lm_head.weight"] = torch.roll(weights["lm_head.weight"], shifts=7, dims=0)  # other next tokens
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    spec_path = tmp_path / "gen.yaml"
    spec_path.write_text(
        f"model: {random_llama}\nprompts:\n  gen:\n    bos: prepend\n    texts: ['t5 t6 t7 t8']\n    generate: 8\n"
        "expectations:\n  - name: prev\n    property: head_score\n    head: L0H0\n    role: previous_token\n"
        "    prompts: gen\n    at_least: 0.0\n  - name: says\n    property: generated_text\n    prompts: gen\n"
        "    contains: t\n"
    )
    audit = run_audit(str(spec_path), str(other))
    spec = load_spec(spec_path)
    base, checkpoint = (audit.runners[side].measurements(spec, "gen") for side in ("base", "checkpoint"))
    assert base.generated_texts != checkpoint.generated_texts  # the continuations diverge
    for role, table in base.role_scores.items():
        np.testing.assert_array_equal(table, checkpoint.role_scores[role], err_msg=role)
    assert any("teacher-forced" in note for note in audit.notes)


def test_adapter_whose_base_is_the_replaced_spec_model_loads_that_base(tmp_path: Path) -> None:
    """``audit SPEC --checkpoint ADAPTER`` maps the spec's model name to the adapter; an adapter
    that names that same model as its base (peft records the name it was loaded by) gets the
    alias, not itself (which recursed without end)."""
    from interp_assert.measure.loading.models import LoadOptions, resolve_adapter_base

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-neo"}))
    options = LoadOptions(overrides=(("tiny-neo", str(adapter)),))
    target, _, how = resolve_adapter_base("tiny-neo", adapter, options)
    assert (target, how) == ("tiny-neo", "the built-in alias 'tiny-neo'")
    other = tmp_path / "elsewhere"
    mapped = LoadOptions(overrides=(("tiny-neo", str(other)),))  # a mapping to another folder still wins
    assert resolve_adapter_base("tiny-neo", adapter, mapped)[0] == str(other)
