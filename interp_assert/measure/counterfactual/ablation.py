"""Head ablation: part of capture (it runs the model; :mod:`interp_assert.measure.capture.run` calls it).

A head's contribution to its layer's output is its slice of the input of the attention output
projection (where :mod:`interp_assert.measure.loading.architecture` says it is): heads are concatenated there,
head h at features ``h*d .. (h+1)*d``, in every supported architecture (GQA included: those
are query heads). Ablating a head replaces that slice, by a forward pre-hook on the
projection, with zeros (``zero``) or with its mean over every position of the prompt set on the
clean model (``mean``). The clean run is the capture's own forward pass: it records the clean
next-token losses and, for mean ablation, the projection inputs' sums
(:class:`CleanRecord`); only the ablated runs are extra, one per ablation and control set.

Losses are in nats, per position: entry t - 1 of a ``[B, T - 1]`` array is
``-log p(token t | tokens before t)``. The caller's tensors are never modified in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import blockwise
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.head_tables import draw_controls
from interp_assert.measure.loading.architecture import base_model, model_map
from interp_assert.measure.loading.models import LoadedModel, input_device
from interp_assert.measure.measurements import AblatedLosses, AblationRequest, Head

POSITION_CHUNK = 512  # positions unembedded at a time: [B, chunk, vocab] floats, not [B, T, vocab]


class CleanRecord:
    """What the clean run keeps for ablations: each batch's token losses and, for the layers
    that ``mean`` ablations touch, the sum of the output projection's inputs over positions."""

    def __init__(self, loaded: LoadedModel, attention: Sequence[Any], requests: frozenset[AblationRequest]) -> None:
        self.loaded = loaded
        parts = model_map(loaded.model)
        self.projections = [parts.output_projection(i) for i in range(len(attention))]
        self.mean_layers = sorted({layer for r in requests if r.mode == "mean" for layer, _ in r.heads})
        self.sums: dict[int, torch.Tensor] = {}
        self.count = 0
        self.losses: list[np.ndarray] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = [self.projections[layer].register_forward_pre_hook(self._sum(layer)) for layer in self.mean_layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def add_batch(self, output: Any, tokens: torch.Tensor) -> None:
        """The clean forward's output (its final, normed hidden state) -> this batch's losses."""
        self.losses.append(token_losses(self.loaded, _last_hidden(output), tokens))
        self.count += int(tokens.numel())

    def means(self) -> dict[int, torch.Tensor]:
        return {layer: total / max(self.count, 1) for layer, total in self.sums.items()}

    def _sum(self, layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            inputs = _projection_input(args, layer)
            total = inputs.detach().double().sum(dim=tuple(range(inputs.dim() - 1)))
            self.sums[layer] = self.sums[layer] + total if layer in self.sums else total

        return hook


def token_losses(loaded: LoadedModel, hidden: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """``hidden[B, T, D]`` (after the final norm) -> next-token losses ``[B, T - 1]`` in nats."""
    head = loaded.model.get_output_embeddings()
    if head is None:
        raise CaptureError(f"{type(loaded.model).__name__}: no unembedding (output embeddings) to compute a loss with")
    softcap = getattr(loaded.config, "final_logit_softcapping", None)
    parts = []
    for start in range(0, tokens.shape[1] - 1, POSITION_CHUNK):
        stop = min(start + POSITION_CHUNK, tokens.shape[1] - 1)
        chunk = hidden[:, start:stop]
        if head.weight.device.type != "meta":  # offloaded (meta): accelerate's hook moves the input itself
            chunk = chunk.to(head.weight.device)
        logits = head(chunk).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        targets = tokens[:, start + 1 : stop + 1].to(logits.device)
        picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        parts.append((-picked).double().cpu())
    losses = torch.cat(parts, dim=1).numpy()
    if not np.isfinite(losses).all():
        raise CaptureError("the model's next-token loss is not finite on this prompt set")
    return losses


def run(
    record: CleanRecord, n_heads: int, batches: list[PromptBatch], requests: frozenset[AblationRequest]
) -> dict[AblationRequest, AblatedLosses]:
    """One extra forward pass per ablation and per control set. Requests naming a head the
    model lacks are left out (the expectation's check names the head)."""
    n_layers = len(record.projections)
    means = record.means()
    results = {}
    for request in sorted(requests, key=repr):
        if not all(0 <= layer < n_layers and 0 <= head < n_heads for layer, head in request.heads):
            continue
        losses = _ablated(record, n_heads, batches, request.heads, request.mode, means)
        try:
            controls = draw_controls(request.heads, n_heads, request.controls, request.seed)
            problem = ""
        except ValueError as exc:
            controls, problem = (), str(exc)
        control_losses = tuple(_ablated(record, n_heads, batches, heads, request.mode, means) for heads in controls)
        results[request] = AblatedLosses(losses, controls, control_losses, problem)
    return results


def run_layers(record: CleanRecord, n_heads: int, batches: list[PromptBatch]) -> np.ndarray:
    """``[L]``: the mean next-token loss (positions >= 1) with every head of each layer zeroed in turn."""
    means = []
    for layer in range(len(record.projections)):
        losses = _ablated(record, n_heads, batches, tuple((layer, h) for h in range(n_heads)), "zero", {})
        means.append(float(np.concatenate([batch.ravel() for batch in losses]).mean()))
    return np.array(means)


def _ablated(
    record: CleanRecord,
    n_heads: int,
    batches: list[PromptBatch],
    heads: tuple[Head, ...],
    mode: str,
    means: dict[int, torch.Tensor],
) -> tuple[np.ndarray, ...]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    model = record.loaded.model
    handles = [
        record.projections[layer].register_forward_pre_hook(
            _replace(layer, named, n_heads, means[layer] if mode == "mean" else None)
        )
        for layer, named in by_layer.items()
    ]
    try:
        with blockwise.attention_implementation(model, "sdpa"):
            losses = []
            for batch in batches:
                tokens = batch.tokens.to(input_device(record.loaded))
                output = base_model(model)(input_ids=tokens, use_cache=False)
                losses.append(token_losses(record.loaded, _last_hidden(output), tokens))
    finally:
        for handle in handles:
            handle.remove()
    return tuple(losses)


def _replace(layer: int, heads: list[int], n_heads: int, mean: torch.Tensor | None) -> Any:
    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        inputs = _projection_input(args, layer)
        if inputs.shape[-1] % n_heads:
            raise CaptureError(
                f"layer {layer}: the output projection's input ({inputs.shape[-1]} features) does not split into "
                f"{n_heads} heads"
            )
        parts = inputs.unflatten(-1, (n_heads, -1)).clone()  # a copy: the model's own tensor stays as it was
        for head in heads:
            if mean is None:
                parts[..., head, :] = 0
            else:
                parts[..., head, :] = mean.unflatten(-1, (n_heads, -1))[head].to(parts.dtype)
        return (parts.flatten(-2), *args[1:])

    return hook


def _projection_input(args: tuple[Any, ...], layer: int) -> torch.Tensor:
    if not args or not isinstance(args[0], torch.Tensor):
        raise CaptureError(f"layer {layer}: the output projection was not called with its input as a tensor")
    return args[0]


def _last_hidden(output: Any) -> torch.Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if isinstance(hidden, torch.Tensor) else output[0]
