"""Attention computed in row blocks and reduced as it is produced.

Models whose attention goes through transformers' ``AttentionInterface`` (Llama,
Qwen2, Mistral, Gemma, Phi, GPT-2, GPT-NeoX, ...) call a registered function with
the post-rotary query, key and value. :func:`blockwise_attention` is that function:
for a block of query rows it computes the softmax weights against the keys the
rows can see (``Tuning.block_bytes`` of scratch at a time), hands them to the active
capture to be scored, and multiplies them by the values. So the scores describe
exactly the attention the forward pass used, no more than one block of a ``[T, T]``
pattern ever exists, and the weights are computed once, for the output and the
scores together.

Which capture is active is a context variable set by :func:`capturing`; with
none active the function still computes correct attention, without scoring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention.tuning import DEFAULT, MIN_BLOCK_ROWS, Tuning

IMPLEMENTATION = "interp_assert_blockwise"

# Fill value for keys a row cannot see: finite (unlike -inf), so 0 * logit stays 0 in the entropy.
HIDDEN_LOGIT = torch.finfo(torch.float32).min

# (layer, weights[B, H, R, K], first row, window, the logits shifted to a row maximum of 0 if breadth needs
# them, whether hidden keys are known to have weight 0) -> None
BlockConsumer = Callable[[int, torch.Tensor, int, int | None, torch.Tensor | None, bool], None]


@dataclass
class BlockwiseCapture:
    """What the attention function needs while a capture runs."""

    consume: BlockConsumer
    layer_of: dict[int, int]  # id(attention module) -> layer index
    wants_entropy: bool
    tuning: Tuning = DEFAULT  # the row blocks' scratch (block_bytes, min_block_rows)
    layers_seen: set[int] = field(default_factory=set)
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)
    # (first row, rows, keys, window) -> the block's hidden-key masks, shared by every layer
    hidden: dict[tuple[int, int, int, int | None], list[tuple[int, int, torch.Tensor]]] = field(default_factory=dict)

    def buffer(self, name: str, n_elements: int, like: torch.Tensor) -> torch.Tensor:
        """A reused float32 buffer: fresh allocations of this size cost page faults on every block."""
        held = self.scratch.get(name)
        if held is None or held.numel() < n_elements or held.device != like.device:
            held = torch.empty(n_elements, dtype=torch.float32, device=like.device)
            self.scratch[name] = held
        return held[:n_elements]


_ACTIVE: ContextVar[BlockwiseCapture | None] = ContextVar("interp_assert_blockwise", default=None)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, blockwise_attention)


@contextmanager
def attention_implementation(model: Any, name: str) -> Iterator[bool]:
    """Switch ``model`` to attention implementation ``name`` for the duration; yields whether it could.

    Models whose attention does not go through the ``AttentionInterface`` (GPT-Neo, Bloom,
    Falcon) or that have no ``name`` implementation keep theirs. The previous one is always
    restored.
    """
    previous = model.config._attn_implementation
    switched = False
    try:
        if previous != name:
            with suppress(ValueError, ImportError, KeyError):  # unknown to this model: keep its own
                model.set_attn_implementation(name)
            switched = model.config._attn_implementation == name
        yield previous == name or switched
    finally:
        if switched:
            model.set_attn_implementation(previous)


@contextmanager
def capturing(model: Any, capture: BlockwiseCapture) -> Iterator[bool]:
    """Run ``model`` with :func:`blockwise_attention` feeding ``capture``; yields False if the model
    cannot use it (then nothing is changed)."""
    register()
    with attention_implementation(model, IMPLEMENTATION) as switched, active(capture):
        yield switched


@contextmanager
def active(capture: BlockwiseCapture | None) -> Iterator[None]:
    """Make ``capture`` the one :func:`blockwise_attention` feeds, for the duration."""
    token = _ACTIVE.set(capture)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def check_supported(
    module: Any, query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict[str, Any]
) -> None:
    """Raise :class:`CaptureError` for attention that capture cannot describe faithfully."""
    if kwargs.get("s_aux") is not None or not getattr(module, "is_causal", True):
        raise CaptureError(f"{type(module).__name__}: attention sinks and non-causal attention are not supported")
    if dropout and module.training:
        raise CaptureError("capture runs in eval mode only (attention dropout is active)")
    if key.shape[2] != query.shape[2]:
        raise CaptureError("capture needs the whole sequence in one forward pass (no KV cache)")


def blockwise_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """An ``AttentionInterface`` function: eager attention's numbers, computed one row block at a time.

    ``query[B, H, T, D]``, ``key``/``value[B, KV, T, D]`` (grouped-query heads share a KV head).
    Returns the output ``[B, T, H, D]`` and no weights.
    """
    capture = _ACTIVE.get()
    check_supported(module, query, key, dropout, kwargs)
    batch, heads, n_queries, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = head_dim**-0.5 if scaling is None else scaling
    layer = layer_index(module, capture)
    output = query.new_empty(batch, n_queries, heads, value.shape[-1])
    key_columns = key.transpose(-1, -2).contiguous()  # [B, KV, D, T]: a faster GEMM operand than a transpose
    # Breadth needs the logits beside the weights; otherwise the softmax runs in place, in one buffer.
    keep_logits = capture is not None and capture.wants_entropy
    tuning = DEFAULT if capture is None else capture.tuning
    budget = tuning.block_bytes // 4 // (2 if keep_logits else 1)
    for row_start, row_stop in row_blocks(n_queries, batch * heads, budget, tuning.min_block_rows):
        n_rows = row_stop - row_start
        size = batch * heads * n_rows * row_stop
        logits = _buffer(capture, "logits", size, query).view(batch, kv_heads, groups * n_rows, row_stop)
        grouped_query = (query[:, :, row_start:row_stop] * scale).reshape(batch, kv_heads, groups * n_rows, -1)
        keys_t = key_columns[..., :row_stop]
        if query.dtype == torch.float32:
            torch.matmul(grouped_query, keys_t, out=logits)
        else:  # matmul in the model's dtype, softmax in float32, as eager attention does
            logits.copy_(torch.matmul(grouped_query, keys_t))
        logits = logits.view(batch, heads, n_rows, row_stop)
        if softcap is not None:
            logits.div_(softcap).tanh_().mul_(softcap)
        _hide(logits, row_start, sliding_window, attention_mask, capture)
        weights = logits
        if keep_logits:
            logits.sub_(logits.amax(-1, keepdim=True))  # each row's largest logit 0: an exact entropy
            weights = _buffer(capture, "weights", size, query).view(batch, heads, n_rows, row_stop)
        # torch's fused softmax: unlike torch.exp, it is not slowed down tenfold by underflowing entries
        torch.softmax(logits, -1, out=weights)
        if capture is not None:
            capture.consume(layer, weights, row_start, sliding_window, logits if keep_logits else None, True)
        probabilities = weights if value.dtype == torch.float32 else weights.to(value.dtype)
        block = torch.matmul(probabilities.view(batch, kv_heads, groups * n_rows, row_stop), value[:, :, :row_stop])
        output[:, row_start:row_stop] = block.view(batch, heads, n_rows, -1).transpose(1, 2)
    return output, None


def row_blocks(n_rows: int, heads: int, budget: int, min_rows: int = MIN_BLOCK_ROWS) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges such that ``heads * rows * stop <= budget`` elements where it can
    be (at least ``min_rows`` rows): early rows see fewer keys, so their blocks are taller."""
    blocks = []
    start = 0
    per_head = max(1, budget // heads)
    while start < n_rows:
        # the largest r with r * (start + r) <= per_head
        rows = int((-start + math.sqrt(start * start + 4 * per_head)) / 2)
        stop = min(n_rows, start + max(min_rows, rows))
        blocks.append((start, stop))
        start = stop
    return blocks


def _buffer(capture: BlockwiseCapture | None, name: str, size: int, like: torch.Tensor) -> torch.Tensor:
    if capture is None:
        return torch.empty(size, dtype=torch.float32, device=like.device)
    return capture.buffer(name, size, like)


def layer_index(module: Any, capture: Any) -> int:
    """Which layer ``module`` is for the active capture (blockwise or fused), -1 with none; marks it seen."""
    if capture is None:
        return -1
    layer: int | None = capture.layer_of.get(id(module))
    if layer is None:
        raise CaptureError(f"{type(module).__name__} is not one of the attention modules capture found")
    capture.layers_seen.add(layer)
    return layer


def _hide(
    logits: torch.Tensor,
    row_start: int,
    window: int | None,
    attention_mask: torch.Tensor | None,
    capture: BlockwiseCapture | None,
) -> None:
    """Give keys the rows cannot see (later keys; keys outside a sliding window) a logit of
    ``HIDDEN_LOGIT``. Only the ragged column ranges are touched, not the whole block."""
    n_rows, n_keys = logits.shape[2], logits.shape[3]
    where = (row_start, n_rows, n_keys, window)
    spans = capture.hidden.get(where) if capture is not None else None
    if spans is None:  # the same for every layer: built once per block shape
        spans = _hidden_spans(row_start, n_rows, n_keys, window, logits.device)
        if capture is not None:
            capture.hidden[where] = spans
    for start, stop, hidden in spans:
        logits[..., start:stop].masked_fill_(hidden, HIDDEN_LOGIT)
    if attention_mask is not None:  # a mask transformers built anyway (e.g. padding): honour it too
        block_mask = attention_mask[:, :, row_start : row_start + n_rows, :n_keys]
        if block_mask.dtype == torch.bool:
            logits.masked_fill_(~block_mask, HIDDEN_LOGIT)
        else:
            logits.add_(block_mask.float()).clamp_(min=HIDDEN_LOGIT)


def _hidden_spans(
    row_start: int, n_rows: int, n_keys: int, window: int | None, device: torch.device
) -> list[tuple[int, int, torch.Tensor]]:
    """``(first key, last key + 1, hidden[R, span])`` for the column ranges where some row has a hidden key."""
    rows = torch.arange(row_start, row_start + n_rows, device=device).unsqueeze(1)
    spans = [(row_start + 1, n_keys)]  # above the diagonal
    if window is not None:
        spans.append((0, max(0, n_keys - window)))  # before the window of the block's last row
    masks = []
    for start, stop in spans:
        if start < stop:
            keys = torch.arange(start, stop, device=device).unsqueeze(0)
            hidden = keys > rows
            if window is not None:
                hidden |= rows - keys >= window
            masks.append((start, stop, hidden))
    return masks
