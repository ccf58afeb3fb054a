"""Attention scored from the softmax normaliser of a fused kernel, not from recomputed weights.

A fused attention kernel computes, beside its output, each query row's log-sum-exp
``lse_i = log sum_j exp(s_ij)`` over the logits ``s_ij = scale * q_i . k_j`` (soft-capped where
the model caps them). Any single weight is then ``A[i, j] = exp(s_ij - lse_i)``, so:

- previous_token, first_token, self: one dot product per row;
- duplicate_token, induction: one dot product per target key;
- breadth: the entropy ``H_i = lse_i - sum_j A_ij s_ij = lse_i - scale * q_i . o'_i``, where ``o'``
  is attention with the keys as values: one more fused pass (with FlexAttention, the same pass,
  values ``[V | K]``);
- focus and the ``max`` statistic: each row's largest logit ``m_i`` (the largest weight is
  ``exp(m_i - lse_i)``). FlexAttention on CUDA returns it beside ``lse``; elsewhere one more pass
  at ``SHARPNESS`` times the logits gives it: ``m_i <= lse_i(SHARPNESS * s) / SHARPNESS <= m_i +
  log(n) / SHARPNESS``, and float32 rounds it to its own precision.

Only what a request needs is computed: a request without breadth, focus or ``max`` costs one
kernel pass, the same as the plain forward, plus a few dot products per row.

Kernels: on CPU ``aten._scaled_dot_product_flash_attention_for_cpu`` (the kernel behind SDPA;
grouped-query heads read their shared key/value through a stride-0 view, no copy; sliding windows
go in bands of ``WINDOW_ROWS`` query rows). On CUDA, compiled ``flex_attention`` (block masks for
causal and sliding windows, ``score_mod`` for soft-capping, ``enable_gqa``). Soft-capping on CPU,
and breadth with soft-capping anywhere (``sum_j A_ij s_ij`` is no longer ``q_i . o'_i``), cannot be
fused: those layers are computed by :mod:`interp_assert.blockwise` instead, in the same run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from interp_assert import blockwise
from interp_assert.errors import CaptureError
from interp_assert.scores import BlockTargets, entropy_from_normaliser, weights_from_normaliser
from interp_assert.vocab import POSITIONAL_LABELS

IMPLEMENTATION = "interp_assert_fused"
Backend = Literal["aten", "flex"]

# Multiplies the logits for the row-maximum pass: lse / SHARPNESS overestimates the largest logit by
# at most log(keys) / SHARPNESS (6e-7 at 100k keys), below float32's own rounding of a logit near 10.
SHARPNESS = float(2**24)
# Query rows per kernel call on a sliding-window layer (CPU): each call sees rows + window - 1 keys.
WINDOW_ROWS = 256
# Scratch for the gathered duplicate_token / induction dot products.
GATHER_BYTES = 8 << 20

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@dataclass(frozen=True)
class LayerRows:
    """One layer's attention over whole sequences (rows ``0 .. T - 1``), reduced per row.

    ``target_weights[N, H]``: the weight at each target of ``targets`` (in its order);
    ``entropy`` and ``max_weight``: ``[B, H, T]`` where asked for; ``lse[B, H, T]`` for checks;
    ``patterns``: head -> ``[T, T]`` attention of the first sequence, for the heads asked for."""

    window: int | None
    lse: torch.Tensor
    targets: BlockTargets
    target_weights: torch.Tensor
    entropy: torch.Tensor | None
    max_weight: torch.Tensor | None
    patterns: dict[int, torch.Tensor]


@dataclass
class FusedCapture:
    """What the fused attention function needs while a capture runs."""

    consume: Callable[[int, LayerRows], None]
    targets_for: Callable[[int, int | None], BlockTargets]  # (keys, window) -> the batch's targets
    layer_of: dict[int, int]  # id(attention module) -> layer index
    wants_entropy: bool
    wants_max: bool
    pattern_heads: Callable[[int], list[int]]  # layer -> heads whose full pattern is wanted
    fallback: blockwise.BlockwiseCapture  # computes the layers the kernel cannot take
    layers_seen: set[int] = field(default_factory=set)
    masks: dict[tuple[Any, ...], Any] = field(default_factory=dict)


_ACTIVE: ContextVar[FusedCapture | None] = ContextVar("interp_assert_fused", default=None)


# Tests set this to run FlexAttention's maths on CPU (uncompiled: it materialises the logits).
FORCE_BACKEND: Backend | None = None


def backend_for(device: torch.device) -> Backend:
    return FORCE_BACKEND or ("aten" if device.type == "cpu" else "flex")


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, fused_attention)


@contextmanager
def capturing(model: Any, capture: FusedCapture) -> Iterator[bool]:
    """Run ``model`` with :func:`fused_attention` feeding ``capture`` (and ``capture.fallback`` for the
    layers it hands to :mod:`interp_assert.blockwise`); yields False if the model cannot use it."""
    register()
    with blockwise.attention_implementation(model, IMPLEMENTATION) as switched, blockwise.active(capture.fallback):
        token = _ACTIVE.set(capture)
        try:
            yield switched
        finally:
            _ACTIVE.reset(token)


def fused_attention(
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
    """An ``AttentionInterface`` function: the kernel's output ``[B, T, H, Dv]``, and the layer's
    attention reduced per row for the active capture. ``query[B, H, T, D]``, ``key``/``value[B, KV, T, D]``."""
    capture = _ACTIVE.get()
    blockwise.check_supported(module, query, key, dropout, kwargs)
    backend = backend_for(query.device)
    entropy = capture is not None and capture.wants_entropy
    if attention_mask is not None or (softcap is not None and (backend == "aten" or entropy)):
        # a mask transformers built anyway, or soft-capping the kernel cannot take: blockwise, as before
        return blockwise.blockwise_attention(
            module, query, key, value, attention_mask, scaling, dropout, sliding_window, softcap, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    layer = _layer_index(module, capture)
    batch, heads, n_tokens, _ = query.shape
    output = query.new_empty(batch, n_tokens, heads, value.shape[-1])
    wants_max = capture is not None and capture.wants_max
    masks = capture.masks if capture is not None else {}
    if backend == "aten":
        lse, expected, row_max = _aten(query, key, value, scale, sliding_window, output, entropy, wants_max, masks)
    else:
        lse, expected, row_max = _flex(
            query, key, value, scale, sliding_window, softcap, output, entropy, wants_max, masks
        )
    if capture is None:
        return output, None
    with one_thread():  # small tensors: see one_thread
        targets = capture.targets_for(n_tokens, sliding_window)
        weights = _target_weights(query, key, lse, targets, scale, softcap)
        groups = heads // key.shape[1]
        patterns = {
            head: _pattern(
                query[0, head], key[0, head // groups], lse[0].flatten(0, 1)[head], scale, sliding_window, softcap
            )
            for head in capture.pattern_heads(layer)
        }
        rows = LayerRows(
            sliding_window,
            lse.flatten(1, 2),
            targets,
            weights,
            None if expected is None else entropy_from_normaliser(lse, expected).flatten(1, 2),
            None if row_max is None else weights_from_normaliser(row_max, lse).clamp_(max=1.0).flatten(1, 2),
            patterns,
        )
        capture.consume(layer, rows)
    return output, None


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU operations on one thread for the duration.

    The reductions here work on tensors of ``B x T x H`` elements, just above the size from which
    torch splits an operation between threads. Each split operation waits for every thread, and on
    a machine whose cores are busy with other work that wait is a scheduler time slice: measured
    on this project's 2-core machine under load, ``exp`` of 37k floats took 6.7 ms on two threads
    and 7.5 us on one. The kernels themselves keep every thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _layer_index(module: Any, capture: FusedCapture | None) -> int:
    if capture is None:
        return -1
    layer = capture.layer_of.get(id(module))
    if layer is None:
        raise CaptureError(f"{type(module).__name__} is not one of the attention modules capture found")
    capture.layers_seen.add(layer)
    return layer


# ---- the kernels: lse [B, KV, G, T], and E[s] (entropy) and the row max where asked ----


def _aten(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    window: int | None,
    output: torch.Tensor,
    entropy: bool,
    row_max: bool,
    masks: dict[tuple[Any, ...], Any],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The CPU flash kernel, one sequence at a time, the group of query heads sharing a key/value
    head as the kernel's batch dimension, so that the shared key/value is a stride-0 view."""
    batch, heads, n_tokens, _ = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    lse = torch.empty(batch, kv_heads, groups, n_tokens, dtype=torch.float32, device=query.device)
    expected = torch.empty_like(lse) if entropy else None
    largest = torch.empty_like(lse) if row_max else None
    for b in range(batch):
        q = query[b].unflatten(0, (kv_heads, groups)).transpose(0, 1)  # [G, KV, T, D]
        k, v = key[b].expand(groups, -1, -1, -1), value[b].expand(groups, -1, -1, -1)
        out, sequence_lse = _flash_cpu(q, k, v, scale, window, masks)
        output[b].view(n_tokens, kv_heads, groups, -1).copy_(out.permute(2, 1, 0, 3))
        with one_thread():
            lse[b] = sequence_lse.transpose(0, 1)
        if entropy or row_max:  # the extra passes in float32, whatever the model's dtype
            q32, k32 = q.float(), key[b].float().expand(groups, -1, -1, -1)
            if expected is not None:
                with_keys, _ = _flash_cpu(q32, k32, k32, scale, window, masks)  # o'_i = sum_j A_ij k_j
                with one_thread():
                    expected[b] = (_rowwise_dot(q32, with_keys, _row_chunk(q32)) * scale).transpose(0, 1)
            if largest is not None:
                _, sharp = _flash_cpu(q32, k32, k32, scale * SHARPNESS, window, masks)
                with one_thread():
                    largest[b] = (sharp / SHARPNESS).transpose(0, 1)
    return lse, expected, largest


def _flash_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None, masks: dict[Any, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, lse)`` of causal attention, ``q[N, H, T, D]``; with a window, in bands of rows that
    each see only the keys of their window (an additive mask of one band, the same for all)."""
    n_tokens = q.shape[2]
    if window is None or n_tokens <= window:
        return _FLASH_CPU(q, k, v, 0.0, True, scale=scale)
    output = q.new_empty(*q.shape[:3], v.shape[-1])
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    output[:, :, :window], lse[..., :window] = _FLASH_CPU(
        q[:, :, :window], k[:, :, :window], v[:, :, :window], 0.0, True, scale=scale
    )
    for start in range(window, n_tokens, WINDOW_ROWS):
        stop = min(n_tokens, start + WINDOW_ROWS)
        first_key = start - window + 1
        band = _band(stop - start, window, q.dtype, q.device, masks)
        output[:, :, start:stop], lse[..., start:stop] = _FLASH_CPU(
            q[:, :, start:stop],
            k[:, :, first_key:stop],
            v[:, :, first_key:stop],
            0.0,
            False,
            attn_mask=band,
            scale=scale,
        )
    return output, lse


def _band(rows: int, window: int, dtype: torch.dtype, device: torch.device, masks: dict[Any, Any]) -> torch.Tensor:
    """``[rows, rows + window - 1]``: 0 where ``r <= c <= r + window - 1`` (the keys row r's window
    holds, counted from the first key of the band's first row), -inf elsewhere."""
    where = ("band", rows, window, dtype, device)
    if where not in masks:
        offset = torch.arange(rows + window - 1, device=device) - torch.arange(rows, device=device).unsqueeze(1)
        visible = (offset >= 0) & (offset < window)
        masks[where] = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))
    return masks[where]


def _flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    window: int | None,
    softcap: float | None,
    output: torch.Tensor,
    entropy: bool,
    row_max: bool,
    masks: dict[tuple[Any, ...], Any],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """FlexAttention: one pass gives the output, ``lse``, the row max (CUDA) and, with values
    ``[V | K]``, ``o'`` for the entropy."""
    from torch.nn.attention.flex_attention import AuxRequest

    _batch, heads, n_tokens, _ = query.shape
    kv_heads, value_dim = key.shape[1], value.shape[-1]
    groups = heads // kv_heads
    flex = _flex_function(query.device)
    block_mask = _block_mask(n_tokens, window, query.device, masks)
    score_mod = None if softcap is None else _soft_cap(softcap)
    values = torch.cat([value, key], dim=-1) if entropy else value
    native_max = row_max and query.device.type == "cuda"
    result, aux = flex(
        query, key, values, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=groups > 1,
        return_aux=AuxRequest(lse=True, max_scores=native_max),
    )  # fmt: skip
    output.copy_(result[..., :value_dim].transpose(1, 2))
    lse = aux.lse.float().unflatten(1, (kv_heads, groups))
    expected = largest = None
    if entropy:
        with_keys = result[..., value_dim:]
        expected = (_rowwise_dot(query, with_keys, _row_chunk(query)) * scale).unflatten(1, (kv_heads, groups))
    if native_max:
        largest = aux.max_scores.float().unflatten(1, (kv_heads, groups))
    elif row_max:
        sharp_mod = _sharpened(score_mod)
        _, sharp = flex(
            query, key, value, score_mod=sharp_mod, block_mask=block_mask,
            scale=scale if score_mod is not None else scale * SHARPNESS,
            enable_gqa=groups > 1, return_aux=AuxRequest(lse=True),
        )  # fmt: skip
        largest = (sharp.lse.float() / SHARPNESS).unflatten(1, (kv_heads, groups))
    return lse, expected, largest


def _flex_function(device: torch.device) -> Any:
    """Compiled ``flex_attention`` on CUDA (fused kernels); the reference implementation elsewhere
    (it materialises the logits: for tests of this path's maths on CPU, not for speed)."""
    from torch.nn.attention import flex_attention as flex_module

    if device.type == "cuda":
        global _COMPILED_FLEX
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_module.flex_attention)
        return _COMPILED_FLEX

    def uncompiled(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return flex_module.flex_attention(*args, **kwargs)

    return uncompiled


_COMPILED_FLEX: Any = None


def _block_mask(n_tokens: int, window: int | None, device: torch.device, masks: dict[Any, Any]) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    where = ("block", n_tokens, window, device)
    if where not in masks:
        if window is None:

            def visible(b: Any, h: Any, q: Any, k: Any) -> Any:
                return q >= k
        else:

            def visible(b: Any, h: Any, q: Any, k: Any) -> Any:
                return (q >= k) & (q - k < window)

        masks[where] = create_block_mask(visible, None, None, n_tokens, n_tokens, device=device)
    return masks[where]


def _soft_cap(cap: float) -> Callable[..., Any]:
    def soft_cap(score: Any, b: Any, h: Any, q: Any, k: Any) -> Any:
        return cap * torch.tanh(score / cap)

    return soft_cap


def _sharpened(score_mod: Callable[..., Any] | None) -> Callable[..., Any] | None:
    if score_mod is None:
        return None  # the scale carries the sharpness

    def sharpened(score: Any, b: Any, h: Any, q: Any, k: Any) -> Any:
        return score_mod(score, b, h, q, k) * SHARPNESS

    return sharpened


# ---- single weights from the normaliser ----


def _target_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    lse: torch.Tensor,
    targets: BlockTargets,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """``[N, H]``: the weight at each target. Positional roles from one dot product per row (every
    row, no gather); the others from gathered dot products. Both a chunk of ``GATHER_BYTES`` at a time.

    Rows are taken in the layout the projections produce, ``[B, T, KV, G, D]`` (``query`` and
    ``key`` arrive as transposed views of it), where a row's heads are contiguous."""
    kv_heads = key.shape[1]
    heads, head_dim = query.shape[1], query.shape[-1]
    rows = query.transpose(1, 2).unflatten(2, (kv_heads, -1))  # [B, T, KV, G, D], a view
    keys = key.transpose(1, 2)  # [B, T, KV, D]
    row_lse = lse.flatten(1, 2).transpose(1, 2)  # [B, T, H]
    chunk = max(1, GATHER_BYTES // (4 * heads * head_dim))
    picked = row_lse.new_empty(len(targets.segment), heads)
    lengths = torch.bincount(targets.segment, minlength=len(targets.roles)).tolist() if targets.roles else []
    start = 0
    for role, length in zip(targets.roles, lengths, strict=True):
        stop = start + length
        b_index, r_index = targets.batch_index[start:stop], targets.row_index[start:stop]
        if role in POSITIONAL_LABELS:
            weights = _positional_weights(role, rows, keys, row_lse, scale, softcap, chunk)  # [B, T, H]
            picked[start:stop] = weights[b_index, r_index]
        else:
            k_index = targets.key_index[start:stop]
            for first in range(0, length, chunk):
                b, r, k = (index[first : first + chunk] for index in (b_index, r_index, k_index))
                logits = _dots(rows[b, r], keys[b, k]) * scale  # [C, H]
                picked[start + first : start + first + len(b)] = weights_from_normaliser(
                    _capped(logits, softcap), row_lse[b, r]
                )
        start = stop
    return picked


def _positional_weights(
    role: str,
    rows: torch.Tensor,
    keys: torch.Tensor,
    row_lse: torch.Tensor,
    scale: float,
    softcap: float | None,
    chunk: int,
) -> torch.Tensor:
    """``[B, T, H]``: each row i's weight on key i - 1 (row 0: 0), 0 or i, ``chunk`` rows at a time."""
    batch, n_tokens = rows.shape[:2]
    weights = row_lse.new_zeros(batch, n_tokens, row_lse.shape[-1])
    first_row = 1 if role == "previous_token" else 0
    for start in range(first_row, n_tokens, chunk):
        stop = min(n_tokens, start + chunk)
        if role == "self":
            chunk_keys = keys[:, start:stop]
        elif role == "previous_token":
            chunk_keys = keys[:, start - 1 : stop - 1]
        else:
            chunk_keys = keys[:, :1].expand(-1, stop - start, -1, -1)
        logits = _capped(_dots(rows[:, start:stop], chunk_keys) * scale, softcap)
        weights[:, start:stop] = weights_from_normaliser(logits, row_lse[:, start:stop])
    return weights


def _dots(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Each query head's dot product with its key/value head's key, in float32: ``rows[..., KV, G, D]``,
    ``keys[..., KV, D]`` -> ``[..., KV * G]`` (one batched matrix-vector product per row)."""
    return torch.matmul(rows.float(), keys.float().unsqueeze(-1)).flatten(-3)


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """``sum_d a[..., t, d] * b[..., t, d]`` in float32, ``chunk`` rows of the last-but-one dimension at a time."""
    out = torch.empty(a.shape[:-1], dtype=torch.float32, device=a.device)
    for start in range(0, a.shape[-2], chunk):
        out[..., start : start + chunk] = torch.linalg.vecdot(
            a[..., start : start + chunk, :].float(), b[..., start : start + chunk, :].float()
        )
    return out


def _row_chunk(query: torch.Tensor) -> int:
    """Rows (of every head and sequence of ``query[..., T, D]``) that fit ``GATHER_BYTES`` in float32."""
    return max(1, GATHER_BYTES * query.shape[-2] // (4 * query.numel()))


def _capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def _pattern(
    query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float, window: int | None, softcap: float | None
) -> torch.Tensor:
    """``[T, T]`` attention of one head from its ``lse`` (for pictures of a few heads)."""
    logits = _capped((query.float() @ key.float().T) * scale, softcap)
    rows = torch.arange(len(query), device=query.device).unsqueeze(1)
    keys = torch.arange(len(key), device=query.device).unsqueeze(0)
    hidden = keys > rows
    if window is not None:
        hidden |= rows - keys >= window
    return weights_from_normaliser(logits, lse.unsqueeze(1)).masked_fill_(hidden, 0.0)
