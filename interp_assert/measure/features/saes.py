"""Sparse autoencoders as they are saved, read with safetensors and json only (no sae-lens needed).

Formats:

- **SAELens**: a folder with ``cfg.json`` (``d_in``, ``d_sae``, ``hook_name``, ``architecture``
  or ``activation_fn_str``, ``k`` or ``activation_fn_kwargs.k``, ``apply_b_dec_to_input``,
  ``normalize_activations``) and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
  ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and ``threshold [d_sae]`` for
  JumpReLU);
- **sparsify** (EleutherAI): one folder per hook point, named after it (``layers.6``,
  ``layers.6.mlp``), with ``cfg.json`` (``k``, ``d_in``, ``num_latents`` or
  ``expansion_factor``) and ``sae.safetensors`` (``encoder.weight [d_sae, d_in]``,
  ``encoder.bias``, ``W_dec [d_sae, d_in]``, ``b_dec``); always TopK, ``b_dec`` subtracted
  from the input;
- a **hub id** ``owner/name@revision`` (optionally ``:subfolder``), read from the local Hugging
  Face cache only: nothing is downloaded.

Encoding, in float32: ``pre = (x - b_dec [if applied]) @ W_enc + b_enc``; ReLU: ``relu(pre)``;
TopK: the k largest of ``relu(pre)`` kept, the rest 0; JumpReLU: ``pre`` where ``pre > threshold``,
else 0. Decoding: ``z @ W_dec + b_dec``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from interp_assert.errors import SaeLoadError
from interp_assert.measure.features import hook_points
from interp_assert.measure.loading.architecture import model_map

Activation = Literal["relu", "topk", "jumprelu"]
ACTIVATIONS = ("relu", "topk", "jumprelu")
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)@(?P<revision>[\w./-]+?)(?::(?P<sub>.+))?$")


@dataclass(frozen=True, eq=False)
class Sae:
    """A loaded SAE (float32, CPU) and where it came from."""

    w_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor
    w_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor
    activation: Activation
    k: int | None
    threshold: torch.Tensor | None
    subtract_b_dec: bool
    hook: hook_points.HookPoint
    identity: dict[str, str]  # path, format, weights sha256, hook, sizes: recorded beside the numbers

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.w_enc.shape[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        pre = (x - self.b_dec if self.subtract_b_dec else x) @ self.w_enc + self.b_enc
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold)
        assert self.k is not None
        values, indices = torch.relu(pre).topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec + self.b_dec

    def check_model(self, model: Any) -> None:
        """Raise :class:`SaeLoadError` when the model lacks the hook point or its width differs."""
        hook_points.check(self.hook, model)
        parts = model_map(model)
        width = parts.d_model
        if self.d_in != width:
            raise SaeLoadError(
                f"SAE {self.identity['path']} reads {self.d_in} features at {self.hook.name}, but this model "
                f"({parts.family}) is {width} wide there: it was trained on another model"
            )


def load_sae(reference: str, *, hook: str | None = None) -> Sae:
    """A local folder (SAELens or sparsify) or a cached hub id ``owner/name@revision[:subfolder]``.
    ``hook`` overrides the hook point the files name (required where they name none)."""
    folder = Path(reference).expanduser()
    if not folder.exists():
        found = HUB_ID.match(reference)
        if found is None:
            if "/" in reference and "@" not in reference and not reference.startswith((".", "/", "~")):
                raise SaeLoadError(
                    f"SAE {reference!r}: no such folder; a hub id needs a pinned revision: {reference}@<commit or tag>"
                )
            raise SaeLoadError(f"SAE {reference!r}: no such folder")
        folder = _from_hub_cache(found["repo"], found["revision"], found["sub"])
    if not folder.is_dir():
        raise SaeLoadError(f"SAE {reference!r} is a file; give the folder holding cfg.json and the weights")
    cfg = _read_cfg(folder)
    if (folder / "sae_weights.safetensors").exists():
        return _saelens(folder, cfg, hook)
    if (folder / "sae.safetensors").exists():
        return _sparsify(folder, cfg, hook)
    raise SaeLoadError(
        f"SAE folder {folder} has cfg.json but neither sae_weights.safetensors (SAELens) nor sae.safetensors "
        f"(sparsify); it holds: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing else'}"
    )


def _from_hub_cache(repo: str, revision: str, sub: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        root = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception as exc:
        raise SaeLoadError(
            f"SAE {repo}@{revision} is not in the local Hugging Face cache and nothing is downloaded here "
            f"({type(exc).__name__}); download it where the hub is reachable, or give a local folder"
        ) from exc
    return root / sub if sub else root


def _read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / "cfg.json"
    if not path.exists():
        raise SaeLoadError(f"SAE folder {folder} has no cfg.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SaeLoadError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise SaeLoadError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors.torch import load_file

    data = path.read_bytes()
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise SaeLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    return {name: t.float() for name, t in tensors.items()}, hashlib.sha256(data).hexdigest()


def _need(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if name not in tensors:
        raise SaeLoadError(f"{path}: tensor {name!r} is missing; it holds {', '.join(sorted(tensors)) or 'none'}")
    tensor = tensors[name]
    if tuple(tensor.shape) != shape:
        raise SaeLoadError(f"{path}: {name} has shape {list(tensor.shape)}, expected {list(shape)}")
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise SaeLoadError(f"{path}: {name} has {bad} NaN or infinite value(s) of {tensor.numel()}")
    return tensor


def _int(cfg: dict[str, Any], key: str, path: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SaeLoadError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def _saelens(folder: Path, cfg: dict[str, Any], hook: str | None) -> Sae:
    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    d_in, d_sae = _int(cfg, "d_in", cfg_path), _int(cfg, "d_sae", cfg_path)
    kwargs = cfg.get("activation_fn_kwargs") or {}
    arch = str(cfg.get("architecture") or "standard")
    fn = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "")
    activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if arch == "standard" and fn in ("topk", "jumprelu"):
        activation = fn
    elif arch == "standard" and fn not in ("", "relu"):
        activation = None
    if activation is None:
        known = "architecture standard (ReLU), topk or jumprelu; activation_fn_str relu or topk"
        raise SaeLoadError(f"{cfg_path}: unknown activation (architecture {arch!r}, activation {fn!r}); known: {known}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise SaeLoadError(
            f"{cfg_path}: normalize_activations {norm!r} is not supported (only 'none'): its scale is not in the files"
        )
    k = cfg.get("k", kwargs.get("k")) if activation == "topk" else None
    if activation == "topk" and (not isinstance(k, int) or not 1 <= k <= d_sae):
        raise SaeLoadError(f"{cfg_path}: a TopK SAE needs k (1 to d_sae = {d_sae}), got {k!r}")
    tensors, sha = _tensors(weights)
    hook_name = hook or cfg.get("hook_name") or cfg.get("hook_point")
    if not isinstance(hook_name, str):
        raise SaeLoadError(f"{cfg_path} names no hook_name; say where the SAE reads (hook: blocks.K.hook_resid_post)")
    return Sae(
        w_enc=_need(tensors, "W_enc", (d_in, d_sae), weights),
        b_enc=_need(tensors, "b_enc", (d_sae,), weights),
        w_dec=_need(tensors, "W_dec", (d_sae, d_in), weights),
        b_dec=_need(tensors, "b_dec", (d_in,), weights),
        activation=activation,  # type: ignore[arg-type]
        k=k,
        threshold=_need(tensors, "threshold", (d_sae,), weights) if activation == "jumprelu" else None,
        subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        hook=hook_points.parse(hook_name),
        identity=_identity(folder, "saelens", sha, hook_name, d_in, d_sae, activation, k),
    )


def _sparsify(folder: Path, cfg: dict[str, Any], hook: str | None) -> Sae:
    cfg_path, weights = folder / "cfg.json", folder / "sae.safetensors"
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise SaeLoadError(f"{cfg_path}: a transcoder or skip connection is not an SAE of one hook point")
    activation = str(cfg.get("activation", "topk"))
    if activation != "topk":
        raise SaeLoadError(f"{cfg_path}: unknown activation {activation!r} for a sparsify SAE; known: topk")
    tensors, sha = _tensors(weights)
    encoder = tensors.get("encoder.weight")
    if encoder is None:
        raise SaeLoadError(f"{weights}: tensor 'encoder.weight' is missing; it holds {', '.join(sorted(tensors))}")
    d_sae, d_in = (int(n) for n in encoder.shape)
    if "d_in" in cfg and cfg["d_in"] != d_in:
        raise SaeLoadError(f"{cfg_path}: d_in is {cfg['d_in']}, but encoder.weight reads {d_in} features")
    k = _int(cfg, "k", cfg_path)
    if k > d_sae:
        raise SaeLoadError(f"{cfg_path}: k = {k} is more than the {d_sae} latents")
    hook_name = hook or folder.name
    return Sae(
        w_enc=_need(tensors, "encoder.weight", (d_sae, d_in), weights).T.contiguous(),
        b_enc=_need(tensors, "encoder.bias", (d_sae,), weights),
        w_dec=_need(tensors, "W_dec", (d_sae, d_in), weights),
        b_dec=_need(tensors, "b_dec", (d_in,), weights),
        activation="topk",
        k=k,
        threshold=None,
        subtract_b_dec=True,
        hook=hook_points.parse(hook_name),
        identity=_identity(folder, "sparsify", sha, hook_name, d_in, d_sae, "topk", k),
    )


def _identity(
    folder: Path, kind: str, sha: str, hook: str, d_in: int, d_sae: int, activation: str, k: int | None
) -> dict[str, str]:
    return {
        "path": str(folder),
        "format": kind,
        "sha256": sha,
        "hook": hook,
        "shape": f"{d_in}x{d_sae}",
        "activation": activation if k is None else f"{activation} k={k}",
    }
