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

Kernels (:mod:`~interp_assert.measure.attention.kernels`,
:mod:`~interp_assert.measure.attention.native`), one path each in
:mod:`~interp_assert.measure.attention.paths`, which chooses: on CPU the flash kernel behind
SDPA (``aten._scaled_dot_product_flash_attention_for_cpu``, ``lse`` at SDPA's cost) where only
dot products are needed, and where breadth, focus or ``max`` are wanted the one-pass kernel of
:mod:`interp_assert.measure.attention.native` (built on first use with the system's C++ compiler; without one, the
flash kernel's extra passes). On CUDA, compiled ``flex_attention`` (block masks for causal and
sliding windows, ``score_mod`` for soft-capping, ``enable_gqa``, ``max_scores``). Soft-capping on
CPU, and breadth with soft-capping anywhere (``sum_j A_ij s_ij`` is no longer ``q_i . o'_i``),
cannot be fused: those layers are computed by :mod:`interp_assert.measure.attention.blockwise` instead, in the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from interp_assert.measure.attention import blockwise, kernels, native
from interp_assert.measure.attention.kernels import one_thread
from interp_assert.measure.attention.tuning import DEFAULT, Tuning
from interp_assert.measure.capture.scores import BlockTargets, weights_from_normaliser
from interp_assert.vocab import POSITIONAL_LABELS

IMPLEMENTATION = "interp_assert_fused"
Backend = Literal["aten", "native", "flex"]


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
    targets_for: Callable[[int, int | None, torch.device], BlockTargets]  # (keys, window, device) -> the targets
    layer_of: dict[int, int]  # id(attention module) -> layer index
    wants_entropy: bool
    wants_max: bool
    pattern_heads: Callable[[int], list[int]]  # layer -> heads whose full pattern is wanted
    fallback: blockwise.BlockwiseCapture  # computes the layers the kernel cannot take
    kernel_for: Callable[[torch.device], Backend]  # a layer's device -> its kernel (the path's choice)
    tuning: Tuning = DEFAULT
    layers_seen: set[int] = field(default_factory=set)
    masks: dict[tuple[Any, ...], Any] = field(default_factory=dict)


_ACTIVE: ContextVar[FusedCapture | None] = ContextVar("interp_assert_fused", default=None)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, fused_attention)


@contextmanager
def capturing(model: Any, capture: FusedCapture) -> Iterator[bool]:
    """Run ``model`` with :func:`fused_attention` feeding ``capture`` (and ``capture.fallback`` for the
    layers it hands to :mod:`interp_assert.measure.attention.blockwise`); yields False if the model cannot use it."""
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
    *,
    kernel: Backend | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """An ``AttentionInterface`` function: the kernel's output ``[B, T, H, Dv]``, and the layer's
    attention reduced per row for the active capture. ``query[B, H, T, D]``, ``key``/``value[B, KV, T, D]``.

    The kernel is ``kernel`` where given, else the active capture's choice for the layer's device
    (:mod:`interp_assert.measure.attention.paths`), else with no capture the flash kernel on the
    CPU and FlexAttention elsewhere."""
    capture = _ACTIVE.get()
    blockwise.check_supported(module, query, key, dropout, kwargs)
    entropy = capture is not None and capture.wants_entropy
    wants_max = capture is not None and capture.wants_max
    if kernel is not None:
        backend = kernel
    elif capture is not None:
        backend = capture.kernel_for(query.device)
    else:
        backend = "aten" if query.device.type == "cpu" else "flex"
    tuning = DEFAULT if capture is None else capture.tuning
    capped = softcap is not None and (backend != "flex" or entropy)
    if attention_mask is not None or capped or (backend == "aten" and value.shape[-1] != query.shape[-1]):
        # a mask transformers built anyway, soft-capping or value sizes the kernel cannot take: blockwise
        return blockwise.blockwise_attention(
            module, query, key, value, attention_mask, scaling, dropout, sliding_window, softcap, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    layer = blockwise.layer_index(module, capture)
    heads, n_tokens = query.shape[1], query.shape[2]
    masks = capture.masks if capture is not None else {}
    if backend == "aten":
        output, (lse, row_entropy, row_max) = kernels.aten(
            query, key, value, scale, sliding_window, entropy, wants_max, masks, tuning
        )
    elif backend == "native":
        output, *per_head = native.attention(query, key, value, scale, sliding_window)
        lse, row_entropy, row_max = (x.unflatten(1, (key.shape[1], -1)) for x in per_head)
    else:
        output, (lse, row_entropy, row_max) = kernels.flex(
            query, key, value, scale, sliding_window, softcap, entropy, wants_max, masks, tuning
        )
    if capture is None:
        return output, None
    with one_thread():  # small tensors: see one_thread
        targets = capture.targets_for(n_tokens, sliding_window, query.device)
        weights = _target_weights(query, key, lse, targets, scale, softcap, tuning.gather_bytes)
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
            row_entropy.flatten(1, 2) if entropy and row_entropy is not None else None,
            weights_from_normaliser(row_max, lse).clamp_(max=1.0).flatten(1, 2)
            if wants_max and row_max is not None
            else None,
            patterns,
        )
        capture.consume(layer, rows)
    return output, None


# ---- single weights from the normaliser ----


def _target_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    lse: torch.Tensor,
    targets: BlockTargets,
    scale: float,
    softcap: float | None,
    gather_bytes: int,
) -> torch.Tensor:
    """``[N, H]``: the weight at each target. Positional roles from one dot product per row (every
    row, no gather); the others from gathered dot products. Both ``gather_bytes`` at a time.

    Rows are taken in the layout the projections produce, ``[B, T, KV, G, D]`` (``query`` and
    ``key`` arrive as transposed views of it), where a row's heads are contiguous."""
    kv_heads = key.shape[1]
    heads, head_dim = query.shape[1], query.shape[-1]
    rows = query.transpose(1, 2).unflatten(2, (kv_heads, -1))  # [B, T, KV, G, D], a view
    keys = key.transpose(1, 2)  # [B, T, KV, D]
    row_lse = lse.flatten(1, 2).transpose(1, 2)  # [B, T, H]
    # rows per chunk: float32 copies of query rows (bfloat16 models) stay within gather_bytes
    chunk = max(1, gather_bytes // (4 * heads * head_dim))
    picked = row_lse.new_empty(len(targets.segment), heads)
    lengths = torch.bincount(targets.segment, minlength=len(targets.roles)).tolist() if targets.roles else []
    positional = [role for role in targets.roles if role in POSITIONAL_LABELS]
    by_role = _positional_weights(positional, rows, keys, row_lse, scale, softcap, chunk) if positional else {}
    start = 0
    for role, length in zip(targets.roles, lengths, strict=True):
        stop = start + length
        b_index, r_index = targets.batch_index[start:stop], targets.row_index[start:stop]
        if role in by_role:
            picked[start:stop] = by_role[role][b_index, r_index]
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
    roles: Sequence[str],
    rows: torch.Tensor,
    keys: torch.Tensor,
    row_lse: torch.Tensor,
    scale: float,
    softcap: float | None,
    chunk: int,
) -> dict[str, torch.Tensor]:
    """role -> ``[B, T, H]``: each row i's weight on key i - 1 (row 0: 0), 0 or i, ``chunk`` rows at
    a time. Self and previous: one batched dot product per row and head, on views of the rows and
    keys; first: one matrix product of the rows with their heads' keys at position 0."""
    batch, n_tokens = rows.shape[:2]
    found = {}
    for role in roles:
        weights = row_lse.new_zeros(batch, n_tokens, row_lse.shape[-1])
        first_row = 1 if role == "previous_token" else 0
        firsts = _first_keys(keys, rows.shape[3]) if role == "first_token" else None
        for start in range(first_row, n_tokens, chunk):
            stop = min(n_tokens, start + chunk)
            if firsts is not None:
                logits = torch.matmul(rows[:, start:stop].flatten(2).float(), firsts)
            else:
                shift = 1 if role == "previous_token" else 0
                logits = _dots(rows[:, start:stop], keys[:, start - shift : stop - shift])
            weights[:, start:stop] = weights_from_normaliser(_capped(logits * scale, softcap), row_lse[:, start:stop])
        found[role] = weights
    return found


def _first_keys(keys: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H * D, H]``: the block-diagonal matrix that takes a row's query heads ``[H * D]`` to
    their dot products with the key at position 0 (each query head's own key/value head)."""
    per_head = keys[:, 0].float().repeat_interleave(groups, dim=1)  # [B, H, D]
    identity = torch.eye(per_head.shape[1], dtype=per_head.dtype, device=per_head.device)
    return (per_head.unsqueeze(-1) * identity.unsqueeze(1)).flatten(1, 2)


def _dots(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Each query head's dot product with its key/value head's key, in float32: ``rows[..., KV, G, D]``,
    ``keys[..., KV, D]`` -> ``[..., KV * G]`` (one batched matrix-vector product per row)."""
    return torch.matmul(rows.float(), keys.float().unsqueeze(-1)).flatten(-3)


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
