"""The shipped SmolLM2 feature and probe spec passes, and an edit that erases the probed
direction from the residual stream fails it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

SPEC = REPO / "model_specs" / "smollm2-features.yaml"
DIRECTIONS = REPO / "model_specs" / "smollm2-features.safetensors"


def copy_spec(pytester: pytest.Pytester) -> Path:
    target = pytester.path / "model_specs"
    target.mkdir(exist_ok=True)
    shutil.copy(SPEC, target / SPEC.name)
    shutil.copy(DIRECTIONS, target / DIRECTIONS.name)
    return target / SPEC.name


def test_smollm2_features_spec_passes(pytester: pytest.Pytester, smollm2_dir: Path) -> None:
    copy_spec(pytester)
    result = pytester.runpytest("model_specs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=SPEC.read_text().count("\n  - name: "))


def erase(model_dir: Path, out: Path, direction: torch.Tensor, last_block: int) -> Path:
    """Concept erasure as a weight edit: every write into the residual stream up to block
    ``last_block`` (embeddings, attention and MLP output projections) projected onto the complement
    of ``direction``, saved with ``save_pretrained``. The residual stream leaving that block then
    has no component along it, whatever the input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    u = (direction / direction.norm()).float()
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight  # [vocab, d]; tied to the unembedding in SmolLM2
        embeddings -= (embeddings @ u)[:, None] * u[None, :]
        for block in model.model.layers[: last_block + 1]:
            for linear in (block.self_attn.o_proj, block.mlp.down_proj):  # [d, in]
                linear.weight -= u[:, None] * (u @ linear.weight)[None, :]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_erasing_the_sentiment_direction_fails_the_probe(
    pytester: pytest.Pytester, smollm2_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    stored = load_file(str(DIRECTIONS))["sentiment_probe"]
    edited = erase(smollm2_dir, tmp_path / "erased", stored, last_block=18)
    copy_spec(pytester)
    result = pytester.runpytest(
        "model_specs", "-p", "no:cacheprovider", "-k", "sentiment", f"--interp-model=smollm2-135m-instruct={edited}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([r".*cosine to the stored direction = -?0\.0\d+, expected at least 0\.\d+ \(short by"])
