"""The fused path (scores from the softmax normaliser) against the eager reference.

Its three kernels run here: the CPU flash kernel (``aten``), the one-pass kernel of
:mod:`interp_assert.measure.attention.native` (``native``, where a C++ compiler builds it), and FlexAttention's maths
(``flex``: on CUDA compiled; here its reference implementation, which materialises the logits,
with the row maximum from the sharpened pass, since only CUDA returns ``max_scores``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from interp_assert.measure.attention import blockwise, fused, kernels, native, paths
from interp_assert.measure.attention.tuning import Tuning
from interp_assert.measure.capture import run as capture
from interp_assert.measure.capture import scores
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.run import CaptureRequest, Measurements
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, load_model
from interp_assert.vocab import ROLES
from tests.builders import VOCAB, save_model, tiny_config
from tests.measure.test_capture_paths import (
    EVERYTHING,
    INTERFACE_KINDS,
    ImplementationSpy,
    _config,
    assert_same,
    naive,
    repeated_batches,
)

BACKENDS = ["aten", "aten-repeated", "native", "flex"]  # repeated: as with a kernel without grouped heads
POSITIONAL = CaptureRequest(roles=frozenset(["previous_token", "first_token", "self"]), hidden_norms=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., LoadedModel]:
    loaded: dict[tuple[str, str], LoadedModel] = {}

    def get(kind: str, dtype: str = "float32") -> LoadedModel:
        if (kind, dtype) not in loaded:
            config = tiny_config("gemma2") if kind == "gemma2_softcap" else _config(kind)
            directory = tmp_path_factory.mktemp(kind)
            loaded[kind, dtype] = load_model(str(save_model(config, directory, seed=3)), LoadOptions(dtype=dtype))  # type: ignore[arg-type]
        return loaded[kind, dtype]

    return get


PATH_OF: dict[str, str] = {"aten": "fused-flash", "native": "fused-native", "flex": "fused-flex"}


@dataclass(frozen=True)
class Forced:
    """A kernel for every fused layer: the path that pins it, and small sizes to work in."""

    kernel: fused.Backend
    attention: str
    tuning: Tuning


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Forced:
    """Each kernel, with sliding-window layers computed in bands of 5 rows, dot products in chunks
    of a few rows and targets found a few rows at a time (several per sequence)."""
    if request.param == "native" and not native.available():
        pytest.skip(f"the native kernel is not available: {native.build_error()}")
    kernel = request.param.removesuffix("-repeated")
    tuning = Tuning(
        window_rows=5, gather_bytes=1000, target_mask_elements=200, repeat_groups=request.param == "aten-repeated"
    )
    return Forced(kernel, PATH_OF[kernel], tuning)


class KernelSpy:
    """Counts the kernels' calls and the layers handed to blockwise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.flash_calls = 0
        self.native_calls = 0
        self.blockwise_calls = 0
        flash, one_pass, block = kernels.FLASH_CPU, native.attention, blockwise.blockwise_attention

        def counted_flash(*args: Any, **kwargs: Any) -> Any:
            self.flash_calls += 1
            return flash(*args, **kwargs)

        def counted_native(*args: Any, **kwargs: Any) -> Any:
            self.native_calls += 1
            return one_pass(*args, **kwargs)

        def counted_block(*args: Any, **kwargs: Any) -> Any:
            self.blockwise_calls += 1
            return block(*args, **kwargs)

        monkeypatch.setattr(kernels, "FLASH_CPU", counted_flash)
        monkeypatch.setattr(native, "attention", counted_native)
        monkeypatch.setattr(blockwise, "blockwise_attention", counted_block)


def max_differences(got: Measurements, expected: Measurements) -> dict[str, float]:
    found = {role: float(np.max(np.abs(got.role_scores[role] - expected.role_scores[role]))) for role in ROLES}
    if got.max_weight is not None and expected.max_weight is not None:
        found["max"] = float(np.max(np.abs(got.max_weight - expected.max_weight)))
    return found


# ---- exactness: float32 against the naive eager computation ----


@pytest.mark.parametrize("kind", INTERFACE_KINDS)
def test_fused_matches_naive(
    kind: str, backend: Forced, tiny: Callable[..., LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every role, the attention statistics, patterns and hidden norms within 1e-5 of the eager
    reference, on grouped-query heads, sliding windows, batches of two sequences and of one."""
    loaded = tiny(kind)
    batches = repeated_batches(VOCAB)
    spy = KernelSpy(monkeypatch)
    with ImplementationSpy(loaded) as implementation:
        ours = capture.measure(loaded, batches, EVERYTHING, attention=backend.attention, tuning=backend.tuning)
    assert implementation.calls and all(call == (fused.IMPLEMENTATION, False) for call in implementation.calls)
    assert spy.blockwise_calls == 0, "every layer is fused"
    assert loaded.model.config._attn_implementation == "eager", "the implementation is restored"
    assert_same(ours, naive(loaded, batches))


def test_soft_capping_fuses_with_flex_and_falls_back_on_cpu_kernel(
    tiny: Callable[..., LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemma2: FlexAttention takes the cap as a ``score_mod``; the CPU kernels cannot, and breadth
    with a cap is not ``q . o'``: those layers go blockwise, in the same run, still exact."""
    loaded = tiny("gemma2_softcap")
    batches = repeated_batches(VOCAB)
    reference = naive(loaded, batches)
    without_breadth = CaptureRequest(roles=frozenset(ROLES) - {"breadth"}, attention_stats=True)
    for attention, request, fused_layers in [
        ("fused-flex", without_breadth, 2),
        ("fused-flex", EVERYTHING, 0),
        ("fused-flash", without_breadth, 0),
        ("fused", EVERYTHING, 0),  # the kernel as chosen (native on CPU, if built)
    ]:
        with monkeypatch.context() as patch:
            spy = KernelSpy(patch)
            ours = capture.measure(loaded, batches, request, attention=attention)
        assert spy.blockwise_calls == 2 * (2 - fused_layers), (attention, request)  # two batches
        for role in request.roles:
            np.testing.assert_allclose(ours.role_scores[role], reference.role_scores[role], atol=1e-5, err_msg=role)
        np.testing.assert_allclose(ours.max_weight, reference.max_weight, atol=1e-5)  # type: ignore[arg-type]


# ---- bfloat16 against eager in the same dtype ----


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2_sliding", "gemma2_softcap"])
def test_bfloat16_fused_matches_eager(kind: str, backend: Forced, tiny: Callable[..., LoadedModel]) -> None:
    """Within 2e-3 of eager attention in bfloat16 (whose weights are rounded to bfloat16 before they
    are scored: half a bfloat16 step below 1 is 2 ** -9 = 1.95e-3, the most ``max`` can differ by)."""
    loaded = tiny(kind, "bfloat16")
    batches = repeated_batches(VOCAB)
    request = CaptureRequest(roles=frozenset(ROLES), attention_stats=True, hidden_norms=True)
    if kind == "gemma2_softcap":
        request = CaptureRequest(roles=frozenset(ROLES) - {"breadth"}, attention_stats=True, hidden_norms=True)
    ours = capture.measure(loaded, batches, request, attention=backend.attention, tuning=backend.tuning)
    eager = capture.measure(loaded, batches, request, attention="eager")
    for role in request.roles:
        np.testing.assert_allclose(ours.role_scores[role], eager.role_scores[role], atol=2e-3, err_msg=role)
    np.testing.assert_allclose(ours.max_weight, eager.max_weight, atol=2e-3)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.mean_weight, eager.mean_weight, atol=2e-3)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.hidden_norms, eager.hidden_norms, rtol=2e-2)  # type: ignore[arg-type]


# ---- only what is asked for is computed ----


@pytest.mark.parametrize(
    ("request_", "passes"),
    [
        (POSITIONAL, 1),
        (CaptureRequest(roles=frozenset(["induction", "duplicate_token", "self"])), 1),
        (CaptureRequest(roles=frozenset(["breadth"])), 2),
        (CaptureRequest(roles=frozenset(["focus"])), 2),
        (CaptureRequest(roles=frozenset(["previous_token"]), attention_stats=True), 2),
        (EVERYTHING, 3),
    ],
)
def test_kernel_passes_follow_the_request(
    request_: CaptureRequest, passes: int, tiny: Callable[..., LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """previous/first/self cost one flash kernel pass per layer and sequence, like the plain forward;
    breadth and the row maximum (focus, ``max``) one more each with that kernel, only when asked
    for; with the native kernel, one pass per layer gives them all."""
    loaded = tiny("llama_gqa")
    batches = repeated_batches(VOCAB)  # three sequences in two batches
    kernels.kernel_takes_groups()  # its probe is not a pass
    with monkeypatch.context() as patch:
        spy = KernelSpy(patch)
        capture.measure(loaded, batches, request_, attention="fused-flash")
    assert spy.flash_calls == passes * 2 * 2
    assert spy.blockwise_calls == 0
    spy = KernelSpy(monkeypatch)
    capture.measure(loaded, batches, request_, attention="fused")
    if passes > 1 and native.available():
        assert (spy.native_calls, spy.flash_calls) == (2 * 2, 0)  # per layer and batch
    else:
        assert (spy.native_calls, spy.flash_calls) == (0, passes * 2 * 2)


@pytest.mark.parametrize("with_native", [True, False])
def test_auto_chooses_the_cheaper_path_on_cpu(
    with_native: bool, tiny: Callable[..., LoadedModel], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Fused, except for breadth and the row maximum together without the native kernel (three
    flash passes): then one blockwise pass is cheaper."""
    if with_native and not native.available():
        pytest.skip(f"the native kernel is not available: {native.build_error()}")
    if not with_native:
        monkeypatch.setenv("INTERP_ASSERT_NATIVE", "0")
        native.forget()
        request.addfinalizer(native.forget)  # the next test finds the kernel again
    loaded = tiny("llama_gqa")
    batches = repeated_batches(VOCAB)
    for request, expected in [
        (POSITIONAL, fused.IMPLEMENTATION),
        (CaptureRequest(roles=frozenset(["breadth", "induction"])), fused.IMPLEMENTATION),
        (EVERYTHING, fused.IMPLEMENTATION if with_native else blockwise.IMPLEMENTATION),
    ]:
        with ImplementationSpy(loaded) as spy:
            ours = capture.measure(loaded, batches, request)
        assert {name for name, _ in spy.calls} == {expected}, request
    assert_same(ours, naive(loaded, batches))


@pytest.mark.parametrize(
    ("request_", "device", "attention", "expected"),
    [
        (CaptureRequest(hidden_norms=True), "cpu", "auto", ["sdpa"]),
        (CaptureRequest(hidden_norms=True), "cpu", "eager", ["sdpa"]),  # no attention to compute another way
        (POSITIONAL, "cpu", "auto", ["fused-flash", "eager"]),  # eager: where a layer bypasses the interface
        (POSITIONAL, "cpu", "blockwise", ["blockwise"]),
        (POSITIONAL, "cpu", "fused-native", ["fused-native"]),
        (EVERYTHING, "cuda", "auto", ["fused-flex", "eager"]),
        (EVERYTHING, "mps", "auto", ["blockwise", "eager"]),  # FlexAttention is compiled on CUDA only
        (EVERYTHING, "mps", "fused", ["fused-flex"]),
        (POSITIONAL, "cuda", "eager", ["eager"]),
    ],
)
def test_one_function_chooses_the_path(
    request_: CaptureRequest, device: str, attention: str, expected: list[str]
) -> None:
    if "native" in expected[0] and not native.available():
        pytest.skip(f"the native kernel is not available: {native.build_error()}")
    chosen = paths.choose(paths.Situation(request_, torch.device(device), 16), attention)
    assert [path.name for path in chosen] == expected
    pinned = attention == expected[0] and attention.startswith("fused-")
    assert all(getattr(path, "pinned", False) == pinned for path in chosen)


def test_the_cpu_choice_follows_the_native_kernel(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    situation = paths.Situation(EVERYTHING, torch.device("cpu"), 16)
    if native.available():
        assert [path.name for path in paths.choose(situation)] == ["fused-native", "eager"]
    monkeypatch.setenv("INTERP_ASSERT_NATIVE", "0")
    native.forget()
    request.addfinalizer(native.forget)
    assert [path.name for path in paths.choose(situation)] == ["blockwise", "eager"]  # 2.3 passes against 3
    one_extra = paths.Situation(CaptureRequest(roles=frozenset(["breadth"])), torch.device("cpu"), 16)
    assert paths.choose(one_extra)[0].name == "fused-flash"  # 2 passes against 2.3
    with pytest.raises(capture.CaptureError, match="fused-native: the native kernel is not used"):
        paths.choose(situation, "fused-native")
    with pytest.raises(capture.CaptureError, match="unknown attention path 'flash'"):
        paths.choose(situation, "flash")


def test_gpt_neo_cannot_be_fused(tiny: Callable[..., LoadedModel]) -> None:
    loaded = tiny("gpt_neo")
    batches = repeated_batches(VOCAB)
    assert_same(capture.measure(loaded, batches, EVERYTHING), naive(loaded, batches))  # eager hooks, as before
    with pytest.raises(capture.CaptureError, match="cannot be captured fused"):
        capture.measure(loaded, batches, POSITIONAL, attention="fused")


# ---- the layer's output is the kernel's ----


@pytest.mark.parametrize("window", [None, 6])
def test_output_is_sdpa_output(window: int | None, backend: Forced) -> None:
    """The fused function's output is attention's output (grouped-query heads, batch of 2)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 23, 6, 16, generator=generator).transpose(1, 2)  # laid out as models do
    key = torch.randn(2, 23, 2, 16, generator=generator).transpose(1, 2)
    value = torch.randn(2, 23, 2, 16, generator=generator).transpose(1, 2)
    module = torch.nn.Module()
    module.num_key_value_groups = 3  # type: ignore[assignment]
    module.is_causal = True  # type: ignore[assignment]
    ours, _ = fused.fused_attention(
        module, query, key, value, None, scaling=0.3, sliding_window=window, kernel=backend.kernel
    )
    mask = None
    if window is not None:
        mask = scores.visible_keys(23, 0, 23, window).view(1, 1, 23, 23)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3, is_causal=window is None)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)


# ---- the pure scoring from the normaliser ----


@pytest.mark.parametrize("window", [None, 5])
def test_score_rows_matches_score_block(window: int | None) -> None:
    """From lse, the weights at the targets, the row maximum and the entropy, the same sums as
    from the whole block of weights."""
    generator = torch.Generator().manual_seed(2)
    batch, heads, n = 2, 3, 19
    tokens = torch.randint(4, 9, (batch, n), generator=generator)
    logits = torch.randn(batch, heads, n, n, generator=generator) * 3
    logits = logits.masked_fill(~scores.visible_keys(n, 0, n, window), float("-inf"))
    weights = torch.softmax(logits, -1)
    lse = torch.logsumexp(logits, -1)
    targets = scores.block_targets(tokens, 0, n, n, ROLES, window)
    picked = scores.weights_from_normaliser(
        logits[targets.batch_index, :, targets.row_index, targets.key_index],
        lse[targets.batch_index, :, targets.row_index],
    )
    expected_logit = (weights * logits.masked_fill(weights == 0, 0.0)).sum(-1)
    entropy = scores.entropy_from_normaliser(lse, expected_logit)
    max_weight = scores.weights_from_normaliser(logits.amax(-1), lse)
    got = scores.score_rows(
        targets, picked, 0, n, batch, ROLES, window, max_weight=max_weight, entropy=entropy, attention_stats=True
    )
    reference = scores.score_block(weights, tokens, 0, ROLES, window, attention_stats=True)
    for role in ROLES:
        torch.testing.assert_close(got.role_sums[role], reference.role_sums[role], atol=1e-5, rtol=0)
        assert got.role_rows[role] == reference.role_rows[role]
    torch.testing.assert_close(got.max_weight, reference.max_weight)
    torch.testing.assert_close(got.visible_sum, reference.visible_sum, atol=1e-4, rtol=0)
    assert got.visible_entries == reference.visible_entries


def test_non_finite_attention_is_an_error(tmp_path: Path) -> None:
    config = tiny_config("llama")
    loaded = load_model(str(save_model(config, tmp_path / "llama", seed=3)), LoadOptions())
    with torch.no_grad():
        loaded.model.model.layers[1].self_attn.q_proj.weight[16:32] = float("nan")  # query head 1
    with pytest.raises(capture.CaptureError, match="layer 1: head 1: attention weights are not finite"):
        capture.measure(loaded, repeated_batches(VOCAB), POSITIONAL, attention="fused")


def test_sharpened_lse_gives_the_row_maximum() -> None:
    """lse(SHARPNESS * s) / SHARPNESS is the largest logit to float32 precision, ties included."""
    generator = torch.Generator().manual_seed(5)
    query = torch.randn(1, 4, 300, 32, generator=generator) * 2
    key = torch.randn(1, 4, 300, 32, generator=generator) * 2
    key[:, :, 7] = key[:, :, 3]  # an exact tie
    _, sharp = kernels.FLASH_CPU(query, key, key, 0.0, True, scale=0.2 * kernels.SHARPNESS)
    logits = (query @ key.transpose(-1, -2) * 0.2).masked_fill(~scores.visible_keys(300, 0, 300, None), float("-inf"))
    torch.testing.assert_close(sharp / kernels.SHARPNESS, logits.amax(-1), atol=1e-5, rtol=1e-6)


# ---- the native kernel ----


@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "n_tokens", "head_dim", "window"),
    [(2, 4, 2, 41, 16, None), (1, 6, 3, 300, 64, None), (2, 4, 2, 517, 64, 37), (1, 2, 1, 130, 128, None),
     (1, 3, 3, 97, 80, 300), (1, 2, 2, 70, 48, 1)],
)  # fmt: skip
def test_native_kernel_matches_the_softmax(
    batch: int, heads: int, kv_heads: int, n_tokens: int, head_dim: int, window: int | None
) -> None:
    """Output, lse, entropy and row maximum against float64 softmax attention: several blocks of
    rows and keys, ragged edges, windows narrower and wider than a block, grouped-query heads."""
    if not native.available():
        pytest.skip(f"the native kernel is not available: {native.build_error()}")
    generator = torch.Generator().manual_seed(n_tokens)
    query = torch.randn(batch, n_tokens, heads, head_dim, generator=generator).transpose(1, 2) * 2
    key = torch.randn(batch, n_tokens, kv_heads, head_dim, generator=generator).transpose(1, 2) * 2
    value = torch.randn(batch, n_tokens, kv_heads, head_dim, generator=generator).transpose(1, 2)
    scale = head_dim**-0.5
    output, lse, entropy, row_max = native.attention(query, key, value, scale, window)
    groups = heads // kv_heads
    logits = query.double() @ key.double().repeat_interleave(groups, 1).transpose(-1, -2) * scale
    logits = logits.masked_fill(~scores.visible_keys(n_tokens, 0, n_tokens, window), float("-inf"))
    weights = torch.softmax(logits, -1)
    expected = (weights @ value.double().repeat_interleave(groups, 1)).transpose(1, 2)
    torch.testing.assert_close(output.double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, -1), atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(entropy.double(), -torch.special.xlogy(weights, weights).sum(-1), atol=2e-5, rtol=0)
    torch.testing.assert_close(row_max.double(), logits.amax(-1), atol=2e-5, rtol=1e-6)


def test_without_a_compiler_capture_does_without_the_native_kernel(
    tiny: Callable[..., LoadedModel], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("INTERP_ASSERT_NATIVE", "0")
    native.forget()
    request.addfinalizer(native.forget)  # the next test builds (or finds) the kernel again
    assert not native.available() and "INTERP_ASSERT_NATIVE=0" in str(native.build_error())
    loaded = tiny("llama_gqa")
    batches = repeated_batches(VOCAB)
    with ImplementationSpy(loaded) as spy:
        ours = capture.measure(loaded, batches, EVERYTHING)
    assert {name for name, _ in spy.calls} == {blockwise.IMPLEMENTATION}
    assert_same(ours, naive(loaded, batches))
    assert_same(capture.measure(loaded, batches, EVERYTHING, attention="fused"), naive(loaded, batches))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2_sliding", "gemma2_softcap"])
def test_cuda_fused_matches_eager(kind: str, dtype: str, tmp_path: Path) -> None:
    """On CUDA: compiled FlexAttention, ``max_scores`` and soft-capping in ``score_mod``, against
    eager attention in the same dtype (1e-5 in float32, 2e-3 in bfloat16)."""
    config = tiny_config("gemma2") if kind == "gemma2_softcap" else _config(kind)
    directory = save_model(config, tmp_path / kind, seed=3)
    loaded = load_model(str(directory), LoadOptions(device="cuda", dtype=dtype))  # type: ignore[arg-type]
    batches = repeated_batches(VOCAB)
    request = CaptureRequest(roles=frozenset(ROLES), attention_stats=True, hidden_norms=True)
    if kind == "gemma2_softcap":
        request = CaptureRequest(roles=frozenset(ROLES) - {"breadth"}, attention_stats=True, hidden_norms=True)
    ours = capture.measure(loaded, batches, request)
    eager = capture.measure(loaded, batches, request, attention="eager")
    tolerance = 1e-5 if dtype == "float32" else 2e-3
    for role in request.roles:
        np.testing.assert_allclose(ours.role_scores[role], eager.role_scores[role], atol=tolerance, err_msg=role)
    np.testing.assert_allclose(ours.max_weight, eager.max_weight, atol=tolerance)  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm2_fused_matches_naive(smollm2_dir: Path) -> None:
    loaded = load_model(str(smollm2_dir), LoadOptions())
    vocab = int(loaded.config.vocab_size)
    piece = torch.randint(100, vocab, (1, 48), generator=torch.Generator().manual_seed(1))
    tokens = torch.cat([torch.tensor([[loaded.tokenizer.bos_token_id]]), piece, piece], dim=1)
    batches = [PromptBatch(tokens)]
    request = CaptureRequest(
        roles=frozenset(ROLES), attention_stats=True, hidden_norms=True, patterns=frozenset({(16, 0), (20, 8)})
    )
    assert_same(capture.measure(loaded, batches, request, attention="fused"), naive(loaded, batches))
