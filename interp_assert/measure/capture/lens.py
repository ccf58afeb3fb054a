"""The logit lens (nostalgebraist 2020): read each depth's residual stream through the model's
final norm and unembedding, and compare with the model's own final distribution.

Part of capture (it runs the model; :mod:`interp_assert.measure.capture.run` calls it for requests that
ask). Per hidden-state index k (0 = embeddings), over every query position >= 1 of every
sequence: ``agreement[k]``, the fraction of positions whose top-1 token at depth k is the
model's final top-1 token, and ``kl[k]``, the mean KL divergence ``KL(final || lens_k)`` in
nats. At the last index both are exact by construction (1 and 0): the lens of the last block's
output *is* the final distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import blockwise
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.loading.architecture import model_map
from interp_assert.measure.loading.models import LoadedModel, input_device
from interp_assert.measure.measurements import LogitLens

POSITION_CHUNK = 512  # positions unembedded at a time: [B, chunk, vocab] floats, not [B, T, vocab]


def measure(loaded: LoadedModel, batches: list[PromptBatch]) -> LogitLens:
    model = loaded.model
    parts = model_map(model)
    norm, head = parts.norm_and_unembedding()
    base = parts.base
    n_states = int(loaded.config.num_hidden_layers) + 1
    agree = np.zeros(n_states)
    kl = np.zeros(n_states)
    count = 0
    with torch.inference_mode(), blockwise.attention_implementation(model, "sdpa"):
        for batch in batches:
            tokens = batch.tokens.to(input_device(loaded))
            hidden = base(input_ids=tokens, output_hidden_states=True, use_cache=False).hidden_states
            # hidden[-1] is the last block's output after the final norm (Hugging Face's convention)
            for start in range(1, tokens.shape[1], POSITION_CHUNK):
                stop = min(start + POSITION_CHUNK, tokens.shape[1])
                final = torch.log_softmax(head(hidden[-1][:, start:stop]).float(), dim=-1)
                final_top = final.argmax(dim=-1)
                final_p = final.exp()
                for k in range(n_states - 1):
                    lens = torch.log_softmax(head(norm(hidden[k][:, start:stop])).float(), dim=-1)
                    agree[k] += float((lens.argmax(dim=-1) == final_top).sum())
                    kl[k] += float((final_p * (final - lens)).sum())
            count += tokens.shape[0] * (tokens.shape[1] - 1)
    agree[-1], kl[-1] = count, 0.0  # the lens of the last block's output is the final distribution
    if count == 0:
        raise CaptureError("the logit lens needs prompts of at least 2 tokens")
    return LogitLens(agreement=agree / count, kl=kl / count)
