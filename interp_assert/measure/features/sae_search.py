"""What ``discover --sae`` measures to find an SAE's clearest features: every latent's mean
activation over the tokens of each prompt set (position 0 left out, as the ``sae_feature``
property counts them), and the decoder rows of the latents it picks."""

from __future__ import annotations

import numpy as np
import torch

from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.features import sae_runs
from interp_assert.measure.features.saes import Sae
from interp_assert.measure.loading.models import LoadedModel


def latent_means(loaded: LoadedModel, sae: Sae, batches: list[PromptBatch], skip_first: bool = True) -> np.ndarray:
    """``[d_sae]`` float64: each latent's mean activation over the set's tokens."""
    sae.check_model(loaded.model)
    sums = torch.zeros(sae.d_sae, dtype=torch.float64)
    count = 0
    for batch, act in zip(batches, sae_runs.activations(loaded, sae.hook, batches), strict=True):
        chosen = sae_runs.positions(loaded, batch, None, skip_first)
        with torch.inference_mode():
            z = sae.encode(act)[chosen]
        sums += z.double().sum(0)
        count += int(z.shape[0])
    return (sums / max(count, 1)).numpy()


def decoder_rows(sae: Sae, latents: list[int]) -> dict[int, np.ndarray]:
    """The decoder row of each latent (its direction in the model's space), float32."""
    return {latent: sae.w_dec[latent].detach().float().cpu().numpy() for latent in latents}
