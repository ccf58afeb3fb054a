"""The capture paths (blockwise, eager hooks, SDPA) give the numbers of the plain eager computation
(the fused path has its own tests, ``tests/measure/test_fused.py``).

The reference is the naive one: an eager forward with ``output_attentions`` and
``output_hidden_states``, every layer's full pattern scored at once, and the
optimised scoring itself is checked against the straightforward masked formulas.
Models: SmolLM2, and tiny random models of every architecture capture claims.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import blockwise
from interp_assert.measure.attention.tuning import MIN_BLOCK_ROWS, Tuning
from interp_assert.measure.capture import run as capture
from interp_assert.measure.capture import scores
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.run import CaptureRequest, Measurements
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, load_model
from interp_assert.vocab import ROLES, TARGET_ROLES, Role
from tests.builders import VOCAB, llama_config, save_model, tiny_config

EVERYTHING = CaptureRequest(
    roles=frozenset(ROLES), attention_stats=True, hidden_norms=True, patterns=frozenset({(1, 0), (0, 3)})
)
# test name -> (architecture in tests/builders.py, config overrides)
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_gqa": ("llama", {}),
    "gpt2": ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),
    "gpt_neox": ("gpt_neox", {}),
    "qwen2_sliding": ("qwen2", {}),  # layer 0 full attention, layer 1 a window of 8
    "mistral_sliding": ("mistral", {}),
    "gemma": ("gemma", {}),
    "phi": ("phi", {}),
    "gpt_neo": ("gpt_neo", {}),
}


def _config(kind: str) -> Any:
    architecture, overrides = KINDS[kind]
    return tiny_config(architecture, **overrides)


INTERFACE_KINDS = ["llama_gqa", "gpt2", "gpt_neox", "qwen2_sliding", "mistral_sliding", "gemma", "phi"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LoadedModel]:
    loaded: dict[str, LoadedModel] = {}

    def get(kind: str) -> LoadedModel:
        if kind not in loaded:
            directory = save_model(_config(kind), tmp_path_factory.mktemp(kind), seed=3)
            loaded[kind] = load_model(str(directory), LoadOptions())
        return loaded[kind]

    return get


# Row blocks of 7 rows, so every layer is computed in several blocks with ragged edges.
SMALL_BLOCKS = Tuning(block_bytes=1, min_block_rows=7)


def repeated_batches(vocab: int, block: int = 20, seed: int = 0) -> list[PromptBatch]:
    """BOS + a random block twice (two sequences), and a shorter single sequence: targets for every role."""
    generator = torch.Generator().manual_seed(seed)
    pieces = torch.randint(4, vocab, (3, block), generator=generator)
    pair = torch.cat([torch.zeros(2, 1, dtype=torch.long), pieces[:2], pieces[:2]], dim=1)
    single = torch.cat([torch.zeros(1, 1, dtype=torch.long), pieces[2:, :13], pieces[2:, :13]], dim=1)
    return [PromptBatch(pair), PromptBatch(single)]


# ---- the naive reference ----


def naive(loaded: LoadedModel, batches: list[PromptBatch]) -> Measurements:
    """All layers' attention and hidden states kept, then scored whole with :func:`scores.pattern_scores`."""
    arch = capture.describe(loaded)
    n_layers, n_heads = len(arch.blocks), arch.n_heads
    role_sums = {role: np.zeros((n_layers, n_heads)) for role in ROLES}
    role_rows = {role: np.zeros(n_layers) for role in ROLES}
    max_weight, visible_sum = np.zeros((n_layers, n_heads)), np.zeros((n_layers, n_heads))
    visible_entries = np.zeros(n_layers)
    norm_sum, norm_count = np.zeros(n_layers + 1), 0
    patterns: dict[tuple[int, int], np.ndarray] = {}
    last_block: list[torch.Tensor] = []
    handle = arch.blocks[-1].register_forward_hook(
        lambda module, args, output: last_block.append(output[0] if isinstance(output, tuple) else output)
    )
    try:
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                out = loaded.model(input_ids=batch.tokens, output_attentions=True, output_hidden_states=True)
                hidden = [*out.hidden_states[:-1], last_block.pop()]
                norm_sum += [float(h[:, 1:].double().norm(dim=-1).sum()) for h in hidden]
                norm_count += batch.tokens.shape[0] * (batch.tokens.shape[1] - 1)
                for layer, pattern in enumerate(out.attentions):
                    window = arch.windows[layer]
                    sums = scores.score_block(pattern, batch.tokens, 0, ROLES, window)
                    for role in ROLES:
                        role_sums[role][layer] += sums.role_sums[role].double().numpy()
                        role_rows[role][layer] += sums.role_rows[role]
                    seen = scores.visible_keys(pattern.shape[-1], 0, pattern.shape[-1], window)[1:]
                    rows = pattern[:, :, 1:].double()
                    max_weight[layer] = np.maximum(max_weight[layer], rows.amax((0, 2, 3)).numpy())
                    visible_sum[layer] += (rows * seen).sum((0, 2, 3)).numpy()
                    visible_entries[layer] += batch.tokens.shape[0] * float(seen.sum())
                    if index == 0:
                        for head in range(n_heads):
                            patterns[(layer, head)] = pattern[0, head].numpy().copy()
    finally:
        handle.remove()
    return Measurements(
        n_layers,
        n_heads,
        {role: role_sums[role] / role_rows[role][:, None] for role in ROLES},
        max_weight,
        visible_sum / visible_entries[:, None],
        None,
        norm_sum / norm_count,
        patterns,
    )


def assert_same(got: Measurements, expected: Measurements, tolerance: float = 1e-5) -> None:
    for role in ROLES:
        np.testing.assert_allclose(got.role_scores[role], expected.role_scores[role], atol=tolerance, err_msg=role)
    assert got.max_weight is not None and got.mean_weight is not None
    np.testing.assert_allclose(got.max_weight, expected.max_weight, atol=tolerance, err_msg="max")  # type: ignore[arg-type]
    np.testing.assert_allclose(got.mean_weight, expected.mean_weight, atol=tolerance, err_msg="mean")  # type: ignore[arg-type]
    np.testing.assert_allclose(
        got.hidden_norms_without_first,  # type: ignore[arg-type]
        expected.hidden_norms_without_first,  # type: ignore[arg-type]
        rtol=tolerance,
        err_msg="hidden norms",
    )
    assert got.patterns, "patterns were requested"
    for key, pattern in got.patterns.items():
        np.testing.assert_allclose(pattern, expected.patterns[key], atol=tolerance, err_msg=f"pattern {key}")


class ImplementationSpy:
    """Records, at each forward of an attention module, the implementation in effect and whether
    the module returned attention weights."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.calls: list[tuple[str, bool]] = []
        module = capture.describe(loaded).attention[0]
        config = loaded.model.config
        self.handle = module.register_forward_hook(
            lambda m, args, output: self.calls.append(
                (config._attn_implementation, isinstance(output, tuple) and output[1] is not None)
            )
        )

    def __enter__(self) -> ImplementationSpy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# ---- the paths on real architectures ----


@pytest.mark.parametrize("kind", INTERFACE_KINDS)
def test_blockwise_matches_eager_hooks_and_naive(kind: str, tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny(kind)
    batches = repeated_batches(VOCAB)
    with ImplementationSpy(loaded) as spy:
        ours = capture.measure(loaded, batches, EVERYTHING, attention="blockwise", tuning=SMALL_BLOCKS)
    assert spy.calls and all(call == (blockwise.IMPLEMENTATION, False) for call in spy.calls), spy.calls
    assert loaded.model.config._attn_implementation == "eager", "the implementation is restored"
    eager = capture.measure(loaded, batches, EVERYTHING, attention="eager", tuning=SMALL_BLOCKS)
    reference = naive(loaded, batches)
    assert_same(ours, reference)
    assert_same(eager, reference)


def test_without_breadth_one_buffer_serves(tiny: Callable[[str], LoadedModel]) -> None:
    """No breadth: the softmax runs in place over the logits; the numbers do not change."""
    loaded = tiny("qwen2_sliding")
    batches = repeated_batches(VOCAB)
    request = CaptureRequest(roles=frozenset(ROLES) - {"breadth"}, attention_stats=True)
    ours, reference = (
        capture.measure(loaded, batches, request, attention="blockwise", tuning=SMALL_BLOCKS),
        naive(loaded, batches),
    )
    for role in request.roles:
        np.testing.assert_allclose(ours.role_scores[role], reference.role_scores[role], atol=1e-5, err_msg=role)
    np.testing.assert_allclose(ours.mean_weight, reference.mean_weight, atol=1e-5)  # type: ignore[arg-type]


def test_gpt_neo_uses_eager_hooks(tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny("gpt_neo")
    batches = repeated_batches(VOCAB)
    with ImplementationSpy(loaded) as spy:
        ours = capture.measure(loaded, batches, EVERYTHING, tuning=SMALL_BLOCKS)
    assert spy.calls and all(weights for _, weights in spy.calls), "eager attention reports weights to the hook"
    assert_same(ours, naive(loaded, batches))
    with pytest.raises(CaptureError, match="AttentionInterface"):
        capture.measure(loaded, batches, EVERYTHING, attention="blockwise", tuning=SMALL_BLOCKS)


@pytest.mark.slow
def test_smollm2_paths_agree(smollm2_dir: Path) -> None:
    loaded = load_model(str(smollm2_dir), LoadOptions())
    vocab = int(loaded.config.vocab_size)
    generator = torch.Generator().manual_seed(1)
    piece = torch.randint(100, vocab, (1, 48), generator=generator)
    tokens = torch.cat([torch.tensor([[loaded.tokenizer.bos_token_id]]), piece, piece], dim=1)  # 97 tokens
    batches = [PromptBatch(tokens)]
    request = CaptureRequest(
        roles=frozenset(ROLES), attention_stats=True, hidden_norms=True, patterns=frozenset({(16, 0), (20, 8)})
    )
    ours = capture.measure(loaded, batches, request, attention="blockwise")
    assert loaded.model.config._attn_implementation == "eager"
    reference = naive(loaded, batches)
    assert_same(ours, reference)
    assert_same(capture.measure(loaded, batches, request, attention="fused"), reference)
    assert_same(capture.measure(loaded, batches, request, attention="eager"), reference)


def test_half_precision_blockwise_scores_float32_weights(tmp_path: Path) -> None:
    """Eager attention rounds bfloat16 weights before the hook sees them; blockwise scores the float32
    softmax, so the two agree to bfloat16's precision."""
    loaded = load_model(str(save_model(llama_config(), tmp_path / "llama", seed=3)), LoadOptions(dtype="bfloat16"))
    batches = repeated_batches(VOCAB)
    ours = capture.measure(loaded, batches, EVERYTHING, attention="blockwise", tuning=SMALL_BLOCKS)
    eager = capture.measure(loaded, batches, EVERYTHING, attention="eager", tuning=SMALL_BLOCKS)
    for role in ROLES:
        np.testing.assert_allclose(ours.role_scores[role], eager.role_scores[role], atol=1e-3, err_msg=role)
    np.testing.assert_allclose(ours.hidden_norms, eager.hidden_norms, rtol=1e-3)  # type: ignore[arg-type]


# ---- SDPA when nothing needs attention; restoring the implementation ----


def test_request_without_attention_runs_sdpa_and_restores(tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny("llama_gqa")
    batches = repeated_batches(VOCAB)
    norms_only = CaptureRequest(hidden_norms=True)
    with ImplementationSpy(loaded) as spy:
        fast = capture.measure(loaded, batches, norms_only)
    assert spy.calls and all(call == ("sdpa", False) for call in spy.calls), spy.calls
    assert loaded.model.config._attn_implementation == "eager"
    assert fast.role_scores == {} and fast.max_weight is None
    eager = capture.measure(loaded, batches, norms_only, attention="eager")
    np.testing.assert_allclose(fast.hidden_norms, eager.hidden_norms, rtol=1e-5)  # type: ignore[arg-type]


def test_implementation_restored_after_an_error(tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny("gpt2")

    def explode(module: Any, args: Any, output: Any) -> None:
        raise RuntimeError("boom")

    handle = capture.describe(loaded).blocks[1].register_forward_hook(explode)
    try:
        for request in (EVERYTHING, CaptureRequest(hidden_norms=True)):
            with pytest.raises(RuntimeError, match="boom"):
                capture.measure(loaded, repeated_batches(VOCAB), request)
            assert loaded.model.config._attn_implementation == "eager"
    finally:
        handle.remove()
    assert blockwise._ACTIVE.get() is None


def test_blocks_stay_within_the_budget(tiny: Callable[[str], LoadedModel], monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = tiny("llama_gqa")  # 4 heads
    batches = repeated_batches(VOCAB)[:1]  # 2 sequences of 41 tokens
    budget = 2 * 4 * 12 * 41 * 4  # 12 rows of all 41 keys
    seen: list[tuple[int, ...]] = []
    original = capture._Run.score_rows

    def spy(self: Any, layer: int, weights: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        seen.append(tuple(weights.shape))
        original(self, layer, weights, *args, **kwargs)

    monkeypatch.setattr(capture._Run, "score_rows", spy)
    request = CaptureRequest(roles=frozenset(["previous_token"]))
    capture.measure(loaded, batches, request, attention="blockwise", tuning=Tuning(block_bytes=budget))
    assert len(seen) > 2 * 2, "each layer is scored in several blocks"
    assert all(b * h * rows * keys * 4 <= budget or rows == MIN_BLOCK_ROWS for b, h, rows, keys in seen)


def test_row_blocks_cover_every_row_once() -> None:
    for n_rows, heads, budget in [(1, 9, 100), (41, 4, 1), (1000, 9, 9 * 200 * 1000), (4096, 9, 1 << 20)]:
        blocks = blockwise.row_blocks(n_rows, heads, budget)
        assert blocks[0][0] == 0 and blocks[-1][1] == n_rows
        assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
        assert all(heads * (stop - start) * stop <= budget or stop - start <= MIN_BLOCK_ROWS for start, stop in blocks)


# ---- the optimised scoring against the plain masked formulas ----


def dense_scores(weights: torch.Tensor, tokens: torch.Tensor, window: int | None) -> dict[Role, torch.Tensor]:
    """Every role, each row's score by a full masked multiply over ``weights[B, H, T, T]`` (rows >= 1)."""
    n = weights.shape[-1]
    w = weights[:, :, 1:].double()
    seen = scores.visible_keys(n, 1, n - 1, window)
    result: dict[Role, torch.Tensor] = {}
    for role in TARGET_ROLES:
        targets = scores.target_mask(role, tokens, 1, n - 1) & seen
        has_target = targets.any(-1)
        per_row = (w * targets.unsqueeze(1)).sum(-1)
        result[role] = (per_row * has_target.unsqueeze(1)).sum((0, 2)) / has_target.sum()
    result["focus"] = w.amax(-1).mean((0, 2))
    n_seen = seen.sum(-1)
    entropy = -torch.special.xlogy(w, w).sum(-1) / torch.log(n_seen.clamp(min=2).double())
    result["breadth"] = entropy[:, :, n_seen >= 2].mean((0, 2))
    return result


@pytest.mark.parametrize("window", [None, 5])
def test_block_scores_match_dense_formulas(window: int | None) -> None:
    generator = torch.Generator().manual_seed(4)
    batch, heads, n = 2, 3, 23
    tokens = torch.randint(4, 9, (batch, n), generator=generator)  # few distinct tokens: many duplicates
    logits = torch.randn(batch, heads, n, n, generator=generator) * 3
    hidden = ~scores.visible_keys(n, 0, n, window)
    logits = logits.masked_fill(hidden, blockwise.HIDDEN_LOGIT)
    shifted = logits - logits.amax(-1, keepdim=True)
    weights = torch.softmax(logits, -1)
    expected = dense_scores(weights, tokens, window)
    totals: dict[Role, torch.Tensor] = {}
    rows: dict[Role, int] = {}
    for start, stop in [(0, 6), (6, 7), (7, 15), (15, n)]:  # ragged blocks holding only the keys they need
        block, block_logits = weights[:, :, start:stop, :stop], shifted[:, :, start:stop, :stop]
        sums = scores.score_block(block, tokens, start, ROLES, window, shifted_logits=block_logits)
        for role in ROLES:
            totals[role] = totals.get(role, 0) + sums.role_sums[role]
            rows[role] = rows.get(role, 0) + sums.role_rows[role]
    for role in ROLES:
        torch.testing.assert_close(totals[role].double() / rows[role], expected[role], atol=1e-6, rtol=0)
    whole = scores.pattern_scores(weights, tokens, window=window)
    for role in ROLES:
        torch.testing.assert_close(whole[role].double(), expected[role], atol=1e-6, rtol=0)
