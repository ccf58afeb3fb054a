"""Patching against computations written differently: one forward per head with this test's own
hooks (against the batched sweep), direct effects through the modules themselves, and answers
known in closed form (patching the whole residual stream restores exactly 1, destroys exactly -1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from interp_assert.errors import CheckInputError
from interp_assert.measure.capture.prompts import PairBatch, PromptBatch
from interp_assert.measure.counterfactual import patching
from interp_assert.measure.counterfactual.pair_request import PairRequest
from interp_assert.measure.loading.architecture import base_model, model_map
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, load_model
from interp_assert.measure.measurements import Measurements
from interp_assert.measure.pair_requests import Component
from interp_assert.properties.base import CheckContext
from interp_assert.properties.patching import Patching
from tests.builders import save_model, tiny_config

ARCHS = ("llama", "gpt_neo", "gpt2")  # GQA (4 query heads, 2 KV groups); GPT-Neo's eager path; Conv1D


@pytest.fixture(scope="module", params=ARCHS)
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = save_model(tiny_config(request.param), tmp_path_factory.mktemp(request.param))
    return load_model(str(folder), LoadOptions())


def pair_batches(change: tuple[int, ...] = (3,)) -> list[PromptBatch]:
    """Two batches (lengths 9 and 11) of random pairs whose corrupt prompt differs at ``change``."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for index, (size, length) in enumerate(((3, 9), (2, 11))):
        clean = torch.randint(4, 64, (size, length), generator=generator)
        corrupt = clean.clone()
        for position in change:
            corrupt[:, position] = (clean[:, position] + 7 - 4) % 60 + 4
        answer = torch.randint(4, 64, (size,), generator=generator)
        wrong = (answer + 5 - 4) % 60 + 4
        ids = tuple(range(index * 3, index * 3 + size))
        batches.append(PromptBatch(clean, PairBatch(corrupt, answer, wrong, ids)))
    return batches


def logit_diffs(loaded: LoadedModel, tokens: torch.Tensor, batch: PromptBatch) -> np.ndarray:
    assert batch.pairs is not None
    with torch.inference_mode():
        logits = loaded.model(input_ids=tokens).logits[:, -1].double()
    rows = torch.arange(len(tokens))
    return (logits[rows, batch.pairs.answer] - logits[rows, batch.pairs.wrong]).numpy()


def projection_inputs(loaded: LoadedModel, tokens: torch.Tensor) -> list[torch.Tensor]:
    parts = model_map(loaded.model)
    found: list[torch.Tensor] = [torch.empty(0)] * parts.n_layers
    handles = []
    for layer in range(parts.n_layers):

        def keep(module: Any, args: Any, layer: int = layer) -> None:
            found[layer] = args[0].clone()

        handles.append(parts.output_projection(layer).register_forward_pre_hook(keep))
    with torch.inference_mode():
        loaded.model(input_ids=tokens)
    for handle in handles:
        handle.remove()
    return found


def one_head_patched(loaded: LoadedModel, batch: PromptBatch, layer: int, head: int, direction: str) -> np.ndarray:
    """One forward with one head's slice overwritten from the other run (this test's own hook)."""
    assert batch.pairs is not None
    receiver, donor = (
        (batch.pairs.corrupt, batch.tokens) if direction == "denoise" else (batch.tokens, batch.pairs.corrupt)
    )
    source = projection_inputs(loaded, donor)[layer]
    parts = model_map(loaded.model)
    width = source.shape[-1] // parts.n_heads

    def overwrite(module: Any, args: Any) -> Any:
        changed = args[0].clone()
        changed[..., head * width : (head + 1) * width] = source[..., head * width : (head + 1) * width]
        return (changed,)

    handle = parts.output_projection(layer).register_forward_pre_hook(overwrite)
    try:
        return logit_diffs(loaded, receiver, batch)
    finally:
        handle.remove()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_sweep_matches_one_forward_per_head(model: LoadedModel, direction: str) -> None:
    batches = pair_batches()
    result = PairRequest(direction=direction, all_heads=True).run(model, batches)  # type: ignore[arg-type]
    assert result.heads is not None
    parts = model_map(model.model)
    for layer in range(parts.n_layers):
        for head in range(parts.n_heads):
            expected = np.concatenate([one_head_patched(model, b, layer, head, direction) for b in batches])
            np.testing.assert_allclose(result.heads[layer, head], expected, atol=1e-5, rtol=0)
    clean = np.concatenate([logit_diffs(model, b.tokens, b) for b in batches])
    np.testing.assert_allclose(result.clean, clean, atol=1e-5)
    # every single-head patch moves something (the assertion could fail on a broken hook)
    assert np.abs(result.heads - (result.corrupt if direction == "denoise" else result.clean)).max() > 1e-4


def test_chunks_do_not_change_the_answer(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = pair_batches()
    whole = PairRequest(all_heads=True, head_positions=(-1,)).run(model, batches)
    patching._SWEEPS.clear()
    monkeypatch.setattr(patching, "CHUNK_TOKENS", 1)  # one variant per forward
    single = PairRequest(all_heads=True, head_positions=(-1,)).run(model, batches)
    assert whole.heads is not None and single.heads is not None
    np.testing.assert_allclose(whole.heads, single.heads, atol=1e-6)


def test_direct_effects_through_the_modules(model: LoadedModel) -> None:
    """Direct effect of head h = the change o_proj writes at the last position, read through the
    final norm with its scale frozen: computed here with the modules themselves."""
    batches = pair_batches()
    result = PairRequest(effect="direct", all_heads=True).run(model, batches)
    assert result.heads is not None
    parts = model_map(model.model)
    norm, unembedding = parts.norm_and_unembedding()
    for b_index, batch in enumerate(batches):
        assert batch.pairs is not None
        clean_in, corrupt_in = projection_inputs(model, batch.tokens), projection_inputs(model, batch.pairs.corrupt)
        final: list[torch.Tensor] = []
        handle = norm.register_forward_pre_hook(lambda m, a, final=final: final.append(a[0][:, -1].clone()))
        with torch.inference_mode():
            base_model(model.model)(input_ids=batch.pairs.corrupt)
        handle.remove()
        x = final[0].double()
        frozen = torch.nn.functional.layer_norm if parts.layout.norm_kind == "layer" else None
        for layer in range(parts.n_layers):
            for head in range(parts.n_heads):
                width = parts.head_dim
                mixed = corrupt_in[layer][:, -1].clone()
                mixed[:, head * width : (head + 1) * width] = clean_in[layer][:, -1, head * width : (head + 1) * width]
                projection = parts.output_projection(layer)
                with torch.inference_mode():
                    delta = (projection(mixed) - projection(corrupt_in[layer][:, -1])).double()
                if frozen is not None:
                    scale = x.var(dim=-1, unbiased=False, keepdim=True).add(norm.eps).sqrt()
                    read = ((x + delta) - (x + delta).mean(-1, keepdim=True)) / scale - (
                        x - x.mean(-1, keepdim=True)
                    ) / scale
                else:
                    scale = x.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()
                    read = delta / scale
                read = read * norm.weight.double()
                weight = unembedding.weight.double()
                change = (read * (weight[batch.pairs.answer] - weight[batch.pairs.wrong])).sum(-1).detach().numpy()
                index = list(batch.pairs.index)
                np.testing.assert_allclose(
                    result.heads[layer, head, index] - result.corrupt[index], change, atol=1e-5, rtol=0
                )
        assert b_index < 2


def test_whole_residual_stream_restores_and_destroys_exactly(model: LoadedModel) -> None:
    """Patching the residual stream entering block 0 at the changed position gives the other
    run exactly: denoise 1, noise -1, total (a closed-form answer on any model)."""
    batches = pair_batches()
    for direction, expected in (("denoise", 1.0), ("noise", -1.0)):
        expectation = Patching.model_validate(
            dict(name="r", prompts="p", property="patching", direction=direction, resid=[{"layer": 0, "position": 3}])
            | ({"at_least": expected - 1e-6} if expected > 0 else {"at_most": expected + 1e-6})
        )
        context = CheckContext(measure_extras(model, batches, expectation))
        outcome = expectation.check(context)
        assert outcome.passed, outcome.headline
        assert outcome.value == pytest.approx(expected, abs=1e-6)
        # a later position carries nothing from position 3 in the residual stream entering block 0
        later = Patching.model_validate(
            expectation.model_dump(exclude={"resid"}) | {"resid": [{"layer": 0, "position": 5}]}
        )
        assert later.check(CheckContext(measure_extras(model, batches, later))).value == pytest.approx(0.0, abs=1e-6)


def measure_extras(loaded: LoadedModel, batches: list[PromptBatch], expectation: Any) -> Measurements:
    parts = model_map(loaded.model)
    extras = {request: request.run(loaded, batches) for request in expectation.requirements().extras}
    return Measurements(parts.n_layers, parts.n_heads, extras=extras)


def test_every_head_patched_together_is_the_other_run(model: LoadedModel) -> None:
    parts = model_map(model.model)
    everything = tuple(
        Component("head", layer, head) for layer in range(parts.n_layers) for head in range(parts.n_heads)
    )
    everything += tuple(Component("mlp", layer) for layer in range(parts.n_layers))
    everything += (Component("resid", 0, 0, (3,)),)
    result = PairRequest(sets=(everything,)).run(model, pair_batches())
    assert result.patched[0] is not None
    np.testing.assert_allclose(result.patched[0], result.clean, atol=1e-5)


def test_undefined_normalisation_names_both_values(model: LoadedModel) -> None:
    # the corruption sits past the last position read: clean and corrupt agree exactly
    batches = pair_batches(change=())
    expectation = Patching.model_validate(
        dict(name="n", prompts="p", property="patching", heads=["L0H0"], at_least=0.1)
    )
    with pytest.raises(CheckInputError, match=r"mean logit differences are (-?\d+\.\d{6}) and \1 .*undefined"):
        expectation.check(CheckContext(measure_extras(model, batches, expectation)))


def test_out_of_range_heads_and_positions(model: LoadedModel) -> None:
    batches = pair_batches()
    for fields, message in (
        (dict(heads=["L0H9"]), r"head L0H9 is out of range: this model has layers 0-1 and heads 0-3"),
        (dict(heads=["L0H0"], positions=[40]), r"position 40 is out of range: the shortest prompt .* 9 tokens"),
        (dict(mlp=[5]), r"layer 5 is out of range: this model has layers 0-1"),
    ):
        expectation = Patching.model_validate(dict(name="n", prompts="p", property="patching", at_least=0.1) | fields)
        with pytest.raises(CheckInputError, match=message):
            expectation.check(CheckContext(measure_extras(model, batches, expectation)))


def test_attribution_tracks_the_exact_sweep(model: LoadedModel) -> None:
    """Attribution is a first-order estimate: on these random tiny models it correlates with the
    exact single-head sweep at 0.83-0.99 (measured); a sign or index slip would break that."""
    batches = pair_batches()
    exact = PairRequest(all_heads=True).run(model, batches)
    assert exact.heads is not None
    estimate = patching.attribution(model, batches, "denoise")
    moved = (exact.heads - exact.corrupt).ravel()
    correlation = np.corrcoef(moved, estimate.ravel())[0, 1]
    assert correlation > 0.75, correlation


def test_other_properties_see_the_clean_prompts() -> None:
    from interp_assert.measure.capture.prompts import build_batches
    from interp_assert.measure.capture.run import CaptureRequest, measure
    from interp_assert.measure.prompt_sets import PromptSet

    loaded = load_model("tiny-neo", LoadOptions())
    prompt_set = PromptSet.model_validate(
        {
            "bos": "prepend",
            "pair_template": {
                "texts": ["{A} t9 {X} t11", "t20 {A} t21 {X} t22"],
                "fills": [{"A": "t5", "B": "t6"}, {"A": "t7", "B": "t8"}],
                "clean": {"X": "A"},
                "corrupt": {"X": "B"},
                "answer": " {A}",
                "wrong": " {B}",
            },
        }
    )
    batches = build_batches(prompt_set, loaded.tokenizer, vocab_size=64, max_positions=128)
    assert [b.tokens.tolist() for b in batches] == [
        [[0, 5, 9, 5, 11], [0, 7, 9, 7, 11]],
        [[0, 20, 5, 21, 5, 22], [0, 20, 7, 21, 7, 22]],
    ]
    assert batches[0].pairs is not None and batches[0].pairs.corrupt.tolist() == [[0, 5, 9, 6, 11], [0, 7, 9, 8, 11]]
    assert batches[1].pairs is not None and batches[1].pairs.index == (2, 3)
    measured = measure(loaded, batches, CaptureRequest(roles=frozenset({"previous_token"}), hidden_norms=True))
    assert measured.role_scores["previous_token"].shape == (2, 4) and measured.hidden_norms is not None
