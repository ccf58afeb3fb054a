"""Capture across architectures, on small real models built from configs.

With every query projection zeroed, each head attends uniformly over the keys it
can see, so every score has a closed form, local windows included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.run import CaptureRequest, describe, measure
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, load_model
from tests.builders import ARCHITECTURES, save_model, tiny_config

T = 20
TOKENS = torch.tensor([[0, *range(4, 4 + T - 1)]])


def uniform_score(n_tokens: int, window: int | None) -> float:
    """first_token of a uniform head: row i puts 1/visible(i) on position 0, counted while 0 is visible."""
    rows = [i for i in range(1, n_tokens) if window is None or i < window]
    return float(np.mean([1 / (i + 1) for i in rows]))


def uniform_previous(n_tokens: int, window: int | None) -> float:
    return float(np.mean([1 / min(i + 1, window or i + 1) for i in range(1, n_tokens)]))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def uniform_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    directory = save_model(tiny_config(request.param), tmp_path_factory.mktemp(request.param), zero_queries=True)
    return load_model(str(directory), LoadOptions())


def test_uniform_heads_score_their_closed_form(uniform_model: LoadedModel) -> None:
    request = CaptureRequest(
        roles=frozenset(["first_token", "previous_token", "self", "focus", "breadth"]),
        attention_stats=True,
        hidden_norms=True,
    )
    measured = measure(uniform_model, [PromptBatch(TOKENS)], request)
    windows = describe(uniform_model).windows
    for layer, window in enumerate(windows):
        expected_first = uniform_score(T, window)
        expected_local = uniform_previous(T, window)
        np.testing.assert_allclose(measured.role_scores["first_token"][layer], expected_first, atol=1e-5)
        np.testing.assert_allclose(measured.role_scores["previous_token"][layer], expected_local, atol=1e-5)
        np.testing.assert_allclose(measured.role_scores["self"][layer], expected_local, atol=1e-5)
        np.testing.assert_allclose(measured.role_scores["focus"][layer], expected_local, atol=1e-5)
        np.testing.assert_allclose(measured.role_scores["breadth"][layer], 1.0, atol=1e-5)
    assert measured.hidden_norms is not None and len(measured.hidden_norms) == len(windows) + 1
    assert np.all(measured.hidden_norms > 0)


def test_grouped_query_heads_are_query_heads(tmp_path: Path) -> None:
    directory = save_model(tiny_config("llama"), tmp_path / "gqa", seed=3)
    loaded = load_model(str(directory), LoadOptions())
    measured = measure(loaded, [PromptBatch(TOKENS)], CaptureRequest(roles=frozenset(["previous_token"])))
    assert measured.n_heads == 4  # 4 query heads sharing 2 key/value heads
    assert measured.role_scores["previous_token"].shape == (2, 4)


@pytest.mark.parametrize(
    ("architecture", "windows"), [("gpt_neo", [None, 8]), ("qwen2", [None, 8]), ("llama", [None, None])]
)
def test_windows_are_read_from_the_config(architecture: str, windows: list[int | None], tmp_path: Path) -> None:
    loaded = load_model(str(save_model(tiny_config(architecture), tmp_path / architecture)), LoadOptions())
    assert describe(loaded).windows == windows


@pytest.fixture(scope="module")
def neo_125m_shape(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """GPT-Neo-125M's shape (12 layers x 12 heads, 768 wide, 256-token local window on odd layers), random weights."""
    from transformers import GPTNeoConfig

    config = GPTNeoConfig(
        vocab_size=64,
        max_position_embeddings=512,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        attention_types=[[["global", "local"], 6]],
        window_size=256,
        bos_token_id=0,
        eos_token_id=1,
    )
    return load_model(str(save_model(config, tmp_path_factory.mktemp("neo125m"), seed=5)), LoadOptions())


def test_gpt_neo_local_layers_see_only_their_window(neo_125m_shape: LoadedModel) -> None:
    length = 300
    tokens = torch.randint(4, 64, (1, length), generator=torch.Generator().manual_seed(0))
    windows = describe(neo_125m_shape).windows
    assert windows == [None, 256] * 6
    request = CaptureRequest(roles=frozenset(["first_token", "breadth"]), patterns=frozenset({(1, 0), (0, 0)}))
    measured = measure(neo_125m_shape, [PromptBatch(tokens)], request)

    local, full = measured.patterns[(1, 0)], measured.patterns[(0, 0)]
    rows, keys = np.indices(local.shape)
    assert np.all(local[rows - keys >= 256] == 0.0), "a local layer put weight outside its 256-token window"
    assert np.any(full[rows - keys >= 256] > 0.0)

    with torch.inference_mode():
        reference = neo_125m_shape.model(input_ids=tokens, output_attentions=True).attentions
    for layer in (0, 1):
        weights = reference[layer][0].double().numpy()  # [H, T, T]
        last_row = length if windows[layer] is None else 256
        expected = weights[:, 1:last_row, 0].mean(axis=1)  # rows that can see position 0
        np.testing.assert_allclose(measured.role_scores["first_token"][layer], expected, atol=1e-6)


def test_architecture_without_attention_is_named(tmp_path: Path) -> None:
    from transformers import MambaConfig

    config = MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4, bos_token_id=0)
    loaded = load_model(str(save_model(config, tmp_path / "mamba")), LoadOptions())
    with pytest.raises(CaptureError, match=r"MambaForCausalLM \(mamba\): no known layout"):
        measure(loaded, [PromptBatch(TOKENS)], CaptureRequest(roles=frozenset(["first_token"])))
