"""Circuit structure read from the weights, with no forward pass: composition and copying scores.

Conventions (row vectors: the residual stream ``x`` is ``[d_model]``, a head reads ``x @ W``):

- Reading weights carry their norm: the attention norm's gain ``γ`` (Gemma's +1 included) is
  folded in, ``W' = diag(γ) W``; for LayerNorm the centring is folded in too, ``W' = P diag(γ) W``
  with ``P = I - 11ᵀ/d_model`` (the division by the norm is a per-position scalar and is left
  out: every score here is scale-free). Biases are left out.
- Rotary position embeddings are left out (the scores are of the bare ``W_Q W_Kᵀ``).
- Grouped-query heads read their key/value group: query head ``h`` pairs with group
  ``h // (n_heads // n_kv_heads)``.
- The unembedding carries the final norm's gain (and centring, for LayerNorm).

Per head: ``OV = V' O`` (``[d_model, d_model]``, never formed), ``QK = Q' K'ᵀ``. The composition
score of sender A into receiver B is ``||OV_A X_B||_F / (||OV_A||_F ||X_B||_F)`` with ``X_B`` =
``QK_Bᵀ`` (K), ``QK_B`` (Q) or ``OV_B`` (V). Writing ``OV_A = U R O_A`` (QR of ``V'_A``) and
``X_B = Y_B Sᵀ Wᵀ`` (QR of its right factor), the score is that of the ``d_head x d_head``
product ``(R O_A)(Y_B Sᵀ)``: only ``d_head x d_head`` matrices are formed.

The null: a Haar-random rotation ``G`` of the residual basis between A's output and B's input,
``||L_A G R_B||``. With ``L_A = U_a diag(a) V_aᵀ`` and ``R_B = V_b diag(b) U_bᵀ`` (SVDs),
``V_aᵀ G V_b`` is distributed as the top-left ``d_head x d_head`` block ``C`` of a Haar matrix,
so a null draw of the squared score is ``Σ a_i² C_ij² b_j² / (Σa² Σb²)``: its mean is exactly
``1 / d_model``, and one shared set of seeded blocks serves every pair. The z-score is
``(score² - 1/d_model) / sd``, ``sd² = mean over draws of (null² - 1/d_model)²``.

The copying score of head h is ``Σλ / Σ|λ|`` over the eigenvalues of ``W_E OV_h W_U'``, whose
non-zero eigenvalues are those of the ``d_head x d_head`` matrix ``O_h (W_U' W_E) V'_h``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch

from interp_assert.errors import CheckInputError
from interp_assert.measure.loading.architecture import ModelMap, model_map

Kind = Literal["Q", "K", "V"]
Head = tuple[int, int]
MIN_DRAWS, MAX_DRAWS = 10, 100_000


@dataclass(frozen=True)
class HeadFactors:
    """One layer's per-query-head factors in float64: ``reads_q/k/v`` ``[H, d_model, d_head]``
    (norm folded in; key/value expanded to query heads), ``writes`` ``[H, d_head, d_model]``."""

    reads_q: torch.Tensor
    reads_k: torch.Tensor
    reads_v: torch.Tensor
    writes: torch.Tensor


def fold_norm(weight: torch.Tensor, gain: torch.Tensor | None, centred: bool) -> torch.Tensor:
    """``P diag(γ) W`` for reading weights ``[..., d_model, d]`` (``P``: centring, LayerNorm only)."""
    folded = weight.double()
    if gain is not None:
        folded = gain.double()[:, None] * folded
    if centred:
        folded = folded - folded.mean(dim=-2, keepdim=True)
    return folded


def layer_factors(mm: ModelMap, layer: int) -> HeadFactors:
    w = mm.layer_weights(layer)
    group = torch.arange(mm.n_heads) // mm.group_size
    return HeadFactors(
        reads_q=fold_norm(w.query, w.gain, w.centred),
        reads_k=fold_norm(w.key, w.gain, w.centred)[group],
        reads_v=fold_norm(w.value, w.gain, w.centred)[group],
        writes=w.output.double(),
    )


def _r(matrix: torch.Tensor) -> torch.Tensor:
    """R of the reduced QR of ``[..., d_model, d]``: ``||M Y|| = ||R Y||`` for every Y."""
    found: torch.Tensor = torch.linalg.qr(matrix, mode="r").R
    return found


class Factors:
    """Per-head factors of a model, read one layer at a time and kept (float64)."""

    def __init__(self, model: Any) -> None:
        self.mm = model_map(model)
        self._layers: dict[int, HeadFactors] = {}
        self._senders: dict[int, torch.Tensor] = {}

    def layer(self, layer: int) -> HeadFactors:
        if layer not in self._layers:
            self._layers[layer] = layer_factors(self.mm, layer)
        return self._layers[layer]

    def sender(self, layer: int) -> torch.Tensor:
        """``R_V O`` per head: ``[H, d_head, d_model]``, with ``||OV X|| = ||sender X||``."""
        if layer not in self._senders:
            f = self.layer(layer)
            self._senders[layer] = _r(f.reads_v) @ f.writes
        return self._senders[layer]

    def receiver(self, layer: int, kind: Kind) -> torch.Tensor:
        """The reading factor of ``X_B`` per head ``[H, d_model, d_head]``: ``||Y X_B|| = ||Y receiver||``."""
        f = self.layer(layer)
        if kind == "K":  # QK^T = K' Q'^T
            return f.reads_k @ _r(f.reads_q).transpose(-1, -2)
        if kind == "Q":  # QK = Q' K'^T
            return f.reads_q @ _r(f.reads_k).transpose(-1, -2)
        return f.reads_v @ _r(f.writes.transpose(-1, -2)).transpose(-1, -2)  # OV = V' O


@cache
def haar_blocks(d_model: int, d_head: int, draws: int, seed: int) -> torch.Tensor:
    """``[draws, d_head, d_head]``: the top-left blocks of seeded Haar-random rotations of ``d_model``,
    squared elementwise (what a null draw of a squared score needs)."""
    if not MIN_DRAWS <= draws <= MAX_DRAWS:
        raise CheckInputError(f"null draws must be between {MIN_DRAWS} and {MAX_DRAWS}; got {draws}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(draws, d_model, d_head, generator=generator, dtype=torch.float64)
    # Q of the QR of a Gaussian (R with a positive diagonal) is a Haar-random frame: the first d_head
    # columns of a Haar rotation. Q = G R⁻¹ with Rᵀ R = GᵀG (Cholesky); only its first d_head rows are formed
    lower = torch.linalg.cholesky(gaussian.transpose(1, 2) @ gaussian)
    rows = torch.linalg.solve_triangular(lower.transpose(1, 2), gaussian[:, :d_head, :], upper=True, left=False)
    squared: torch.Tensor = rows**2
    return squared


@dataclass(frozen=True)
class PairScores:
    """Raw scores and z-scores ``[senders, receivers]`` for one kind of composition."""

    score: torch.Tensor
    z: torch.Tensor


def composition(senders: torch.Tensor, receivers: torch.Tensor, blocks: torch.Tensor, d_model: int) -> PairScores:
    """Scores of every sender factor ``[A, d_head, d_model]`` into every receiver ``[B, d_model, d_head]``."""
    product = torch.einsum("aim,bmj->abij", senders, receivers)
    norms_a = senders.flatten(1).norm(dim=1)
    norms_b = receivers.flatten(1).norm(dim=1)
    scale = norms_a[:, None] * norms_b[None, :]
    score = product.flatten(2).norm(dim=2) / scale
    # squared singular values, from the d_head x d_head Gram matrices
    a2 = torch.linalg.eigvalsh(senders @ senders.transpose(-1, -2)).clamp(min=0.0)  # [A, d_head]
    b2 = torch.linalg.eigvalsh(receivers.transpose(-1, -2) @ receivers).clamp(min=0.0)  # [B, d_head]
    through = blocks @ b2.T  # [n, d_head, B]: never an [n, A, d_head, d_head] intermediate
    null = (a2 @ through) / (scale**2)  # [n, A, B]: squared null scores
    mean = 1.0 / d_model
    spread = ((null - mean) ** 2).mean(dim=0).sqrt()
    return PairScores(score=score, z=(score**2 - mean) / spread)


def check_head(mm: ModelMap, head: Head) -> None:
    layer, index = head
    if not (0 <= layer < mm.n_layers and 0 <= index < mm.n_heads):
        raise CheckInputError(
            f"head L{layer}H{index} is out of range: this model has layers 0-{mm.n_layers - 1} and heads "
            f"0-{mm.n_heads - 1} (L0H0 to L{mm.n_layers - 1}H{mm.n_heads - 1})"
        )


_FACTORS: weakref.WeakKeyDictionary[Any, Factors] = weakref.WeakKeyDictionary()


def factors_of(model: Any) -> Factors:
    """The model's :class:`Factors`, kept while the model lives (expectations on one model share them)."""
    found = _FACTORS.get(model)
    if found is None:
        found = _FACTORS[model] = Factors(model)
    return found


def pair_table(
    model: Any, kind: Kind, senders: list[Head], receivers: list[Head], draws: int, seed: int
) -> dict[tuple[Head, Head], tuple[float, float]]:
    """(sender, receiver) -> (score, z) for every listed sender in a layer before the listed receiver."""
    factors = factors_of(model)
    mm = factors.mm
    for head in (*senders, *receivers):
        check_head(mm, head)
    blocks = haar_blocks(mm.d_model, mm.head_dim, draws, seed)
    found: dict[tuple[Head, Head], tuple[float, float]] = {}
    by_layer: dict[int, list[Head]] = {}
    for head in receivers:
        by_layer.setdefault(head[0], []).append(head)
    for layer, heads in sorted(by_layer.items()):
        earlier = [s for s in senders if s[0] < layer]
        if not earlier:
            continue
        a = torch.stack([factors.sender(s[0])[s[1]] for s in earlier])
        b = factors.receiver(layer, kind)[[h[1] for h in heads]]
        table = composition(a, b, blocks, mm.d_model)
        for i, s in enumerate(earlier):
            for j, r in enumerate(heads):
                found[(s, r)] = (float(table.score[i, j]), float(table.z[i, j]))
    return found


def all_heads(mm: ModelMap) -> list[Head]:
    return [(layer, h) for layer in range(mm.n_layers) for h in range(mm.n_heads)]


def _embedding_and_unembedding(mm: ModelMap, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_E`` ``[vocab, d_model]`` and the unembedding with the final norm folded in ``[d_model, vocab]``."""
    embedding = model.get_input_embeddings().weight.detach().double().cpu()
    final_norm, unembedding = mm.norm_and_unembedding()
    gain = getattr(final_norm, "weight", None)
    gain = None if gain is None else gain.detach().cpu() + mm.layout.gain_offset
    w_u = fold_norm(unembedding.weight.detach().cpu().T, gain, mm.layout.norm_kind == "layer")
    return embedding, w_u


def copying_scores(model: Any) -> dict[Head, float]:
    """Head -> ``Σλ/Σ|λ|`` over the eigenvalues of ``W_E OV W_U'`` (see the module docstring)."""
    factors = factors_of(model)
    mm = factors.mm
    embedding, w_u = _embedding_and_unembedding(mm, model)
    through = w_u @ embedding  # [d_model, d_model]: W_U' then W_E, the loop closed once
    found: dict[Head, float] = {}
    for layer in range(mm.n_layers):
        f = factors.layer(layer)
        circuits = f.writes @ through @ f.reads_v  # [H, d_head, d_head]
        eigenvalues = torch.linalg.eigvals(circuits)
        ratio = eigenvalues.sum(dim=-1).real / eigenvalues.abs().sum(dim=-1)
        for h in range(mm.n_heads):
            found[(layer, h)] = float(ratio[h])
    return found
