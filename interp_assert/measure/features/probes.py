"""What the ``probe`` property measures on the model (run by capture through its request).

A probe reads the residual stream leaving block ``layer`` at token ``position`` of each prompt
(Python-style, -1 = the last token). The causal check adds ``alpha * d`` (``d`` the
difference-in-means direction fitted on every prompt of both sets, unnormalised, so alpha 1
moves the negative mean onto the positive one) to that residual stream at every position of
each negative prompt, and measures the change of the logit difference
``logit(answers[0]) - logit(answers[1])`` at the last position; the same is done with
``samples`` random directions of the same norm (seeded Gaussian).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from interp_assert.errors import CheckInputError
from interp_assert.measure import probe_math
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.features import hook_points
from interp_assert.measure.loading.models import LoadedModel, input_device


def resid_point(loaded: LoadedModel, layer: int) -> hook_points.HookPoint:
    point = hook_points.HookPoint("resid_post", layer, f"blocks.{layer}.hook_resid_post")
    try:
        hook_points.check(point, loaded.model)
    except Exception as exc:
        raise CheckInputError(str(exc)) from exc
    return point


def states(loaded: LoadedModel, layer: int, batches: list[PromptBatch], position: int) -> np.ndarray:
    """``[N, D]`` float64: one vector per prompt, in batch order."""
    point = resid_point(loaded, layer)
    found: list[torch.Tensor] = []
    with torch.inference_mode(), hook_points.reading(point, loaded.model, found):
        for batch in batches:
            length = batch.tokens.shape[1]
            if not -length <= position < length:
                raise CheckInputError(f"position {position} is outside a prompt of {length} tokens")
            loaded.model(input_ids=batch.tokens.to(input_device(loaded)), use_cache=False)
    return np.concatenate([t[:, position].double().cpu().numpy() for t in found])


def answer_ids(loaded: LoadedModel, answers: tuple[str, str]) -> tuple[int, int]:
    ids = []
    for text in answers:
        tokens = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise CheckInputError(
                f"answer {text!r} is {len(tokens)} tokens for this tokenizer ({tokens}); give one token"
            )
        ids.append(int(tokens[0]))
    return ids[0], ids[1]


def logit_diffs(
    loaded: LoadedModel, batches: list[PromptBatch], ids: tuple[int, int], layer: int, added: torch.Tensor | None
) -> np.ndarray:
    point = resid_point(loaded, layer)
    diffs = []
    with torch.inference_mode():

        def run() -> None:
            for batch in batches:
                logits = loaded.model(input_ids=batch.tokens.to(input_device(loaded)), use_cache=False).logits
                last = logits[:, -1].double().cpu()
                diffs.append((last[:, ids[0]] - last[:, ids[1]]).numpy())

        if added is None:
            run()
        else:
            with hook_points.replacing(point, loaded.model, lambda x: x + added.to(x.dtype).to(x.device)):
                run()
    return np.concatenate(diffs)


def causal(
    loaded: LoadedModel,
    negative: list[PromptBatch],
    d: np.ndarray,
    layer: int,
    answers: tuple[str, str],
    alpha: float,
    samples: int,
    seed: int,
) -> dict[str, Any]:
    ids = answer_ids(loaded, answers)
    clean = logit_diffs(loaded, negative, ids, layer, None)
    direction = torch.as_tensor(d, dtype=torch.float32)
    steered = logit_diffs(loaded, negative, ids, layer, alpha * direction)
    generator = torch.Generator().manual_seed(seed)
    random_shifts = []
    for _ in range(samples):
        r = torch.randn(direction.shape, generator=generator)
        r = r / r.norm() * direction.norm()
        random_shifts.append(float((logit_diffs(loaded, negative, ids, layer, alpha * r) - clean).mean()))
    return {
        "clean_logit_diff": float(clean.mean()),
        "steered_logit_diff": float(steered.mean()),
        "shift": float((steered - clean).mean()),
        "random_shifts": tuple(random_shifts),
        "direction_norm": float(np.linalg.norm(d)),
    }


def measure(
    loaded: LoadedModel,
    positive: list[PromptBatch],
    negative: list[PromptBatch],
    *,
    layer: int,
    position: int,
    holdout: float,
    seed: int,
    controls: int,
) -> tuple[dict[str, float], np.ndarray, list[float]]:
    """The probe's held-out numbers and the direction fitted on every prompt at ``layer``, and
    the held-out AUROC at every block (one forward pass per batch reads them all)."""
    from interp_assert.measure.features import probe_layers

    resid_point(loaded, layer)  # a block the model lacks: a clear error
    every_p = probe_layers.states_by_block(loaded, positive, position)
    every_n = probe_layers.states_by_block(loaded, negative, position)
    xp, xn = every_p[layer], every_n[layer]
    problem = probe_math.balance_problem(len(xp), len(xn), holdout)
    if problem:
        raise CheckInputError(problem)
    numbers = probe_math.evaluate(xp, xn, holdout, seed, controls)
    by_block = probe_layers.auroc_by_block(every_p, every_n, holdout, seed)
    return numbers, probe_math.direction(xp, xn), by_block
