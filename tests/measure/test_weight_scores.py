"""Composition and OV copying from the weights: closed-form models whose answer is known, a second
computation through explicit d_model x d_model products in float64, the grouped-query mapping,
LayerNorm and RMSNorm models, the null's mean, and specs of these properties run with no forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from interp_assert.errors import SpecError
from interp_assert.measure import weights
from interp_assert.measure.architecture import model_map
from interp_assert.measure.models import LoadOptions, load_model
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import load_spec
from tests.builders import save_model, tiny_config

D_HEAD = 16


def random_model(name: str, **overrides: Any) -> Any:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(name, **overrides)).eval()


def explicit(c: weights.Circuits, kind: str, sender: tuple[int, int], receiver: tuple[int, int]) -> float:
    """The score through d_model x d_model products (float64), as the definition reads."""
    ov = c.value[sender[0]][sender[1]] @ c.output[sender[0]][sender[1]]
    q, k, v, o = (t[receiver[0]][receiver[1]] for t in (c.query, c.key, c.value, c.output))
    x = {"Q": q @ k.T, "K": k @ q.T, "V": v @ o}[kind]
    return float((ov @ x).norm() / (ov.norm() * x.norm()))


@pytest.mark.parametrize("name", ["llama", "gpt_neo", "gpt2", "gemma"])
def test_factored_scores_equal_explicit_products(name: str) -> None:
    """RMSNorm (Llama, Gemma with its +1 gain) and LayerNorm (GPT-Neo, GPT-2's fused c_attn) models."""
    parts = model_map(random_model(name))
    c = weights.circuits(parts)
    rotated = weights.rotations(parts.d_model, 4, 0)
    senders = [(0, h) for h in range(parts.n_heads)]
    receivers = [(1, h) for h in range(parts.n_heads)]
    for kind in ("Q", "K", "V"):
        into = weights.into_receiver(c, kind, senders, (1, 1), rotated)
        out = weights.from_sender(c, kind, (0, 2), receivers, rotated)
        for index, sender in enumerate(senders):
            assert abs(float(into.score[index]) - explicit(c, kind, sender, (1, 1))) < 1e-6
        for index, receiver in enumerate(receivers):
            assert abs(float(out.score[index]) - explicit(c, kind, (0, 2), receiver)) < 1e-6
        table = weights.all_pairs(c, kind)
        for index, sender in enumerate(senders):
            assert abs(float(table[sender][1, 1]) - float(into.score[index])) < 1e-12


def test_grouped_query_heads_read_their_key_value_group() -> None:
    """4 query heads over 2 key/value groups: heads 0, 1 read group 0 and heads 2, 3 group 1,
    each with its layer's norm gain folded in."""
    model = random_model("llama")
    parts = model_map(model)
    assert (parts.n_heads, parts.n_kv_heads) == (4, 2)
    c = weights.circuits(parts)
    attention = model.model.layers[1].self_attn
    gain = model.model.layers[1].input_layernorm.weight.detach().double()
    for head in range(4):
        group = head // 2
        key = attention.k_proj.weight.detach().double()[group * D_HEAD : (group + 1) * D_HEAD].T * gain[:, None]
        torch.testing.assert_close(c.key[1][head], key)


def hand_set_llama() -> Any:
    """A Llama whose L0H0 writes exactly into the subspace L1H0 reads its keys and queries from
    (residual dims 0-15), and whose L0H1 writes into dims 32-47, which L1H0 does not read."""
    model = random_model("llama", num_key_value_heads=4, tie_word_embeddings=True)
    identity = torch.eye(D_HEAD)
    with torch.no_grad():
        first, second = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        for projection in (first.v_proj, first.o_proj, second.q_proj, second.k_proj):
            projection.weight[:, :] = 0.01 * torch.randn(projection.weight.shape)
        first.v_proj.weight[0:16] = 0
        first.v_proj.weight[0:16, 0:16] = identity  # L0H0 reads dims 0-15 ...
        first.o_proj.weight[:, 0:16] = 0
        first.o_proj.weight[0:16, 0:16] = identity  # ... and writes them back
        first.o_proj.weight[:, 16:32] = 0
        first.o_proj.weight[32:48, 16:32] = identity  # L0H1 writes dims 32-47
        for projection in (second.q_proj, second.k_proj):
            projection.weight[0:16] = 0
            projection.weight[0:16, 0:16] = identity  # L1H0 reads dims 0-15
    return model


def test_closed_form_aligned_and_orthogonal_senders() -> None:
    """OV_A = X_B = the projection onto 16 dims: the score is ||P||/(||P|| ||P||) = 1/sqrt(16)
    exactly; a sender writing elsewhere scores exactly 0."""
    parts = model_map(hand_set_llama())
    c = weights.circuits(parts)
    found = weights.into_receiver(c, "K", [(0, h) for h in range(4)], (1, 0), weights.rotations(64, 100, 0))
    assert abs(float(found.score[0]) - 0.25) < 1e-12
    assert abs(float(found.score[1])) < 1e-12
    assert float(found.z[0]) > 10 > float(found.z[2])
    assert float(found.z[1]) < 0


def test_the_null_mean_is_one_over_d_model() -> None:
    parts = model_map(random_model("gpt_neo"))
    c = weights.circuits(parts)
    ov = c.value[0][0] @ c.output[0][0]
    x = c.key[1][0] @ c.query[1][0].T
    squared = torch.stack([((ov @ r @ x).norm() / (ov.norm() * x.norm())) ** 2 for r in weights.rotations(64, 400, 3)])
    assert abs(float(squared.mean()) * 64 - 1.0) < 0.1


def test_copying_is_one_for_a_copying_head_and_minus_one_for_a_suppressing_one() -> None:
    """Tied embeddings, unit norm gains: W_E (V O) W_E^T is positive semi-definite when V O is a
    projection (all eigenvalues >= 0: score 1), negative semi-definite when it is minus one."""
    model = hand_set_llama()
    with torch.no_grad():
        first = model.model.layers[0].self_attn
        first.o_proj.weight[:, 16:32] = 0
        first.v_proj.weight[16:32] = 0
        first.v_proj.weight[16:32, 32:48] = torch.eye(D_HEAD)
        first.o_proj.weight[32:48, 16:32] = -torch.eye(D_HEAD)  # L0H1 writes back minus what it reads
    parts = model_map(model)
    assert parts.unembedding.weight is model.get_input_embeddings().weight
    scores = weights.copying_scores(parts, weights.circuits(parts))
    assert abs(float(scores[0, 0]) - 1.0) < 1e-9
    assert abs(float(scores[0, 1]) + 1.0) < 1e-9


SPEC = """\
model: ../model
prompts:
  words: {bos: prepend, texts: ["t1 t2 t3 t4"]}
expectations:
  - name: l0h0_feeds_l1h0_keys
    property: composition
    composition: K
    sender: L0H0
    receiver: L1H0
    at_least: 10
  - name: l0h0_is_the_top_sender
    property: composition
    composition: K
    receiver: L1H0
    top_k: 1
    include: [L0H0]
  - name: l0h1_does_not_feed_l1h0_keys
    property: composition
    composition: K
    sender: L0H1
    receiver: L1H0
    score: raw
    at_most: 0.001
  - name: l0h0_copies
    property: ov_copying
    head: L0H0
    at_least: 0.99
"""


def test_a_spec_of_weight_scores_runs_no_forward_pass(tmp_path: Path) -> None:
    model = hand_set_llama()
    model.save_pretrained(tmp_path / "model")
    save_model(tiny_config("llama"), tmp_path / "scratch")  # for its tokenizer files
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "model" / name).write_bytes((tmp_path / "scratch" / name).read_bytes())
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "weights.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "specs" / "weights.yaml")
    runner = Runner(RunOptions())
    loaded = runner.model_for(spec)

    def refuse(*_: Any) -> None:
        raise AssertionError("a weight score ran the model")

    handle = loaded.model.register_forward_pre_hook(refuse)
    try:
        outcomes = {entry.name: runner.evaluate(spec, entry) for entry in spec.entries}
    finally:
        handle.remove()
    assert all(outcome.passed for outcome in outcomes.values()), {k: o.headline for k, o in outcomes.items()}
    pair = outcomes["l0h0_feeds_l1h0_keys"]
    assert pair.measured["score"] == pytest.approx(0.25) and pair.measured["z"] == pair.value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("sender: L0H0\n    receiver: L1H0", "sender: L1H0\n    receiver: L0H0"),
        ("at_least: 10", "at_least: 10\n    draws: 0"),
        ("at_least: 10", "at_least: 10\n    draws: 100000"),
        ("head: L0H0\n    at_least: 0.99", "head: L0H0\n    at_least: 1.5"),
    ],
)
def test_bad_weight_expectations_are_spec_errors(tmp_path: Path, change: str, message: str) -> None:
    (tmp_path / "weights.yaml").write_text(SPEC.replace(change, message, 1))
    spec = load_spec(tmp_path / "weights.yaml")
    problems = " ".join(p for entry in spec.entries for _, p in entry.problems)
    assert problems, message
    assert any(
        text in problems
        for text in ("must be in a later layer", "greater than or equal to 2", "less than or equal to 2000", "[-1, 1]")
    ), problems


def test_an_unknown_head_names_the_model_shape(tmp_path: Path) -> None:
    save_model(tiny_config("llama"), tmp_path / "model")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "w.yaml").write_text(
        SPEC.replace("receiver: L1H0\n    at_least", "receiver: L7H0\n    at_least")
    )
    spec = load_spec(tmp_path / "specs" / "w.yaml")
    with pytest.raises(SpecError, match=r"head L7H0 is out of range: this model has layers 0-1"):
        Runner(RunOptions()).evaluate(spec, spec.entries[0])


def test_a_whole_smollm2_layer_loads_as_weights_alone() -> None:
    """The real model: the measured finding of model_specs/smollm2-weights.yaml at 8 draws."""
    loaded = load_model("smollm2-135m-instruct", LoadOptions())
    parts, c = weights.for_model(loaded.model)
    senders = [(16, 0), (15, 1), (11, 1)]
    found = weights.into_receiver(c, "K", senders, (17, 3), weights.rotations(parts.d_model, 8, 0))
    assert float(found.score[0]) > 2 * max(float(found.score[1]), float(found.score[2]))
    assert float(found.z[0]) > 100
