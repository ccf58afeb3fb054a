"""Circuit scores read from the weights alone (Elhage et al. 2021): composition between two heads
and a head's OV copying score. No forward pass, no prompts.

Conventions (the README's "Weight scores" says the same):

- A head reads the residual stream through its layer's attention norm: the norm's gain
  (LayerNorm or RMSNorm gamma, Gemma's ``1 + weight``) is folded into its query, key and value
  weights, and for LayerNorm the centring too (the mean over the residual dimension is removed
  from each reading weight's column). The norm's division by the RMS or standard deviation,
  biases and rotary embeddings are left out: they depend on the input, not on the weights.
- Grouped-query heads read their key/value group (query head h reads group ``h // group``).
- A head writes with its slice of the output projection, ``W_O[h]`` (``[d_head, d_model]``).
  Gemma 2's norm of each attention output is not folded in.
- The unembedding reads through the final norm: its gain is folded in (and LayerNorm's centring).

Composition of a sender A into a later receiver B: ``||OV_A X_B||_F / (||OV_A||_F ||X_B||_F)``
with ``OV_A = W_V^A W_O^A`` and ``X_B = W_Q^B W_K^B^T`` (Q), ``W_K^B W_Q^B^T`` (K) or
``W_V^B W_O^B`` (V), all ``[d_model, d_model]`` maps of the residual stream. It is computed in
factored form: ``||V_A M R_B||_F^2 = tr(G_A M G_B M^T)`` with the ``d_head x d_head`` middle
``M = W_O^A Y_B`` (``Y_B`` the receiver's factor next to the sender) and Gram matrices of the
outer factors, so no ``d_model x d_model`` matrix is ever formed.

The null: the same score with a Haar-random rotation R of the residual basis between A's output
and B's input, ``||OV_A R X_B||``. Its square has mean exactly ``1 / d_model`` (E||A R B||^2 =
||A||^2 ||B||^2 / d); the spread comes from ``draws`` seeded rotations, one set shared by every
pair, applied to the single head's factor (the receiver's when many senders are scored into one
receiver, the sender's when one sender is scored into many). ``z = (score^2 - 1/d) / sd``, where
``sd`` is the root mean square of ``score_R^2 - 1/d`` over the draws.

OV copying (Elhage et al.): ``sum(Re lambda) / sum(|lambda|)`` over the eigenvalues of
``W_E OV W_U`` (``[vocab, vocab]``), whose non-zero eigenvalues are those of the ``d_head x
d_head`` matrix ``W_O (W_U W_E) W_V``: 1 for a head that copies every token it attends to, -1
for one that suppresses them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch

from interp_assert.measure.architecture import ModelMap, model_map

Kind = Literal["Q", "K", "V"]
Head = tuple[int, int]


@dataclass(frozen=True)
class Circuits:
    """Per layer, float64 on the CPU, one entry per query head: reading weights ``[H, d_model,
    d_head]`` with the norm folded in (keys and values: the head's group) and writing weights
    ``[H, d_head, d_model]``."""

    query: list[torch.Tensor]
    key: list[torch.Tensor]
    value: list[torch.Tensor]
    output: list[torch.Tensor]
    d_model: int


def circuits(parts: ModelMap) -> Circuits:
    query, key, value, output = [], [], [], []
    group = parts.group_size
    with torch.no_grad():
        for layer in range(parts.n_layers):
            weights = parts.layer_weights(layer)

            query.append(_reading(weights.query, weights.gain, weights.centred))
            key.append(_reading(weights.key, weights.gain, weights.centred).repeat_interleave(group, dim=0))
            value.append(_reading(weights.value, weights.gain, weights.centred).repeat_interleave(group, dim=0))
            output.append(weights.output.double())
    return Circuits(query, key, value, output, parts.d_model)


def _reading(tensor: torch.Tensor, gain: torch.Tensor | None, centred: bool) -> torch.Tensor:
    """Reading weights ``[..., d_model, d_head]`` with the norm's gain (and LayerNorm's centring) folded in."""
    folded = tensor.double() * (gain.double()[:, None] if gain is not None else 1.0)
    return folded - folded.mean(dim=-2, keepdim=True) if centred else folded


_CIRCUITS: weakref.WeakKeyDictionary[Any, Circuits] = weakref.WeakKeyDictionary()


def for_model(model: Any) -> tuple[ModelMap, Circuits]:
    """The model's map and its circuits, computed once per model object."""
    parts = model_map(model)
    if model not in _CIRCUITS:
        _CIRCUITS[model] = circuits(parts)
    return parts, _CIRCUITS[model]


def _outer(c: Circuits, kind: Kind, receiver: Head) -> tuple[torch.Tensor, torch.Tensor]:
    """The receiver's factor next to the sender (``Y_B``, ``[d_model, d_head]``) and the Gram
    matrix of its far factor (``[d_head, d_head]``)."""
    layer, head = receiver
    q, k, v, o = (t[layer][head] for t in (c.query, c.key, c.value, c.output))
    if kind == "Q":
        return q, k.T @ k
    if kind == "K":
        return k, q.T @ q
    return v, o @ o.T


def _squared(left_gram: torch.Tensor, middle: torch.Tensor, right_gram: torch.Tensor) -> torch.Tensor:
    """``tr(G_L M G_R M^T)`` for a stack of middles ``[..., d_head, d_head]``."""
    return ((left_gram @ middle @ right_gram) * middle).sum(dim=(-1, -2))


def _sender_gram(c: Circuits, sender: Head) -> tuple[torch.Tensor, torch.Tensor]:
    layer, head = sender
    v, o = c.value[layer][head], c.output[layer][head]
    return v.T @ v, o


@lru_cache(maxsize=4)  # one set serves every pair of a run
def rotations(d_model: int, draws: int, seed: int) -> torch.Tensor:
    """``[draws, d, d]`` Haar-random orthogonal matrices (QR of a Gaussian, signs fixed)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(draws, d_model, d_model, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


@dataclass(frozen=True)
class Composition:
    """Raw scores and z-scores, ``[senders]`` into one receiver or ``[receivers]`` from one sender."""

    score: torch.Tensor
    z: torch.Tensor


def into_receiver(c: Circuits, kind: Kind, senders: list[Head], receiver: Head, rotated: torch.Tensor) -> Composition:
    """Every sender's composition into ``receiver``; the rotations turn the receiver's factor."""
    near, far_gram = _outer(c, kind, receiver)
    grams, outs = zip(*(_sender_gram(c, s) for s in senders), strict=True)
    gram, out = torch.stack(grams), torch.stack(outs)  # [S, k, k], [S, k, d]
    scale = (gram * (out @ out.transpose(-1, -2))).sum(dim=(-1, -2))  # ||OV_A||^2 = tr(G_V O O^T)
    receiver_norm = (near.T @ near * far_gram).sum()  # ||X_B||^2
    actual = _squared(gram, out @ near, far_gram) / (scale * receiver_norm)
    null = _null(rotated, lambda r: _squared(gram, out @ (r @ near), far_gram) / (scale * receiver_norm))
    return _scored(actual, null, c.d_model)


def from_sender(c: Circuits, kind: Kind, sender: Head, receivers: list[Head], rotated: torch.Tensor) -> Composition:
    """``sender``'s composition into every receiver; the rotations turn the sender's factor."""
    gram, out = _sender_gram(c, sender)
    scale = (gram * (out @ out.T)).sum()
    nears, fars = zip(*(_outer(c, kind, r) for r in receivers), strict=True)
    near, far_gram = torch.stack(nears), torch.stack(fars)  # [R, d, k], [R, k, k]
    receiver_norm = (near.transpose(-1, -2) @ near * far_gram).sum(dim=(-1, -2))
    actual = _squared(gram, out @ near, far_gram) / (scale * receiver_norm)
    null = _null(rotated, lambda r: _squared(gram, (out @ r) @ near, far_gram) / (scale * receiver_norm))
    return _scored(actual, null, c.d_model)


def _null(rotated: torch.Tensor, score: Any) -> torch.Tensor:
    """``[draws, N]``: squared scores under each rotation (none: raw scores only)."""
    return torch.stack([score(r) for r in rotated]) if len(rotated) else torch.empty(0)


def _scored(actual_squared: torch.Tensor, null_squared: torch.Tensor, d_model: int) -> Composition:
    if null_squared.numel() == 0:
        return Composition(actual_squared.sqrt(), torch.full_like(actual_squared, float("nan")))
    spread = ((null_squared - 1.0 / d_model) ** 2).mean(dim=0).sqrt()
    return Composition(actual_squared.sqrt(), (actual_squared - 1.0 / d_model) / spread)


def all_pairs(c: Circuits, kind: Kind) -> torch.Tensor:
    """``[L, H, L, H]``: the raw score of every sender (first two indices) into every receiver in a
    later layer (last two; 0 elsewhere), one batched product per receiver layer."""
    n_layers, n_heads = len(c.output), c.output[0].shape[0]
    found = torch.zeros(n_layers, n_heads, n_layers, n_heads, dtype=torch.float64)
    value = torch.stack(c.value)  # [L, H, d, k]
    output = torch.stack(c.output)  # [L, H, k, d]
    sender_gram = value.transpose(-1, -2) @ value  # [L, H, k, k]
    sender_norm = (sender_gram * (output @ output.transpose(-1, -2))).sum(dim=(-1, -2))  # ||OV||^2
    for layer in range(1, n_layers):
        pairs = [_outer(c, kind, (layer, h)) for h in range(n_heads)]
        near = torch.stack([p[0] for p in pairs])  # [H, d, k]
        far = torch.stack([p[1] for p in pairs])  # [H, k, k]
        receiver_norm = (near.transpose(-1, -2) @ near * far).sum(dim=(-1, -2))  # [H]
        middle = torch.einsum("lskd,hdj->lshkj", output[:layer], near)  # [l, S, H, k, k]
        squared = ((sender_gram[:layer, :, None] @ middle @ far) * middle).sum(dim=(-1, -2))
        found[:layer, :, layer] = (squared / (sender_norm[:layer, :, None] * receiver_norm)).sqrt()
    return found


def copying_scores(parts: ModelMap, c: Circuits) -> torch.Tensor:
    """``[L, H]``: each head's OV copying score (see the module docstring)."""
    embedding = parts.base.get_input_embeddings().weight.detach().double().cpu()  # [vocab, d]
    _, unembedding = parts.norm_and_unembedding()
    reading = unembedding.weight.detach().double().cpu().T  # [d, vocab]
    gain = getattr(parts.final_norm, "weight", None)
    if gain is not None:
        reading = reading * (gain.detach().double().cpu() + parts.layout.gain_offset)[:, None]
    if parts.layout.norm_kind == "layer":
        reading = reading - reading.mean(dim=0, keepdim=True)
    through = reading @ embedding  # [d, d]: W_U W_E, read right to left
    scores = torch.zeros(parts.n_layers, parts.n_heads, dtype=torch.float64)
    for layer in range(parts.n_layers):
        small = c.output[layer] @ through @ c.value[layer]  # [H, k, k]
        eigenvalues = torch.linalg.eigvals(small)
        scores[layer] = eigenvalues.real.sum(-1) / eigenvalues.abs().sum(-1)
    return scores
