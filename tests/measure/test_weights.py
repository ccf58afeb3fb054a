"""Composition and copying scores read from the weights: closed forms, a second computation
through explicit d_model x d_model products in float64, the null, and grouped-query heads."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from interp_assert.errors import CheckInputError
from interp_assert.measure.loading.models import LoadOptions, load_model
from interp_assert.measure.weights import circuits as weights
from tests.builders import llama_config


def _llama(layers: int = 3, seed: int = 0) -> Any:
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(llama_config(num_hidden_layers=layers)).eval()
    with torch.no_grad():  # gains other than 1, so that folding them in is tested
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(0.5 + torch.rand_like(parameter))
    return model


@pytest.fixture(scope="module")
def tiny_neo() -> Any:
    return load_model("tiny-neo", LoadOptions()).model


def _explicit(model: Any, layer: int, head: int) -> dict[str, torch.Tensor]:
    """Head ``head`` of ``layer``'s d_model x d_model circuits, from the modules' own weights (float64)."""
    config = model.config
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_model = config.hidden_size
    d_head = d_model // n_heads
    if model.config.model_type == "gpt_neo":
        block = model.transformer.h[layer]
        attention, norm, out = block.attn.attention, block.ln_1, block.attn.attention.out_proj
        centring = torch.eye(d_model, dtype=torch.float64) - 1.0 / d_model
    else:
        block = model.model.layers[layer]
        attention, norm, out = block.self_attn, block.input_layernorm, block.self_attn.o_proj
        centring = torch.eye(d_model, dtype=torch.float64)
    group = head // (n_heads // n_kv)
    read = centring @ torch.diag(norm.weight.detach().double())

    def rows(linear: Any, index: int) -> torch.Tensor:
        return linear.weight.detach().double()[index * d_head : (index + 1) * d_head].T  # [d_model, d_head]

    q, k, v = rows(attention.q_proj, head), rows(attention.k_proj, group), rows(attention.v_proj, group)
    o = out.weight.detach().double()[:, head * d_head : (head + 1) * d_head].T  # [d_head, d_model]
    return {"OV": read @ v @ o, "QK": (read @ q) @ (read @ k).T, "centring": centring}


def _explicit_score(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a @ b) / (torch.linalg.norm(a) * torch.linalg.norm(b)))


@pytest.mark.parametrize("which", ["tiny-neo (LayerNorm)", "llama (RMSNorm, grouped queries)"])
def test_factored_scores_agree_with_explicit_float64_products(which: str, tiny_neo: Any) -> None:
    model = tiny_neo if which.startswith("tiny-neo") else _llama()
    mm = weights.model_map(model)
    heads = weights.all_heads(mm)
    compared = 0
    for kind in ("Q", "K", "V"):
        table = weights.pair_table(model, kind, heads, heads, draws=10, seed=0)
        for (sender, receiver), (score, _) in table.items():
            a, b = _explicit(model, *sender), _explicit(model, *receiver)
            x = {"K": b["QK"].T, "Q": b["QK"], "V": b["OV"]}[kind]
            assert score == pytest.approx(_explicit_score(a["OV"], x), abs=1e-6)
            compared += 1
    assert compared == 3 * sum(1 for s in heads for r in heads if s[0] < r[0])


@pytest.mark.parametrize("which", ["tiny-neo (LayerNorm)", "llama (RMSNorm, grouped queries)"])
def test_copying_scores_agree_with_explicit_eigenvalues(which: str, tiny_neo: Any) -> None:
    model = tiny_neo if which.startswith("tiny-neo") else _llama()
    found = weights.copying_scores(model)
    embedding = model.get_input_embeddings().weight.detach().double()
    final = model.transformer.ln_f if which.startswith("tiny-neo") else model.model.norm
    for (layer, head), score in found.items():
        circuits = _explicit(model, layer, head)
        w_u = (
            circuits["centring"] @ torch.diag(final.weight.detach().double()) @ model.lm_head.weight.detach().double().T
        )
        eigenvalues = torch.linalg.eigvals(embedding @ circuits["OV"] @ w_u)  # vocab x vocab
        assert score == pytest.approx(float(eigenvalues.sum().real / eigenvalues.abs().sum()), abs=1e-6)


def test_tiny_neo_previous_token_head_feeds_the_induction_heads_keys(tiny_neo: Any) -> None:
    mm = weights.model_map(tiny_neo)
    table = weights.pair_table(tiny_neo, "K", weights.all_heads(mm), [(1, 0)], draws=500, seed=0)
    ranked = sorted(table.items(), key=lambda kv: -kv[1][1])
    assert ranked[0][0][0] == (0, 0)
    score, z = table[((0, 0), (1, 0))]
    assert score == pytest.approx(0.4839, abs=1e-3) and z > 30  # measured 48.9
    assert all(z_other < 5 for (s, _), (_, z_other) in table.items() if s != (0, 0))
    copying = weights.copying_scores(tiny_neo)
    assert max(copying, key=lambda h: copying[h]) == (1, 0) and copying[(1, 0)] > 0.99


def _hand_set(aligned: bool) -> Any:
    """A 2-layer Llama whose L0H0 writes e_0 (rank 1) and whose L1H0 keys read e_0 (aligned) or e_1."""
    model = _llama(layers=2)
    d_head = 16
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
        sender, receiver = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        sender.v_proj.weight.zero_()
        sender.v_proj.weight[0, 5] = 1.0  # value dim 0 reads residual 5
        sender.o_proj.weight[:, :d_head].zero_()
        sender.o_proj.weight[0, 0] = 1.0  # head 0's dim 0 writes residual 0
        receiver.k_proj.weight[:d_head].zero_()  # group 0 (heads 0, 1)
        receiver.k_proj.weight[0, 0 if aligned else 1] = 1.0
        receiver.q_proj.weight[:d_head].zero_()
        receiver.q_proj.weight[0, 7] = 1.0
    return model


def test_closed_form_aligned_and_orthogonal_senders() -> None:
    heads = [(0, 0)], [(1, 0), (1, 1)]
    aligned = weights.pair_table(_hand_set(True), "K", *heads, draws=200, seed=0)
    orthogonal = weights.pair_table(_hand_set(False), "K", *heads, draws=200, seed=0)
    score, z = aligned[((0, 0), (1, 0))]
    assert score == pytest.approx(1.0, abs=1e-12) and z > 20
    score, z = orthogonal[((0, 0), (1, 0))]
    assert score == pytest.approx(0.0, abs=1e-12) and z < 0
    # head 1 reads group 0's keys too (rank 1, reading e_0): whatever its queries, it composes fully
    assert aligned[((0, 0), (1, 1))][0] == pytest.approx(1.0, abs=1e-12)
    assert orthogonal[((0, 0), (1, 1))][0] == pytest.approx(0.0, abs=1e-12)


def test_grouped_query_heads_read_their_key_value_group() -> None:
    model = _llama()
    mm = weights.model_map(model)
    assert (mm.n_heads, mm.n_kv_heads) == (4, 2)
    f = weights.layer_factors(mm, 1)
    raw = mm.layer_weights(1)
    for head, group in ((0, 0), (1, 0), (2, 1), (3, 1)):
        expected = weights.fold_norm(raw.key[group], raw.gain, False)
        assert torch.equal(f.reads_k[head], expected)
        assert torch.equal(f.reads_v[head], weights.fold_norm(raw.value[group], raw.gain, False))


def test_shared_null_matches_explicit_haar_rotations(tiny_neo: Any) -> None:
    """The factored null (top-left blocks of shared rotations) has the distribution of the score
    with a full Haar rotation between A's output and B's input."""
    mm = weights.model_map(tiny_neo)
    d_model = mm.d_model
    a, b = _explicit(tiny_neo, 0, 0)["OV"], _explicit(tiny_neo, 1, 0)["QK"].T
    generator = torch.Generator().manual_seed(1)
    explicit = []
    for _ in range(2000):
        q, r = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator, dtype=torch.float64))
        explicit.append(_explicit_score(a, (q * torch.sign(torch.diagonal(r))) @ b) ** 2)
    explicit_t = torch.tensor(explicit)
    blocks = weights.haar_blocks(d_model, mm.head_dim, 2000, 0)
    factors = weights.Factors(tiny_neo)
    sender, receiver = factors.sender(0)[:1], factors.receiver(1, "K")[:1]
    a2, b2 = torch.linalg.svdvals(sender) ** 2, torch.linalg.svdvals(receiver) ** 2
    null = torch.einsum("ai,nij,bj->n", a2, blocks, b2) / (a2.sum() * b2.sum())
    assert float(null.mean()) == pytest.approx(1 / d_model, rel=0.03)  # the closed-form mean
    assert float(explicit_t.mean()) == pytest.approx(1 / d_model, rel=0.03)
    assert float(null.std()) == pytest.approx(float(explicit_t.std()), rel=0.1)


@pytest.mark.parametrize("draws", [0, 9, 100_001])
def test_absurd_null_draws_are_refused(draws: int) -> None:
    with pytest.raises(CheckInputError, match=r"null draws must be between 10 and 100000; got"):
        weights.haar_blocks(64, 16, draws, 0)


def test_unknown_head_is_named(tiny_neo: Any) -> None:
    with pytest.raises(CheckInputError, match=r"head L1H7 is out of range: this model has layers 0-1 and heads 0-3"):
        weights.pair_table(tiny_neo, "K", [(0, 0)], [(1, 7)], draws=10, seed=0)


@pytest.mark.parametrize("architecture", ["gpt2", "gpt_neox"])
def test_fused_qkv_models_are_split(architecture: str) -> None:
    import transformers

    from tests.builders import tiny_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(architecture)).eval()
    mm = weights.model_map(model)
    table = weights.pair_table(model, "K", weights.all_heads(mm), weights.all_heads(mm), draws=10, seed=0)
    assert len(table) == 16 and all(0.0 < score < 1.0 for score, _ in table.values())
    assert len(weights.copying_scores(model)) == 8
