"""Small SAEs written as SAELens and sparsify save them, with known encoders and decoders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def identity_weights(width: int, decoder_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``[I, -I]`` encoder, ``[I; -I]`` decoder: with ReLU, ``decode(encode(x)) = decoder_scale * x`` exactly."""
    eye = torch.eye(width)
    return {
        "W_enc": torch.cat([eye, -eye], dim=1),
        "b_enc": torch.zeros(2 * width),
        "W_dec": decoder_scale * torch.cat([eye, -eye], dim=0),
        "b_dec": torch.zeros(width),
    }


def write_saelens(folder: Path, weights: dict[str, torch.Tensor], **cfg: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = weights["W_enc"].shape if "W_enc" in weights else (cfg["d_in"], cfg["d_sae"])
    full = {"architecture": "standard", "d_in": int(d_in), "d_sae": int(d_sae), "hook_name": "blocks.1.hook_resid_pre",
            "apply_b_dec_to_input": True, "normalize_activations": "none", **cfg}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(full))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def write_sparsify(folder: Path, weights: dict[str, torch.Tensor], k: int) -> Path:
    """``folder`` is named after the hook point (``layers.0``)."""
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = weights["W_enc"].shape
    cfg = {"activation": "topk", "expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": 0,
           "k": k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": int(d_in)}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "encoder.weight": weights["W_enc"].T.contiguous(),
        "encoder.bias": weights["b_enc"],
        "W_dec": weights["W_dec"].contiguous(),
        "b_dec": weights["b_dec"],
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    return folder
