"""Named places in a model's forward pass, resolved through :mod:`interp_assert.measure.loading.architecture`.

A hook point is written as SAELens (TransformerLens) names it or as EleutherAI's sparsify does:

- ``blocks.{k}.hook_resid_pre``: the residual stream entering block k;
- ``blocks.{k}.hook_resid_post`` or ``layers.{k}``: the residual stream leaving block k;
- ``blocks.{k}.hook_mlp_out`` or ``layers.{k}.mlp``: the output of block k's MLP (before it is
  added to the residual stream).

:func:`reading` records the activation there; :func:`replacing` swaps it for a function of
itself (an SAE's reconstruction, zeros, the activation plus a direction). Both install PyTorch
hooks and always remove them, on error too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from interp_assert.errors import SaeLoadError
from interp_assert.measure.loading.architecture import model_map

HookKind = Literal["resid_pre", "resid_post", "mlp_out"]
_PATTERNS: tuple[tuple[str, HookKind], ...] = (
    (r"blocks\.(\d+)\.hook_resid_pre", "resid_pre"),
    (r"blocks\.(\d+)\.hook_resid_post", "resid_post"),
    (r"blocks\.(\d+)\.hook_mlp_out", "mlp_out"),
    (r"layers\.(\d+)", "resid_post"),
    (r"layers\.(\d+)\.mlp", "mlp_out"),
)
KNOWN = "blocks.K.hook_resid_pre, blocks.K.hook_resid_post, blocks.K.hook_mlp_out, layers.K, layers.K.mlp"


@dataclass(frozen=True)
class HookPoint:
    kind: HookKind
    layer: int
    name: str  # as written

    def describe(self) -> str:
        return {
            "resid_pre": f"the residual stream entering block {self.layer}",
            "resid_post": f"the residual stream leaving block {self.layer}",
            "mlp_out": f"the MLP output of block {self.layer}",
        }[self.kind]


def parse(name: str) -> HookPoint:
    for pattern, kind in _PATTERNS:
        found = re.fullmatch(pattern, name)
        if found:
            return HookPoint(kind, int(found.group(1)), name)
    raise SaeLoadError(f"hook point {name!r} is not one interp_assert knows; known: {KNOWN} (K a block index)")


def check(point: HookPoint, model: Any) -> None:
    """Raise :class:`SaeLoadError` when the model has no such place."""
    parts = model_map(model)
    if not 0 <= point.layer < parts.n_layers:
        raise SaeLoadError(
            f"hook point {point.name!r} names block {point.layer}, but this model ({parts.family}) has blocks "
            f"0-{parts.n_layers - 1}"
        )
    if point.kind == "mlp_out":
        try:
            parts.mlp(point.layer)
        except Exception as exc:
            raise SaeLoadError(f"hook point {point.name!r}: {exc}") from exc


def _module(point: HookPoint, model: Any) -> Any:
    check(point, model)
    parts = model_map(model)
    return parts.mlp(point.layer) if point.kind == "mlp_out" else parts.blocks[point.layer]


@contextmanager
def replacing(point: HookPoint, model: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, the activation at ``point`` is replaced by ``change(activation)`` ([B, T, D])."""
    module = _module(point, model)
    if point.kind == "resid_pre":

        def pre_hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (change(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(mod: Any, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (change(output[0]), *output[1:])
            return change(output)

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def reading(point: HookPoint, model: Any, into: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, each forward appends a detached float32 copy of the activation at ``point``."""

    def keep(activation: torch.Tensor) -> torch.Tensor:
        into.append(activation.detach().float().clone())
        return activation

    with replacing(point, model, keep):
        yield
