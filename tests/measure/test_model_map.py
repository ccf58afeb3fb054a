"""The architecture map: every tested family resolves from the table, per-head weights reproduce
the modules' own projections, and an unknown family is matched by layout or refused by name."""

from __future__ import annotations

import pytest
import torch
import transformers

from interp_assert.errors import CaptureError
from interp_assert.measure.loading import architecture
from interp_assert.measure.loading.architecture import Family, model_map, register_family
from tests.builders import ARCHITECTURES, tiny_config


def build(name: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(name, **overrides)).eval()


@pytest.mark.parametrize("name", [*ARCHITECTURES, "gemma2"])
def test_every_tested_family_resolves_from_the_table(name: str) -> None:
    parts = model_map(build(name))
    assert parts.family == parts.config.model_type
    assert parts.n_layers == 2 and not parts.problems
    assert all(p is not None for p in parts.output_projections)
    assert parts.final_norm is not None and parts.unembedding is not None


@pytest.mark.parametrize("name", [*ARCHITECTURES, "gemma2"])
def test_head_weights_reproduce_the_projections(name: str) -> None:
    """Query/key/value from the per-head weights equal the model's own projections of the same
    input (bias removed), and head h's output slice through W_O[h] equals the output projection."""
    model = build(name)
    parts = model_map(model)
    weights = parts.layer_weights(1)
    attention = parts.attention[1]
    x = torch.randn(3, parts.d_model)
    h, g, d = parts.n_heads, parts.n_kv_heads, parts.head_dim
    layout = parts.layout
    with torch.no_grad():
        if layout.fused_qkv is None:
            q, k, v = (getattr(attention, n)(x) - _bias(getattr(attention, n)) for n in ("q_proj", "k_proj", "v_proj"))
        else:
            fused_module = getattr(attention, layout.fused_qkv)
            fused = fused_module(x) - _bias(fused_module)
            if layout.fused_layout == "per_head":
                q, k, v = (t.reshape(3, -1) for t in fused.reshape(3, h, 3, d).unbind(2))
            else:
                q, k, v = fused.split([h * d, g * d, g * d], dim=-1)
        torch.testing.assert_close(torch.einsum("tm,hmd->thd", x, weights.query).reshape(3, -1), q.reshape(3, -1))
        torch.testing.assert_close(torch.einsum("tm,gmd->tgd", x, weights.key).reshape(3, -1), k.reshape(3, -1))
        torch.testing.assert_close(torch.einsum("tm,gmd->tgd", x, weights.value).reshape(3, -1), v.reshape(3, -1))
        z = torch.zeros(3, h * d)
        z[:, d : 2 * d] = torch.randn(3, d)  # head 1 alone
        projection = parts.output_projection(1)
        expected = projection(z) - _bias(projection)
        torch.testing.assert_close(z[:, d : 2 * d] @ weights.output[1], expected)


def _bias(module: torch.nn.Module) -> torch.Tensor | float:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else 0.0


def test_gemma_gain_includes_its_offset() -> None:
    model = build("gemma")
    parts = model_map(model)
    gain = parts.layer_weights(0).gain
    assert gain is not None
    torch.testing.assert_close(gain, model.model.layers[0].input_layernorm.weight.detach() + 1.0)


def test_an_unknown_family_is_matched_by_layout_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("llama")
    monkeypatch.setattr(model.config, "model_type", "my_llama")
    parts = model_map(model)
    assert parts.family == "my_llama (laid out as llama)"


def test_a_registered_family_wins_and_missing_parts_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(architecture, "_REGISTERED", {})
    register_family("llama", Family(output="no_such_projection", final_norm="no_such_norm"))
    parts = model_map(build("llama"))
    assert any("no_such_projection" in p for p in parts.problems)
    with pytest.raises(CaptureError, match="no output projection 'no_such_projection'"):
        parts.output_projection(0)
    with pytest.raises(CaptureError, match="no final norm 'no_such_norm'"):
        parts.norm_and_unembedding()


def test_a_deep_copy_resolves_its_own_modules() -> None:
    import copy

    model = build("gpt_neo")
    original = model_map(model)
    clone = copy.deepcopy(model)
    assert model_map(clone).attention[0] is not original.attention[0]
