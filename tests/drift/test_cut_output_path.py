"""A fine-tune can keep a head's attention pattern and still cut what the head writes. The
shipped SmolLM2 spec, run against a copy whose three induction heads have their output
projection columns zeroed, must pass every attention expectation and fail the ablation and
the repeated-token snapshot: the findings about what heads do catch what patterns miss."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO

CUT_HEADS = ((17, 3), (17, 4), (18, 6))
ATTENTION_PROPERTIES = {
    "head_score",
    "top_heads",
    "layer_score",
    "dominant_layer",
    "role_fraction",
    "attention_stat",
    "sink_rate",
}


@pytest.fixture(scope="module")
def cut_checkpoint(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    width = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, head in CUT_HEADS:
            model.model.layers[layer].self_attn.o_proj.weight[:, head * width : (head + 1) * width] = 0
    target = tmp_path_factory.mktemp("cut") / "smollm2-cut"
    model.save_pretrained(target)
    for file in smollm2_dir.iterdir():
        if "token" in file.name:
            shutil.copy(file, target / file.name)
    return target


def test_cut_output_path_passes_attention_but_fails_ablation_and_snapshot(
    pytester: pytest.Pytester, cut_checkpoint: Path
) -> None:
    specs = pytester.path / "model_specs"
    specs.mkdir()
    shutil.copy(REPO / "model_specs" / "smollm2-135m-instruct.yaml", specs)
    shutil.copytree(REPO / "model_specs" / "__snapshots__", specs / "__snapshots__")
    junit = pytester.path / "junit.xml"
    pytester.runpytest(
        str(specs / "smollm2-135m-instruct.yaml"),
        f"--interp-model=smollm2-135m-instruct={cut_checkpoint}",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
    )
    results = {}
    for case in ET.parse(junit).iter("testcase"):
        found = {p.get("name"): p.get("value") for p in case.iter("property")}
        results[case.get("name")] = (found.get("property"), found.get("passed"), found.get("headline", ""))
    attention = {name: r for name, r in results.items() if r[0] in ATTENTION_PROPERTIES}
    assert len(attention) >= 15
    assert all(passed == "true" for _, passed, _ in attention.values()), attention
    # the induction heads still attend as before (their scores are in the spec) ...
    assert results["l18h6_induction"][1] == "true" and results["l17h3_induction"][1] == "true"
    # ... but what they write is gone: the ablation finds nothing left to remove, and the loss moved
    ablation = results["induction_heads_carry_the_copy"]
    assert ablation[1] == "false" and "short by" in ablation[2], ablation
    assert results["repeated_fingerprint"][1] == "false", results["repeated_fingerprint"]
    assert (specs / "__snapshots__" / "smollm2-135m-instruct.ambr").read_bytes() == (
        REPO / "model_specs" / "__snapshots__" / "smollm2-135m-instruct.ambr"
    ).read_bytes()


@pytest.fixture(scope="module")
def tiny_neo_without_its_induction_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-neo with L1H0's 16 columns of the attention output projection zeroed."""
    from transformers import AutoModelForCausalLM

    from interp_assert.measure.loading.models import BUILTIN_MODELS

    source = BUILTIN_MODELS / "tiny-neo"
    model = AutoModelForCausalLM.from_pretrained(source)
    model.transformer.h[1].attn.attention.out_proj.weight.data[:, 0:16] = 0
    target = tmp_path_factory.mktemp("neo") / "neo-cut"
    model.save_pretrained(target)
    for file in source.iterdir():
        if "token" in file.name:
            shutil.copy(file, target / file.name)
    return target


def test_tiny_neo_audit_of_a_cut_induction_head(tiny_neo_without_its_induction_output: Path) -> None:
    """The same story on tiny-neo, through audit: patterns unchanged to 4 decimals, both ablation
    findings gone (L0H0 matters only through L1H0), the causal snapshot moved."""
    from interp_assert.commands.audit import run_audit

    audit = run_audit(str(REPO / "model_specs" / "tiny-neo.yaml"), str(tiny_neo_without_its_induction_output))
    rows = {row.name: row for row in audit.rows}
    for row in rows.values():
        if row.kind in ATTENTION_PROPERTIES:
            assert row.checkpoint.passed and row.checkpoint.shown == row.base.shown, row
    for name in ("l0h0_ablation_breaks_copying", "l1h0_mean_ablation_breaks_copying"):
        assert rows[name].base.passed and not rows[name].checkpoint.passed
        assert abs(float(rows[name].checkpoint.value or 0)) < 0.1  # nothing left to remove
    drift = audit.drifts
    assert not drift["causal_fingerprint"].within
    assert "layer_ablation: 2 of 2 beyond" in "\n".join(drift["causal_fingerprint"].details)
