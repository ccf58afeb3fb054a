"""What the SAE properties measure (run by capture through their requests; numbers out, no tensors).

Rows: one per token position of the prompt set, position 0 left out when ``skip_first`` (its
massive activation, see ``massive_activation``, is not what an SAE is trained on).

- ``l0``: mean number of non-zero latents per row;
- ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the rows;
- ``dead_fraction``: latents never above 0 on any row;
- ``ce_recovered``: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``, each the mean next-token loss
  (nats) over every predicted token of the set, with the activation at the hook point replaced
  (at the rows) by the SAE's reconstruction (``CE_sae``) or by zeros (``CE_zero``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from interp_assert.measure.capture.prompts import PromptBatch, build_batches
from interp_assert.measure.features import hook_points
from interp_assert.measure.features.saes import Sae, load_sae
from interp_assert.measure.loading.models import LoadedModel, input_device
from interp_assert.measure.prompt_sets import PromptSet

_LOADED: dict[tuple[str, str | None], Sae] = {}
TOP_EXAMPLES = 12


def cached_sae(reference: str, hook: str | None) -> Sae:
    """Each SAE read once per process (keyed by its reference as resolved by the spec)."""
    key = (reference, hook)
    if key not in _LOADED:
        _LOADED[key] = load_sae(reference, hook=hook)
    return _LOADED[key]


def batches_for(loaded: LoadedModel, texts: tuple[str, ...], bos: str) -> list[PromptBatch]:
    """Another prompt set of the spec (a control, the other class of a probe), tokenised as capture does."""
    prompt_set = PromptSet(bos=bos, texts=list(texts))  # type: ignore[arg-type]
    vocab = int(getattr(loaded.config, "vocab_size", 0) or 0)
    limit = getattr(loaded.config, "max_position_embeddings", None)
    return build_batches(prompt_set, loaded.tokenizer, vocab_size=vocab, max_positions=limit)


def _forward(loaded: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token losses ``[B, T - 1]`` (float64)."""
    logits = loaded.model(input_ids=tokens.to(input_device(loaded)), use_cache=False).logits.float()
    picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:, None].to(logits.device))
    return -picked.squeeze(-1).double().cpu()


def activations(loaded: LoadedModel, point: hook_points.HookPoint, batches: list[PromptBatch]) -> list[torch.Tensor]:
    """The activation at ``point`` per batch, ``[B, T, D]`` float32 on the CPU."""
    found: list[torch.Tensor] = []
    with torch.inference_mode(), hook_points.reading(point, loaded.model, found):
        for batch in batches:
            loaded.model(input_ids=batch.tokens.to(input_device(loaded)), use_cache=False)
    return [t.cpu() for t in found]


def quality(loaded: LoadedModel, sae: Sae, batches: list[PromptBatch], skip_first: bool) -> dict[str, Any]:
    sae.check_model(loaded.model)
    start = 1 if skip_first else 0
    acts = activations(loaded, sae.hook, batches)
    rows = torch.cat([a[:, start:].reshape(-1, a.shape[-1]) for a in acts])
    with torch.inference_mode():
        z = sae.encode(rows)
        x_hat = sae.decode(z)
    residual = float((rows - x_hat).double().pow(2).sum())
    total = float((rows - rows.mean(0)).double().pow(2).sum())
    fired = (z > 0).any(0)

    def spliced(change: Callable[[torch.Tensor], torch.Tensor]) -> float:
        def at_rows(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            out[:, start:] = change(x[:, start:].float()).to(x.dtype)
            return out

        losses = []
        with torch.inference_mode(), hook_points.replacing(sae.hook, loaded.model, at_rows):
            for batch in batches:
                losses.append(_forward(loaded, batch.tokens).flatten())
        return float(torch.cat(losses).mean())

    with torch.inference_mode():
        clean = float(torch.cat([_forward(loaded, b.tokens).flatten() for b in batches]).mean())
    with_sae = spliced(lambda x: sae.decode(sae.encode(x)))
    zero = spliced(torch.zeros_like)
    return {
        "l0": float((z > 0).sum(1).double().mean()),
        "explained_variance": 1.0 - residual / total if total > 0 else float("nan"),
        "dead_fraction": 1.0 - float(fired.double().mean()),
        "ce_clean": clean,
        "ce_with_sae": with_sae,
        "ce_zero_ablated": zero,
        "ce_recovered": (zero - with_sae) / (zero - clean) if zero != clean else float("nan"),
        "rows": int(rows.shape[0]),
    }


def match(sae: Sae, direction: np.ndarray, hint: int | None) -> tuple[int, float, int, float]:
    """(latent whose decoder row is the most cosine-similar to ``direction``, that cosine, the hint's
    latent or -1, the hint's cosine or nan)."""
    stored = torch.as_tensor(direction, dtype=torch.float32)
    rows = sae.w_dec / sae.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cosines = rows @ (stored / stored.norm().clamp_min(1e-12))
    best = int(cosines.argmax())
    if hint is not None and 0 <= hint < sae.d_sae:
        return best, float(cosines[best]), hint, float(cosines[hint])
    return best, float(cosines[best]), -1, float("nan")


def positions(loaded: LoadedModel, batch: PromptBatch, pattern: str | None, skip_first: bool) -> torch.Tensor:
    """``[B, T]`` bool: the rows counted (tokens whose decoded text matches ``pattern``, if given)."""
    chosen = torch.ones(batch.tokens.shape, dtype=torch.bool)
    if skip_first:
        chosen[:, 0] = False
    if pattern is not None:
        regex = re.compile(pattern)
        for i, row in enumerate(batch.tokens.tolist()):
            for t, token in enumerate(row):
                if not regex.search(loaded.tokenizer.decode([token])):
                    chosen[i, t] = False
    return chosen


def latent_stats(
    loaded: LoadedModel, sae: Sae, batches: list[PromptBatch], latent: int, pattern: str | None, skip_first: bool
) -> dict[str, Any]:
    """The latent's mean and max over the chosen rows, its rank among all latents by mean activation
    there (0 = the largest), and the rows where it is largest (token text with context)."""
    acts = activations(loaded, sae.hook, batches)
    sums = torch.zeros(sae.d_sae, dtype=torch.float64)
    values: list[torch.Tensor] = []
    examples: list[tuple[float, str, str]] = []
    count = 0
    for batch, act in zip(batches, acts, strict=True):
        chosen = positions(loaded, batch, pattern, skip_first)
        with torch.inference_mode():
            z = sae.encode(act)
        picked = z[chosen]
        sums += picked.double().sum(0)
        count += int(picked.shape[0])
        values.append(picked[:, latent])
        for i, t in chosen.nonzero().tolist():
            examples.append((float(z[i, t, latent]), *_context(loaded, batch.tokens[i].tolist(), t)))
    if count == 0:
        return {"rows": 0}
    mine = torch.cat(values)
    means = sums / count
    rank = int((means > means[latent]).sum())
    examples.sort(key=lambda e: -e[0])
    return {
        "rows": count,
        "mean": float(mine.double().mean()),
        "max": float(mine.max()),
        "fraction_active": float((mine > 0).double().mean()),
        "rank": rank,
        "top": tuple((round(v, 4), before, token) for v, before, token in examples[:TOP_EXAMPLES]),
    }


def _context(loaded: LoadedModel, tokens: list[int], t: int) -> tuple[str, str]:
    decode = loaded.tokenizer.decode
    return decode(tokens[max(0, t - 8) : t]), decode([tokens[t]])
