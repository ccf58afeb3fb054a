"""Which weights changed between two models of one architecture (a base and a fine-tune or a
checkpoint), read from the weights only: per tensor, per head (its q/k/v/o slices) and the first
changed layer. A first step towards audit's "layers 0-15 unchanged, first change at L16H0".

Relative change of a tensor or slice: ``||W_after - W_before||_F / ||W_before||_F`` (the norm of
the difference when the base is zero). Grouped-query heads report their key/value group's change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from interp_assert.errors import CheckInputError
from interp_assert.measure.loading.architecture import model_map

Head = tuple[int, int]


@dataclass(frozen=True)
class WeightChanges:
    tensors: dict[str, float]  # parameter name -> relative change, for the tensors that differ
    heads: dict[Head, dict[str, float]] = field(default_factory=dict)  # changed heads -> {q, k, v, o}
    first_layer: int | None = None  # the first block with a changed tensor (-1: the embeddings)

    def summary(self) -> str:
        if not self.tensors:
            return "no weight changed"
        if self.first_layer is None:
            return f"{len(self.tensors)} tensors changed, none inside a transformer block"
        where = "the embeddings" if self.first_layer < 0 else f"layer {self.first_layer}"
        upstream = f"layers 0-{self.first_layer - 1} unchanged, " if self.first_layer > 0 else ""
        first_heads = sorted(h for h in self.heads if h[0] == self.first_layer)
        if first_heads:
            layer, head = first_heads[0]
            parts = ", ".join(f"{k} {v:.3g}" for k, v in self.heads[first_heads[0]].items() if v > 0)
            where = f"L{layer}H{head} ({parts})"
        return f"{upstream}first change at {where}; {len(self.tensors)} tensors changed"


def _relative(before: torch.Tensor, after: torch.Tensor) -> float:
    difference = float(torch.linalg.norm((after.double() - before.double()).flatten()))
    scale = float(torch.linalg.norm(before.double().flatten()))
    return difference / scale if scale > 0 else difference


def weight_changes(before: Any, after: Any) -> WeightChanges:
    """Compare two models' parameters tensor by tensor and head by head."""
    old = dict(before.named_parameters())
    new = dict(after.named_parameters())
    if old.keys() != new.keys():
        only = sorted(old.keys() ^ new.keys())[:3]
        raise CheckInputError(f"the two models do not have the same tensors (e.g. {', '.join(only)}): not comparable")
    tensors = {}
    for name, tensor in old.items():
        if tensor.shape != new[name].shape:
            raise CheckInputError(f"{name}: shape {tuple(tensor.shape)} vs {tuple(new[name].shape)}: not comparable")
        if not torch.equal(tensor, new[name]):
            tensors[name] = _relative(tensor.detach(), new[name].detach())
    mm_old, mm_new = model_map(before), model_map(after)
    block_of = {id(p): index for index, block in enumerate(mm_old.blocks) for p in block.parameters()}
    layers = sorted({block_of[id(old[name])] for name in tensors if id(old[name]) in block_of})
    first = layers[0] if layers else None
    embedding = before.get_input_embeddings()
    if embedding is not None and any(re.search(r"embed|wte|wpe", name) for name in tensors):
        first = -1
    heads: dict[Head, dict[str, float]] = {}
    for layer in layers:
        w0, w1 = mm_old.layer_weights(layer), mm_new.layer_weights(layer)
        group = mm_old.group_size
        for h in range(mm_old.n_heads):
            moved = {
                "q": _relative(w0.query[h], w1.query[h]),
                "k": _relative(w0.key[h // group], w1.key[h // group]),
                "v": _relative(w0.value[h // group], w1.value[h // group]),
                "o": _relative(w0.output[h], w1.output[h]),
            }
            if any(v > 0 for v in moved.values()):
                heads[(layer, h)] = moved
    return WeightChanges(tensors, heads, first)
