"""SAE loading and sae_quality's numbers, on closed-form SAEs whose reconstruction is known."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from interp_assert.errors import SaeLoadError
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.features import sae_runs
from interp_assert.measure.features.saes import load_sae
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, load_model
from tests.sae_builders import identity_weights, write_saelens, write_sparsify

WIDTH = 64  # tests/builders.py SMALL_DECODER


@pytest.fixture(scope="module")
def llama(random_llama: Path) -> LoadedModel:
    return load_model(str(random_llama), LoadOptions())


@pytest.fixture(scope="module")
def batches() -> list[PromptBatch]:
    generator = torch.Generator().manual_seed(0)
    return [PromptBatch(torch.randint(3, 64, (3, 12), generator=generator))]


def test_identity_sae_reconstructs_exactly(tmp_path: Path, llama: LoadedModel, batches: list[PromptBatch]) -> None:
    sae = load_sae(str(write_saelens(tmp_path / "sae", identity_weights(WIDTH))))
    found = sae_runs.quality(llama, sae, batches, skip_first=True)
    assert found["l0"] == WIDTH  # every coordinate is non-zero: one of its two latents fires
    assert found["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert found["ce_with_sae"] == pytest.approx(found["ce_clean"], abs=1e-5)
    assert found["ce_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert found["ce_zero_ablated"] > found["ce_clean"]
    assert found["rows"] == 3 * 11


def test_half_decoder_explains_a_known_variance(tmp_path: Path, llama: LoadedModel, batches: list[PromptBatch]) -> None:
    sae = load_sae(str(write_saelens(tmp_path / "sae", identity_weights(WIDTH, decoder_scale=0.5))))
    found = sae_runs.quality(llama, sae, batches, skip_first=False)
    rows = torch.cat([a.reshape(-1, WIDTH) for a in sae_runs.activations(llama, sae.hook, batches)]).double()
    expected = 1 - float((rows / 2).pow(2).sum()) / float((rows - rows.mean(0)).pow(2).sum())
    assert found["explained_variance"] == pytest.approx(expected, abs=1e-6)
    assert found["explained_variance"] < 0.9
    assert 0 < found["ce_recovered"] < 1


def test_topk_and_jumprelu_l0(tmp_path: Path, llama: LoadedModel, batches: list[PromptBatch]) -> None:
    topk = load_sae(str(write_saelens(tmp_path / "topk", identity_weights(WIDTH), architecture="topk", k=5)))
    assert sae_runs.quality(llama, topk, batches, skip_first=True)["l0"] == 5
    weights = identity_weights(WIDTH) | {"threshold": torch.full((2 * WIDTH,), 1e9)}
    closed = load_sae(str(write_saelens(tmp_path / "jump", weights, architecture="jumprelu")))
    found = sae_runs.quality(llama, closed, batches, skip_first=True)
    assert (found["l0"], found["dead_fraction"]) == (0, 1.0)
    assert found["ce_with_sae"] == found["ce_zero_ablated"]  # b_dec = 0: the reconstruction is zeros
    assert found["ce_recovered"] == 0.0


def test_sparsify_and_saelens_read_the_same_sae(tmp_path: Path, llama: LoadedModel) -> None:
    generator = torch.Generator().manual_seed(3)
    weights = {
        "W_enc": torch.randn(WIDTH, 128, generator=generator),
        "b_enc": torch.randn(128, generator=generator),
        "W_dec": torch.randn(128, WIDTH, generator=generator),
        "b_dec": torch.randn(WIDTH, generator=generator),
    }
    saelens = load_sae(str(write_saelens(tmp_path / "a", weights, architecture="topk", hook_name="layers.0", k=7)))
    sparsify = load_sae(str(write_sparsify(tmp_path / "layers.0", weights, k=7)))
    x = torch.randn(10, WIDTH, generator=generator)
    assert torch.equal(saelens.encode(x), sparsify.encode(x))
    assert sparsify.hook == saelens.hook and sparsify.hook.kind == "resid_post"
    assert sparsify.identity["format"] == "sparsify" and len(sparsify.identity["sha256"]) == 64
    sparsify.check_model(llama.model)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (dict(d_in=32), r"reads 32 features at blocks\.1\.hook_resid_pre, but this model \(llama\) is 64 wide"),
        (dict(hook_name="blocks.7.hook_resid_post"), r"names block 7, but this model \(llama\) has blocks 0-1"),
        (dict(hook_name="blocks.1.attn"), r"hook point 'blocks\.1\.attn' is not one interp_assert knows; known: "),
        (dict(architecture="gated"), r"unknown activation \(architecture 'gated'.*known: architecture standard"),
        (dict(missing="W_dec"), r"tensor 'W_dec' is missing; it holds W_enc, b_dec, b_enc"),
        (dict(nan="b_enc"), r"b_enc has 1 NaN or infinite value\(s\) of 64"),
        (dict(architecture="topk"), r"a TopK SAE needs k \(1 to d_sae = 64\), got None"),
    ],
)
def test_bad_saes_are_named(tmp_path: Path, llama: LoadedModel, change: dict[str, object], expect: str) -> None:
    change = dict(change)
    width = int(change.pop("d_in", WIDTH))  # type: ignore[call-overload]
    weights = {"W_enc": torch.zeros(width, 64), "b_enc": torch.zeros(64), "W_dec": torch.zeros(64, width),
               "b_dec": torch.zeros(width)}  # fmt: skip
    weights.pop(str(change.pop("missing", "")), None)
    if "nan" in change:
        weights[str(change.pop("nan"))][3] = math.nan
    folder = write_saelens(tmp_path / "bad", weights, **{"d_in": width, "d_sae": 64, **change})
    with pytest.raises(SaeLoadError, match=expect):
        load_sae(str(folder)).check_model(llama.model)


def test_hub_ids_need_a_revision_and_the_cache(tmp_path: Path) -> None:
    with pytest.raises(SaeLoadError, match=r"a hub id needs a pinned revision: owner/saes@<commit or tag>"):
        load_sae("owner/saes")
    with pytest.raises(SaeLoadError, match=r"owner/saes@v1 is not in the local Hugging Face cache"):
        load_sae("owner/saes@v1:layers.3")
