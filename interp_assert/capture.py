"""The only module that runs a model.

Capture is driven by a :class:`CaptureRequest`: the roles whose scores are
needed and whether hidden-state norms are needed. Each layer's attention is
reduced to per-head sums the moment it is produced and then dropped, so peak
memory holds one layer's attention, never all layers'. Raw tensors never leave
this module; :class:`Measurements` holds numbers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from interp_assert.errors import CaptureError
from interp_assert.models import LoadedModel
from interp_assert.prompts import PromptBatch
from interp_assert.scores import BlockSums, check_block, score_block
from interp_assert.vocab import Role


@dataclass(frozen=True, kw_only=True)
class CaptureRequest:
    """What to compute. ``patterns`` asks for the full ``[T, T]`` attention of a few
    ``(layer, head)`` pairs on the first sequence only (for pictures, never for scores)."""

    roles: frozenset[Role] = frozenset()
    attention_stats: bool = False
    hidden_norms: bool = False
    patterns: frozenset[tuple[int, int]] = frozenset()

    @property
    def needs_attention(self) -> bool:
        return bool(self.roles) or self.attention_stats or bool(self.patterns)

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            roles=self.roles | other.roles,
            attention_stats=self.attention_stats or other.attention_stats,
            hidden_norms=self.hidden_norms or other.hidden_norms,
            patterns=self.patterns | other.patterns,
        )


@dataclass(frozen=True)
class Measurements:
    """Numbers measured on one prompt set. Arrays are ``[L, H]`` or ``[L + 1]`` (hidden states)."""

    n_layers: int
    n_heads: int
    role_scores: dict[Role, np.ndarray] = field(default_factory=dict)
    max_weight: np.ndarray | None = None
    mean_weight: np.ndarray | None = None
    # index k: the residual stream after k blocks (0 = embeddings; last = before the final norm)
    hidden_norms: np.ndarray | None = None
    hidden_norms_without_first: np.ndarray | None = None
    # (layer, head) -> [T, T] attention on the first sequence, and that sequence's tokens as text
    patterns: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    pattern_tokens: tuple[str, ...] = ()
    # for prompt sets with ``generate``: each sequence's greedy continuation, decoded
    generated_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Architecture:
    """Where a model keeps its blocks and the attention module of each."""

    blocks: list[Any]
    attention: list[Any]
    windows: list[int | None]
    n_heads: int


def describe(loaded: LoadedModel) -> Architecture:
    config = loaded.config
    n_layers = int(config.num_hidden_layers)
    blocks = _find_blocks(loaded.model, n_layers)
    attention = [_attention_module(block, index, loaded) for index, block in enumerate(blocks)]
    return Architecture(blocks, attention, _windows(config, n_layers), int(config.num_attention_heads))


def max_positions(loaded: LoadedModel) -> int | None:
    value = getattr(loaded.config, "max_position_embeddings", None)
    return int(value) if value else None


def measure(loaded: LoadedModel, batches: list[PromptBatch], request: CaptureRequest) -> Measurements:
    """Run the model over ``batches`` and reduce what ``request`` asks for."""
    arch = describe(loaded)
    n_layers = len(arch.blocks)
    accumulator = _Accumulator(n_layers, arch.n_heads)
    tolerance = 1e-4 if loaded.options.dtype == "float32" else 5e-2
    roles = tuple(sorted(request.roles))
    current: dict[str, Any] = {}
    patterns: dict[tuple[int, int], np.ndarray] = {}
    for layer, head in request.patterns:
        if not (0 <= layer < n_layers and 0 <= head < arch.n_heads):
            raise CaptureError(f"no head L{layer}H{head}: layers 0-{n_layers - 1}, heads 0-{arch.n_heads - 1}")

    def attention_hook(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
                raise CaptureError(
                    f"{type(loaded.model).__name__}: layer {layer} attention ({type(module).__name__}) returned "
                    "no attention weights; this architecture cannot report attention in eager mode"
                )
            problems = check_block(weights, 0, arch.windows[layer], tolerance)
            if problems:
                raise CaptureError(f"invalid attention captured at layer {layer}: " + "; ".join(problems))
            accumulator.add(layer, score_block(weights, current["tokens"], 0, roles, arch.windows[layer]))
            if current["first_batch"]:
                for wanted_layer, head in request.patterns:
                    if wanted_layer == layer:
                        patterns[(layer, head)] = weights[0, head].float().cpu().numpy().copy()
            return (output[0], None, *output[2:])  # drop the weights now

        return hook

    def norm_hook(index: int) -> Any:
        def hook(module: Any, args: Any, kwargs: Any, output: Any = None) -> None:
            hidden = output if output is not None else (args[0] if args else kwargs["hidden_states"])
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            accumulator.add_norms(index, hidden.float().norm(dim=-1))

        return hook

    if not request.needs_attention and not request.hidden_norms:
        return Measurements(n_layers, arch.n_heads)
    handles = []
    try:
        if request.needs_attention:
            handles += [m.register_forward_hook(attention_hook(i)) for i, m in enumerate(arch.attention)]
        if request.hidden_norms:
            handles.append(arch.blocks[0].register_forward_pre_hook(norm_hook(0), with_kwargs=True))
            handles += [b.register_forward_hook(_output_only(norm_hook(i + 1))) for i, b in enumerate(arch.blocks)]
        with torch.inference_mode(), _quiet():
            for index, batch in enumerate(batches):
                current["tokens"] = batch.tokens.to(loaded.options.device)
                current["first_batch"] = index == 0
                _base_model(loaded.model)(input_ids=current["tokens"], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    result = accumulator.result(roles, request)
    if request.patterns:
        first = batches[0].tokens[0].tolist()
        words = tuple(loaded.tokenizer.convert_ids_to_tokens(first))
        result = replace(result, patterns=patterns, pattern_tokens=words)
    return result


def generate(loaded: LoadedModel, batches: list[PromptBatch], max_new_tokens: int) -> list[PromptBatch]:
    """Greedy (deterministic) continuation of every sequence by ``max_new_tokens`` tokens.

    The returned batches hold prompt + continuation; measuring them with one forward
    pass gives every generated position the same attention it had while being
    generated with a KV cache, since attention is causal.
    """
    extended = []
    with torch.inference_mode(), _quiet():
        for batch in batches:
            tokens = batch.tokens.to(loaded.options.device)
            output = loaded.model.generate(
                input_ids=tokens,
                attention_mask=torch.ones_like(tokens),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id or 0,
            )
            extended.append(PromptBatch(output.cpu()))
    return extended


def _output_only(hook: Any) -> Any:
    return lambda module, args, output: hook(module, args, {}, output)


def _base_model(model: Any) -> Any:
    """The model without its LM head: logits ([B, T, vocab]) are never needed."""
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


def _find_blocks(model: Any, n_layers: int) -> list[Any]:
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise CaptureError(f"{type(model).__name__}: no list of {n_layers} transformer blocks found")
    return list(lists[0])


def _attention_module(block: Any, index: int, loaded: LoadedModel) -> Any:
    found = [
        (name, module)
        for name, module in block.named_modules()
        if "Attention" in type(module).__name__ and "Rotary" not in type(module).__name__
    ]
    if not found:
        raise CaptureError(
            f"{type(loaded.model).__name__}: block {index} has no attention module that interp_assert recognises"
        )
    return max(found, key=lambda item: item[0].count("."))[1]  # the innermost one computes the weights


def _windows(config: Any, n_layers: int) -> list[int | None]:
    """Each layer's local-attention window (keys with query - key < window are visible), or None."""
    attention_layers = getattr(config, "attention_layers", None)  # GPT-Neo
    if attention_layers is not None:
        return [config.window_size if kind == "local" else None for kind in attention_layers]
    layer_types = getattr(config, "layer_types", None)
    sliding = getattr(config, "sliding_window", None)
    if layer_types is not None and sliding:
        return [sliding if kind == "sliding_attention" else None for kind in layer_types]
    return [None] * n_layers


@contextmanager
def _quiet() -> Iterator[None]:
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


class _Accumulator:
    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads
        self.role_sums: dict[Role, np.ndarray] = {}
        self.role_rows: dict[Role, np.ndarray] = {}
        self.max_weight = np.zeros((n_layers, n_heads))
        self.visible_sum = np.zeros((n_layers, n_heads))
        self.visible_entries = np.zeros(n_layers)
        self.norm_sum = np.zeros(n_layers + 1)
        self.norm_sum_rest = np.zeros(n_layers + 1)
        self.norm_count = np.zeros(n_layers + 1)
        self.norm_count_rest = np.zeros(n_layers + 1)

    def add(self, layer: int, sums: BlockSums) -> None:
        for role, values in sums.role_sums.items():
            self.role_sums.setdefault(role, np.zeros((self.n_layers, self.n_heads)))[layer] += (
                values.double().cpu().numpy()
            )
            self.role_rows.setdefault(role, np.zeros(self.n_layers))[layer] += sums.role_rows[role]
        if sums.max_weight is not None and sums.visible_sum is not None:
            self.max_weight[layer] = np.maximum(self.max_weight[layer], sums.max_weight.cpu().numpy())
            self.visible_sum[layer] += sums.visible_sum.double().cpu().numpy()
            self.visible_entries[layer] += sums.visible_entries

    def add_norms(self, index: int, norms: torch.Tensor) -> None:
        if not bool(torch.isfinite(norms).all()):
            where = "the embeddings" if index == 0 else f"the output of block {index - 1}"
            raise CaptureError(f"hidden state {index} ({where}) has non-finite values")
        self.norm_sum[index] += float(norms.double().sum())
        self.norm_count[index] += norms.numel()
        self.norm_sum_rest[index] += float(norms[:, 1:].double().sum())
        self.norm_count_rest[index] += norms[:, 1:].numel()

    def result(self, roles: tuple[Role, ...], request: CaptureRequest) -> Measurements:
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = {
                role: self.role_sums[role] / self.role_rows[role][:, None] for role in roles if role in self.role_sums
            }
            hidden = request.hidden_norms
            return Measurements(
                self.n_layers,
                self.n_heads,
                scores,
                self.max_weight if request.attention_stats else None,
                self.visible_sum / self.visible_entries[:, None] if request.attention_stats else None,
                self.norm_sum / self.norm_count if hidden else None,
                self.norm_sum_rest / self.norm_count_rest if hidden else None,
            )
