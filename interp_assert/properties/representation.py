"""What the representational properties (``sae_quality``, ``sae_feature``, ``probe``) share: files
named relative to the spec, other prompt sets of the spec, and stored directions. Torch-free."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from interp_assert.errors import SaeLoadError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+@[\w./-]+(:.+)?$")


def spec_dir(info: Any) -> Path:
    context = getattr(info, "context", None) or {}
    found = context.get("spec_dir")
    return Path(found) if found is not None else Path.cwd()


def _normal(value: str, info: Any) -> Path:
    """``value`` relative to the spec's folder, with ``..`` taken lexically (the folder may not exist yet)."""
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else spec_dir(info) / path))


def resolve_sae(value: str, info: Any) -> str:
    """A hub id (``owner/name@revision``) as written, else the folder as an absolute path (it must exist)."""
    if HUB_ID.match(value):
        return value
    path = _normal(value, info)
    if not path.is_dir():
        builtin = Path(__file__).resolve().parent.parent / "builtin_saes"
        if (builtin / value).is_dir():
            return str(builtin / value)
        raise ValueError(
            f"SAE folder {value!r} not found (looked in {path}; built-in SAEs: "
            f"{', '.join(sorted(p.name for p in builtin.iterdir() if p.is_dir())) if builtin.is_dir() else 'none'}); "
            "a hub id needs a pinned revision: owner/name@revision"
        )
    return str(path.resolve())


def resolve_file(value: str, info: Any) -> str:
    path = _normal(value, info)
    if not path.is_file():
        raise ValueError(f"file {value!r} not found (looked in {path})")
    return str(path.resolve())


def other_prompts(name: str, info: Any, key: str) -> tuple[tuple[str, ...], str]:
    """Another prompt set of the spec, by name: its texts and BOS policy."""
    context = getattr(info, "context", None) or {}
    sets = context.get("prompt_sets")
    if sets is None:
        raise ValueError(f"{key}: prompt set {name!r} cannot be looked up outside a spec file")
    if name not in sets:
        raise ValueError(f"{key}: prompt set {name!r} is not defined; defined prompt sets: {', '.join(sorted(sets))}")
    found = sets[name]
    if found.texts is None:
        raise ValueError(f"{key}: prompt set {name!r} is random tokens; this property needs texts")
    return tuple(found.texts), str(found.bos)


def load_direction(path: str, key: str, width: int | None = None) -> np.ndarray:
    """A vector stored in a safetensors file, as float64; a clear error if missing, mis-sized or not finite."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
    except Exception as exc:
        raise SaeLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    if key not in tensors:
        raise SaeLoadError(f"{path}: no tensor {key!r}; it holds {', '.join(sorted(tensors)) or 'none'}")
    vector = np.asarray(tensors[key], dtype=np.float64)
    if vector.ndim != 1:
        raise SaeLoadError(f"{path}: {key} has shape {list(vector.shape)}; a direction is one vector")
    if width is not None and vector.shape[0] != width:
        raise SaeLoadError(f"{path}: {key} has {vector.shape[0]} entries, but the model is {width} wide there")
    if not np.isfinite(vector).all() or not np.any(vector):
        raise SaeLoadError(f"{path}: {key} has NaN, infinite or only zero entries")
    return vector


def save_directions(path: str | Path, vectors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    from interp_assert import atomic

    with atomic.replacing(Path(path)) as scratch:  # a cut-short write never replaces the stored directions
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in vectors.items()}, str(scratch), metadata)
