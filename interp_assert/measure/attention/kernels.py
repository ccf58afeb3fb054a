"""The fused attention kernels behind :mod:`interp_assert.measure.attention.fused`: each computes a layer's output
and, per query row, the softmax normaliser ``lse`` and, where asked for, the entropy and the largest
logit. All return the output ``[B, T, H, Dv]`` and ``(lse, entropy, row_max)`` as ``[B, KV, G, T]``
float32 (grouped-query heads ``h = kv * G + g``), ``None`` for what was not asked for.

- :func:`aten`: the CPU flash kernel behind SDPA (``lse`` at SDPA's cost); the entropy is
  ``lse - scale * q . o'`` with ``o'`` attention with the keys as values (one more pass) and the
  largest logit ``lse(SHARPNESS * s) / SHARPNESS`` (one more pass), both in float32.
- :func:`flex`: FlexAttention (compiled on CUDA): one pass gives the output, ``lse``, the row
  maximum (``max_scores``, CUDA only; elsewhere the sharpened pass) and, with values ``[V | K - mean(K)]``,
  ``o'`` for the entropy; block masks for causal and sliding windows, ``score_mod`` for soft-capping.
- :mod:`interp_assert.measure.attention.native`: the one-pass CPU kernel (its own module).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from interp_assert.measure.attention.tuning import Tuning
from interp_assert.measure.capture.scores import entropy_from_normaliser

# Multiplies the logits for the row-maximum pass: lse / SHARPNESS overestimates the largest logit by
# at most log(keys) / SHARPNESS (6e-7 at 100k keys), below float32's own rounding of a logit near 10.
SHARPNESS = float(2**24)

FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

Rows = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


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


def aten(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    window: int | None,
    entropy: bool,
    row_max: bool,
    masks: dict[tuple[Any, ...], Any],
    tuning: Tuning,
) -> tuple[torch.Tensor, Rows]:
    """The CPU flash kernel: the output ``[B, T, H, Dv]`` (the layout SDPA's own call returns, so
    nothing is copied), ``lse`` and, where asked for, each row's entropy and largest logit (one
    more pass each). One call per layer, with grouped-query heads as they are where the kernel
    takes them (torch 2.5 and later) and ``tuning.repeat_groups`` is off, else with each key/value
    head repeated for its group. Sliding-window layers in bands of ``tuning.window_rows`` rows."""
    heads, kv_heads = query.shape[1], key.shape[1]
    groups = heads // kv_heads
    if groups > 1 and (
        tuning.repeat_groups or not kernel_takes_groups()
    ):  # as transformers' SDPA call does there (repeat_kv)
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    band_rows = tuning.window_rows
    out, flat_lse = _flash_cpu(query, key, value, scale, window, masks, band_rows)
    expected = largest = None
    if entropy or row_max:  # the extra passes in float32, whatever the model's dtype
        q32, k32 = query.float(), key.float()
        if entropy:
            with_keys, _ = _flash_cpu(q32, k32, k32, scale, window, masks, band_rows)  # o'_i = sum_j A_ij k_j
            with one_thread():
                expected = rowwise_dot(q32, with_keys, row_chunk(q32, tuning.gather_bytes)) * scale
        if row_max:
            _, sharp = _flash_cpu(q32, k32, k32, scale * SHARPNESS, window, masks, band_rows)
            with one_thread():
                largest = sharp / SHARPNESS
    lse, expected, largest = (
        None if rows is None else rows.unflatten(1, (kv_heads, groups)) for rows in (flat_lse, expected, largest)
    )
    assert lse is not None
    return out.transpose(1, 2), (lse, None if expected is None else entropy_from_normaliser(lse, expected), largest)


@functools.cache
def kernel_takes_groups() -> bool:
    """Whether this torch's CPU flash kernel takes fewer key/value heads than query heads (2.5 and later)."""
    query, key = torch.ones(1, 2, 2, 8), torch.ones(1, 1, 2, 8)
    try:
        out, _ = FLASH_CPU(query, key, key, 0.0, True, scale=1.0)
    except (RuntimeError, NotImplementedError, ValueError, IndexError):  # how a kernel refuses the shapes
        return False
    return tuple(out.shape) == (1, 2, 2, 8)


def _flash_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    window: int | None,
    masks: dict[Any, Any],
    band_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, lse)`` of causal attention, ``q[N, H, T, D]``; with a window, in bands of ``band_rows``
    rows that each see only the keys of their window (an additive mask of one band, the same for all)."""
    n_tokens = q.shape[2]
    if window is None or n_tokens <= window:
        found: tuple[torch.Tensor, torch.Tensor] = FLASH_CPU(q, k, v, 0.0, True, scale=scale)
        return found
    output = q.new_empty(q.shape[0], n_tokens, q.shape[1], v.shape[-1]).transpose(1, 2)  # SDPA's layout
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    output[:, :, :window], lse[..., :window] = FLASH_CPU(
        q[:, :, :window], k[:, :, :window], v[:, :, :window], 0.0, True, scale=scale
    )
    for start in range(window, n_tokens, band_rows):
        stop = min(n_tokens, start + band_rows)
        first_key = start - window + 1
        band = _band(stop - start, window, q.dtype, q.device, masks)
        output[:, :, start:stop], lse[..., start:stop] = FLASH_CPU(
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
    mask: torch.Tensor = masks[where]
    return mask


def flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    window: int | None,
    softcap: float | None,
    entropy: bool,
    row_max: bool,
    masks: dict[tuple[Any, ...], Any],
    tuning: Tuning,
) -> tuple[torch.Tensor, Rows]:
    """FlexAttention: one pass gives the output, ``lse``, the row max (CUDA) and, with values
    ``[V | K]``, ``o'`` for the entropy."""
    from torch.nn.attention.flex_attention import AuxRequest

    _batch, heads, n_tokens, _ = query.shape
    kv_heads, value_dim = key.shape[1], value.shape[-1]
    groups = heads // kv_heads
    flex = _flex_function(query.device)
    block_mask = _block_mask(n_tokens, window, query.device, masks)
    score_mod = None if softcap is None else _soft_cap(softcap)
    # Entropy: values [V | K - mean(K)] give o'_c = sum_j p_j (k_j - mean(K)), and E[s] = scale * q . (o'_c + mean(K)).
    # Centring keeps o'_c small, so rounding it to the model's dtype (bfloat16) costs little.
    mean_key = key.float().mean(2, keepdim=True).to(key.dtype) if entropy else None
    values = torch.cat([value, key - mean_key], dim=-1) if mean_key is not None else value
    native_max = row_max and query.device.type == "cuda"
    result, aux = flex(
        query, key, values, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=groups > 1,
        return_aux=AuxRequest(lse=True, max_scores=native_max),
    )  # fmt: skip
    lse = aux.lse.float().unflatten(1, (kv_heads, groups))
    expected = largest = None
    if mean_key is not None:
        centred = result[..., value_dim:].unflatten(1, (kv_heads, groups))
        grouped = query.unflatten(1, (kv_heads, groups))
        chunk = row_chunk(query, tuning.gather_bytes)
        expected = rowwise_dot(grouped, centred, chunk, mean_key.unsqueeze(2)) * scale
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
    output = result[..., :value_dim].transpose(1, 2)
    return output, (lse, None if expected is None else entropy_from_normaliser(lse, expected), largest)


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
        masks[where] = create_block_mask(
            _visible(window), None, None, n_tokens, n_tokens, device=device, _compile=device.type == "cuda"
        )
    return masks[where]


# One function per window and per cap, so that compiled kernels are reused rather than recompiled.
_VISIBLE: dict[int | None, Callable[..., Any]] = {}
_SOFT_CAPS: dict[float, Callable[..., Any]] = {}


def _visible(window: int | None) -> Callable[..., Any]:
    if window not in _VISIBLE:
        if window is None:

            def visible(b: Any, h: Any, q: Any, k: Any) -> Any:
                return q >= k
        else:

            def visible(b: Any, h: Any, q: Any, k: Any) -> Any:
                return (q >= k) & (q - k < window)

        _VISIBLE[window] = visible
    return _VISIBLE[window]


def _soft_cap(cap: float) -> Callable[..., Any]:
    if cap not in _SOFT_CAPS:

        def soft_cap(score: Any, b: Any, h: Any, q: Any, k: Any) -> Any:
            return cap * torch.tanh(score / cap)

        _SOFT_CAPS[cap] = soft_cap
    return _SOFT_CAPS[cap]


def _sharpened(score_mod: Callable[..., Any] | None) -> Callable[..., Any] | None:
    if score_mod is None:
        return None  # the scale carries the sharpness

    def sharpened(score: Any, b: Any, h: Any, q: Any, k: Any) -> Any:
        return score_mod(score, b, h, q, k) * SHARPNESS

    return sharpened


def rowwise_dot(a: torch.Tensor, b: torch.Tensor, chunk: int, b_offset: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_d a[..., t, d] * (b[..., t, d] + b_offset[..., d])`` in float32, ``chunk`` rows of the
    last-but-one dimension at a time (so that no float32 copy of ``a`` or ``b`` exists whole)."""
    out = torch.empty(a.shape[:-1], dtype=torch.float32, device=a.device)
    for start in range(0, a.shape[-2], chunk):
        rows = b[..., start : start + chunk, :].float()
        if b_offset is not None:
            rows = rows + b_offset.float()
        out[..., start : start + chunk] = torch.linalg.vecdot(a[..., start : start + chunk, :].float(), rows)
    return out


def row_chunk(query: torch.Tensor, gather_bytes: int) -> int:
    """Rows (of every head and sequence of ``query[..., T, D]``) that fit ``gather_bytes`` in float32."""
    return max(1, gather_bytes * query.shape[-2] // (4 * query.numel()))
