"""Big models: a device map that splits a model between the CPU and disk offload (accelerate)
measures what the plain load measures, on every capture path, and bad placements are one line.

Real models only: a tiny Llama and a tiny GPT-Neo saved like any checkpoint; the offloaded
layers are read back from disk by accelerate's hooks during each forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from interp_assert.errors import ModelLoadError
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.run import measure
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, environment, input_device, load_model
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.vocab import ROLES
from tests.builders import llama_config, save_model, tiny_config

EVERYTHING = CaptureRequest(
    roles=frozenset(ROLES),
    attention_stats=True,
    hidden_norms=True,
    activation_peaks=True,
    logit_lens=True,
    patterns=frozenset({(1, 0)}),
)
# Layer 0 and the embeddings in memory, layer 1, the final norm and the unembedding on disk.
LLAMA_SPLIT = (
    ("model.embed_tokens", "cpu"),
    ("model.rotary_emb", "cpu"),
    ("model.layers.0", "cpu"),
    ("model.layers.1", "disk"),
    ("model.norm", "disk"),
    ("lm_head", "disk"),
)
NEO_SPLIT = (
    ("transformer.wte", "cpu"),
    ("transformer.wpe", "cpu"),
    ("transformer.drop", "cpu"),
    ("transformer.h.0", "disk"),
    ("transformer.h.1", "cpu"),
    ("transformer.ln_f", "disk"),
    ("lm_head", "cpu"),
)


def _batches() -> list[PromptBatch]:
    import torch

    generator = torch.Generator().manual_seed(0)
    block = torch.randint(4, 64, (2, 12), generator=generator)
    tokens = torch.cat([torch.zeros(2, 1, dtype=torch.long), block, block], dim=1)  # BOS, then a repeated block
    return [PromptBatch(tokens)]


def _same(plain: Measurements, split: Measurements) -> None:
    for role in ROLES:
        np.testing.assert_allclose(split.role_scores[role], plain.role_scores[role], atol=1e-6, err_msg=role)
    for name in ("hidden_norms", "hidden_norms_without_first", "max_weight", "mean_weight"):
        np.testing.assert_allclose(getattr(split, name), getattr(plain, name), rtol=1e-6, atol=1e-6, err_msg=name)
    assert plain.logit_lens is not None and split.logit_lens is not None
    np.testing.assert_allclose(split.logit_lens.agreement, plain.logit_lens.agreement, atol=1e-6)
    np.testing.assert_allclose(split.logit_lens.kl, plain.logit_lens.kl, atol=1e-6)
    assert plain.activation_peaks is not None and split.activation_peaks is not None
    np.testing.assert_allclose(split.activation_peaks.value, plain.activation_peaks.value, rtol=1e-6)
    np.testing.assert_array_equal(split.activation_peaks.position, plain.activation_peaks.position)
    np.testing.assert_allclose(split.patterns[(1, 0)], plain.patterns[(1, 0)], atol=1e-6)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[LoadedModel, LoadedModel]]:
    """(plain load, cpu + disk split load) of a tiny Llama or GPT-Neo."""
    loaded: dict[str, tuple[LoadedModel, LoadedModel]] = {}

    def get(kind: str) -> tuple[LoadedModel, LoadedModel]:
        if kind not in loaded:
            config = llama_config() if kind == "llama" else tiny_config("gpt_neo")
            directory = save_model(config, tmp_path_factory.mktemp(kind), seed=7)
            split = LLAMA_SPLIT if kind == "llama" else NEO_SPLIT
            offload = tmp_path_factory.mktemp(f"{kind}-offload")
            placed = LoadOptions(device_map=split, offload_folder=offload)
            loaded[kind] = (load_model(str(directory), LoadOptions()), load_model(str(directory), placed))
        return loaded[kind]

    return get


@pytest.mark.parametrize("path", ["fused", "blockwise", "eager"])
def test_split_between_cpu_and_disk_measures_like_the_plain_load(models, path) -> None:  # type: ignore[no-untyped-def]
    plain, split = models("llama")
    offloaded = split.model.model.layers[1].self_attn.q_proj.weight
    assert offloaded.device.type == "meta", "layer 1 should live on disk, loaded by accelerate's hook per forward"
    assert split.model.hf_device_map["model.layers.1"] == "disk"
    batches = _batches()
    _same(measure(plain, batches, EVERYTHING, attention=path), measure(split, batches, EVERYTHING, attention=path))


def test_gpt_neo_eager_hooks_compose_with_offload_hooks(models) -> None:  # type: ignore[no-untyped-def]
    plain, split = models("neo")  # GPT-Neo's attention bypasses the AttentionInterface: eager forward hooks
    batches = _batches()
    _same(measure(plain, batches, EVERYTHING), measure(split, batches, EVERYTHING))


def test_inputs_go_to_the_embedding_layer_and_the_placement_is_recorded(models) -> None:  # type: ignore[no-untyped-def]
    _, split = models("llama")
    assert str(input_device(split)) == "cpu"
    recorded = environment(split)
    assert recorded["device_map"].startswith("model.embed_tokens=cpu,")
    assert "model.layers.1=disk" in recorded["device_map"]


def test_auto_device_map_on_a_cpu_machine(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plain, _ = models("llama")
    auto = load_model(plain.source, LoadOptions(device_map="auto", max_memory=(("cpu", 2**30),)))
    batches = _batches()
    _same(measure(plain, batches, EVERYTHING), measure(auto, batches, EVERYTHING))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            LoadOptions(device_map=(("model.layers.0", "cpu"),)),
            r"device_map places no device for parameter\(s\) model\.embed_tokens\.weight, .* and \d+ more; "
            r"give every module a device",
        ),
        (
            LoadOptions(device_map=(("", "cpu"), ("model.blocks.0", "disk"))),
            r"device_map names module 'model\.blocks\.0', which this LlamaForCausalLM does not have",
        ),
        (
            LoadOptions(device_map=(("", "cuda:3"),)),
            r"device_map: device 'cuda:3' (is not available|does not exist)",
        ),
        (
            LoadOptions(max_memory=(("cpu", 2**30),)),
            r"max_memory applies only with a device_map; add device_map: auto",
        ),
    ],
)
def test_bad_placements_are_one_line(models, options: LoadOptions, message: str) -> None:  # type: ignore[no-untyped-def]
    plain, _ = models("llama")
    with pytest.raises(ModelLoadError, match=message) as caught:
        load_model(plain.source, options)
    assert "\n" not in str(caught.value)


def test_ablation_and_losses_through_offloaded_layers(models) -> None:  # type: ignore[no-untyped-def]
    """Head ablation hooks compose with accelerate's: the output projection and the unembedding
    of the disk-offloaded layers give the losses of the plain load."""
    from interp_assert.measure.measurements import AblationRequest

    for kind, heads in (("llama", ((1, 0), (1, 3))), ("gpt_neo", ((0, 1),))):
        plain, split = models(kind)
        wanted = [AblationRequest(heads=heads, mode=mode, controls=1) for mode in ("zero", "mean")]
        request = CaptureRequest(roles=frozenset(["previous_token"]), ablations=frozenset(wanted), layer_ablations=True)
        before, after = measure(plain, _batches(), request), measure(split, _batches(), request)
        assert before.token_losses is not None and after.token_losses is not None
        np.testing.assert_allclose(after.token_losses[0], before.token_losses[0], atol=1e-5)
        for one in wanted:
            np.testing.assert_allclose(after.ablations[one].losses[0], before.ablations[one].losses[0], atol=1e-5)
        np.testing.assert_allclose(after.layer_ablation_losses, before.layer_ablation_losses, atol=1e-5)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA device")
def test_split_between_gpu_and_cpu_measures_like_the_plain_load(tmp_path: Path) -> None:
    """Layer 0 on the GPU, layer 1 and the head on the CPU: every number as on the CPU alone."""
    from interp_assert.measure.measurements import AblationRequest

    directory = save_model(llama_config(), tmp_path / "llama", seed=7)
    split = (
        ("model.embed_tokens", "cuda:0"),
        ("model.rotary_emb", "cuda:0"),
        ("model.layers.0", "cuda:0"),
        ("model.layers.1", "cpu"),
        ("model.norm", "cpu"),
        ("lm_head", "cpu"),
    )
    plain = load_model(str(directory), LoadOptions())
    placed = load_model(str(directory), LoadOptions(device_map=split))
    assert input_device(placed).type == "cuda"
    request = CaptureRequest(
        roles=EVERYTHING.roles,
        attention_stats=True,
        hidden_norms=True,
        activation_peaks=True,
        logit_lens=True,
        patterns=EVERYTHING.patterns,
        ablations=frozenset([AblationRequest(heads=((0, 1), (1, 2)), mode="mean")]),
    )
    before, after = measure(plain, _batches(), request), measure(placed, _batches(), request)
    for role in ROLES:
        np.testing.assert_allclose(after.role_scores[role], before.role_scores[role], atol=2e-5, err_msg=role)
    np.testing.assert_allclose(after.hidden_norms, before.hidden_norms, rtol=2e-5)
    assert after.token_losses is not None and before.token_losses is not None
    np.testing.assert_allclose(after.token_losses[0], before.token_losses[0], atol=2e-5)
