"""The shipped indirect-object spec on SmolLM2: it passes on the model, and a copy whose name-mover
heads (L23H3, L29H1, L23H0) have their output-projection columns zeroed fails its name-mover
findings while the spec file and its numbers stay as shipped."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO

SPEC = REPO / "model_specs" / "smollm2-ioi.yaml"
NAME_MOVERS = ((23, 3), (29, 1), (23, 0))


def run_spec(pytester: pytest.Pytester, *args: str) -> dict[str, tuple[str, str, str]]:
    specs = pytester.path / "model_specs"
    specs.mkdir(exist_ok=True)
    shutil.copy(SPEC, specs)
    junit = pytester.path / "junit.xml"
    pytester.runpytest(str(specs / SPEC.name), f"--junitxml={junit}", "-p", "no:cacheprovider", *args)
    results = {}
    for case in ET.parse(junit).iter("testcase"):
        found = {p.get("name"): p.get("value") for p in case.iter("property")}
        results[str(case.get("name"))] = (
            found.get("passed") or "",
            found.get("headline") or "",
            found.get("value") or "",
        )
    return results


def test_smollm2_ioi_spec_passes(pytester: pytest.Pytester, smollm2_dir: Path) -> None:
    results = run_spec(pytester)
    assert len(results) == SPEC.read_text().count("\n  - name: ") >= 6
    assert all(passed == "true" for passed, _, _ in results.values()), results


@pytest.fixture(scope="module")
def name_movers_cut(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    width = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, head in NAME_MOVERS:
            model.model.layers[layer].self_attn.o_proj.weight[:, head * width : (head + 1) * width] = 0
    target = tmp_path_factory.mktemp("cut") / "smollm2-no-name-movers"
    model.save_pretrained(target)
    for file in smollm2_dir.iterdir():
        if "token" in file.name:
            shutil.copy(file, target / file.name)
    return target


def test_ablated_name_movers_fail_the_spec(pytester: pytest.Pytester, name_movers_cut: Path) -> None:
    results = run_spec(pytester, f"--interp-model=smollm2-135m-instruct={name_movers_cut}")
    failed = {name for name, (passed, _, _) in results.items() if passed != "true"}
    # what the heads write is gone: no direct effect, nothing to restore or destroy through them
    assert {"name_movers_largest_direct_effect", "l23h3_direct_effect", "name_movers_restore"} <= failed, results
    assert {"name_movers_destroy", "l23h0_noise_direct"} <= failed, results
    assert "0.0000" in results["l23h3_direct_effect"][1] or float(results["l23h3_direct_effect"][2]) == 0.0
