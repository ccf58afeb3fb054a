"""A probe's vectors at every block in one forward pass, and its held-out AUROC by block.

The ``probe`` property fits its direction at one block; ``track --report`` draws the held-out
AUROC at every block as a curve per checkpoint, so a training run shows where (and when) the
concept becomes linearly readable. The vectors are the residual stream leaving each block at
token ``position``, read by hooks that keep only that position (not the whole sequence); the
AUROC at each block uses the same seeded split as the property (:func:`probe_math.split`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
import torch

from interp_assert.errors import CheckInputError
from interp_assert.measure import probe_math
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.features import hook_points
from interp_assert.measure.loading.architecture import model_map
from interp_assert.measure.loading.models import LoadedModel, input_device


def _keeper(into: list[torch.Tensor], position: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def keep(activation: torch.Tensor) -> torch.Tensor:
        into.append(activation[:, position].detach().double().cpu())
        return activation

    return keep


def states_by_block(loaded: LoadedModel, batches: list[PromptBatch], position: int) -> np.ndarray:
    """``[n_blocks, N, D]`` float64: the residual stream leaving every block at ``position``, one
    vector per prompt in batch order."""
    n_blocks = model_map(loaded.model).n_layers
    found: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
    with torch.inference_mode(), ExitStack() as stack:
        for block in range(n_blocks):
            point = hook_points.HookPoint("resid_post", block, f"blocks.{block}.hook_resid_post")
            stack.enter_context(hook_points.replacing(point, loaded.model, _keeper(found[block], position)))
        for batch in batches:
            length = batch.tokens.shape[1]
            if not -length <= position < length:
                raise CheckInputError(f"position {position} is outside a prompt of {length} tokens")
            loaded.model(input_ids=batch.tokens.to(input_device(loaded)), use_cache=False)
    return np.stack([torch.cat(vectors).numpy() for vectors in found])


def auroc_by_block(positive: np.ndarray, negative: np.ndarray, holdout: float, seed: int) -> list[float]:
    """Held-out AUROC of the difference-in-means probe at each block (``[n_blocks, N, D]`` inputs),
    fitted and held out as :func:`probe_math.evaluate` does."""
    fit_p, test_p = probe_math.split(positive.shape[1], holdout, seed)
    fit_n, test_n = probe_math.split(negative.shape[1], holdout, seed + 1)
    found = []
    for xp, xn in zip(positive, negative, strict=True):
        d = probe_math.direction(xp[fit_p], xn[fit_n])
        found.append(probe_math.auroc(xp[test_p] @ d, xn[test_n] @ d))
    return found
