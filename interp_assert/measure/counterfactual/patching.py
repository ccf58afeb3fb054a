"""Activation patching on prompt pairs: part of capture (it runs the model).

The clean and the corrupt prompts of a batch are each run once (:class:`Side`), recording at
every layer each head's output (the input of the attention output projection, head h at
features ``h*d .. (h+1)*d``, query heads under grouped-query attention), the residual stream
entering each block, each MLP's output and the final norm's input at the last position. Both
runs are memoised per model and prompt content, so every expectation on a prompt set shares them.

``denoise`` runs the corrupt prompts with components taken from the clean run; ``noise`` runs
the clean prompts with components from the corrupt run. ``total`` effects are measured by
forward passes: several patched variants are stacked along the batch dimension (variant-major,
``row = v * B + b``), at most :data:`CHUNK_TOKENS` tokens per forward, never one forward per
component. ``direct`` effects are closed form, no forward at all: the change a patch makes to
the component's output at the last position, written into the residual stream by its output
projection (heads) and read straight into the logit difference through the final norm with
the norm's scale frozen at its value on the run being patched.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import blockwise
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.head_tables import draw_controls
from interp_assert.measure.loading.architecture import ModelMap, base_model, model_map
from interp_assert.measure.loading.models import LoadedModel, input_device
from interp_assert.measure.pair_requests import Component, PairResult


class PairRequest(Protocol):
    """What :class:`interp_assert.measure.counterfactual.pair_request.PairRequest` carries (named here, not
    imported: that module imports this one when it runs)."""

    @property
    def direction(self) -> str: ...
    @property
    def effect(self) -> str: ...
    @property
    def sets(self) -> tuple[tuple[Component, ...], ...]: ...
    @property
    def all_heads(self) -> bool: ...
    @property
    def head_positions(self) -> tuple[int, ...] | None: ...
    @property
    def controls(self) -> int: ...
    @property
    def seed(self) -> int: ...


CHUNK_TOKENS = 8192  # tokens per patched forward: variants are stacked up to this many


@dataclass
class Side:
    """One run (clean or corrupt) of one batch: its logit differences ``[B]`` and activations."""

    diffs: torch.Tensor  # [B], float64 on the CPU
    heads: list[torch.Tensor]  # per layer [B, T, H * d]
    resid: list[torch.Tensor]  # per layer [B, T, D]: the residual stream entering the block
    mlp: list[torch.Tensor]  # per layer [B, T, D] (empty where the family has no MLP found)
    final_in: torch.Tensor  # [B, D]: the final norm's input at the last position


@dataclass
class BatchRuns:
    batch: PromptBatch
    clean: Side
    corrupt: Side


_RUNS: weakref.WeakKeyDictionary[Any, dict[str, list[BatchRuns]]] = weakref.WeakKeyDictionary()
_SWEEPS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], np.ndarray]] = weakref.WeakKeyDictionary()


def run(request: PairRequest, loaded: LoadedModel, batches: list[PromptBatch]) -> PairResult:
    """Answer ``request`` on ``batches`` (which must be a pair set's)."""
    if not batches or any(batch.pairs is None for batch in batches):
        raise CaptureError("this prompt set has no pairs: logit_diff and patching need 'pairs' or 'pair_template'")
    parts = model_map(loaded.model)
    runs, digest = base_runs(loaded, batches)
    order = np.concatenate([np.array(r.batch.pairs.index) for r in runs if r.batch.pairs is not None])
    n = len(order)

    def in_order(values: list[torch.Tensor]) -> np.ndarray:
        out = np.empty(n)
        out[order] = torch.cat(values).numpy()
        return out

    clean = in_order([r.clean.diffs for r in runs])
    corrupt = in_order([r.corrupt.diffs for r in runs])
    lengths = tuple(sorted({int(r.batch.tokens.shape[1]) for r in runs}))
    patched: list[np.ndarray | None] = []
    for components in request.sets:
        if not _valid(components, parts, min(lengths)):
            patched.append(None)
            continue
        per_batch = [_patched(loaded, parts, r, [components], request)[0] for r in runs]
        patched.append(in_order(per_batch))
    heads = None
    if request.all_heads:
        key = (digest, request.direction, request.effect, request.head_positions)
        memo = _SWEEPS.setdefault(loaded.model, {})
        if key not in memo:
            memo[key] = _all_heads(loaded, parts, runs, request, order)
        heads = memo[key]
    control_sets: tuple[tuple[tuple[int, int], ...], ...] = ()
    control_patched: list[np.ndarray] = []
    problem = ""
    if request.controls and request.sets and patched[0] is not None:
        named = request.sets[0]
        try:
            control_sets = draw_controls(
                tuple(sorted((c.layer, c.head) for c in named)),
                parts.n_heads,
                request.controls,
                request.seed,
                verb="named",
            )
        except ValueError as exc:
            problem = str(exc)
        positions = named[0].positions
        for drawn in control_sets:
            drawn_set = [Component("head", layer, head, positions) for layer, head in drawn]
            control_patched.append(in_order([_patched(loaded, parts, r, [drawn_set], request)[0] for r in runs]))
    return PairResult(
        clean,
        corrupt,
        tuple(patched),
        heads,
        lengths,
        parts.n_layers,
        parts.n_heads,
        control_sets,
        tuple(control_patched),
        problem,
    )


def _valid(components: Sequence[Component], parts: ModelMap, length: int) -> bool:
    for c in components:
        if not 0 <= c.layer < parts.n_layers or (c.kind == "head" and not 0 <= c.head < parts.n_heads):
            return False
        if c.positions is not None and not all(-length <= p < length for p in c.positions):
            return False
    return True


def _all_heads(
    loaded: LoadedModel, parts: ModelMap, runs: list[BatchRuns], request: PairRequest, order: np.ndarray
) -> np.ndarray:
    sets = [[Component("head", layer, head, request.head_positions)] for layer, head in head_list(parts)]
    out = np.empty((parts.n_layers, parts.n_heads, len(order)))
    for r in runs:
        if request.effect == "direct" and request.head_positions is None:
            values = _direct_all_heads(parts, r, request)
        else:
            values = torch.stack(_patched(loaded, parts, r, sets, request))  # [L*H, B]
        index = np.array(r.batch.pairs.index if r.batch.pairs is not None else ())
        out[:, :, index] = values.numpy().reshape(parts.n_layers, parts.n_heads, -1)
    return out


def head_list(parts: ModelMap) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(parts.n_layers) for head in range(parts.n_heads)]


# ---- the clean and corrupt runs ----


def base_runs(loaded: LoadedModel, batches: list[PromptBatch]) -> tuple[list[BatchRuns], str]:
    """Each batch's clean and corrupt runs, memoised per model and prompt content."""
    digest = _digest(batches)
    memo = _RUNS.setdefault(loaded.model, {})
    if digest not in memo:
        parts = model_map(loaded.model)
        found = []
        for batch in batches:
            assert batch.pairs is not None
            clean = record(loaded, parts, batch.tokens, batch)
            corrupt = record(loaded, parts, batch.pairs.corrupt, batch)
            found.append(BatchRuns(batch, clean, corrupt))
        memo.clear()  # one prompt set's activations at a time per model
        memo[digest] = found
    return memo[digest], digest


def _digest(batches: list[PromptBatch]) -> str:
    hasher = hashlib.sha256()
    for batch in batches:
        assert batch.pairs is not None
        for tensor in (batch.tokens, batch.pairs.corrupt, batch.pairs.answer, batch.pairs.wrong):
            hasher.update(tensor.numpy().tobytes())
            hasher.update(str(tuple(tensor.shape)).encode())
        hasher.update(repr(batch.pairs.index).encode())
    return hasher.hexdigest()


def record(loaded: LoadedModel, parts: ModelMap, tokens: torch.Tensor, batch: PromptBatch) -> Side:
    """Run ``tokens`` once, keeping what patching needs (see :class:`Side`)."""
    heads: dict[int, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}
    mlp: dict[int, torch.Tensor] = {}
    final: list[torch.Tensor] = []
    final_norm, _ = parts.norm_and_unembedding()

    def keep_input(store: dict[int, torch.Tensor], layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store[layer] = _first_tensor(args, kwargs).detach()

        return hook

    def keep_output(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            mlp[layer] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    def keep_final(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        final.append(_first_tensor(args, kwargs)[:, -1].detach())

    with ExitStack() as stack:
        for layer in range(parts.n_layers):
            stack.enter_context(_hooked(parts.output_projection(layer), keep_input(heads, layer), pre=True))
            stack.enter_context(_hooked(parts.blocks[layer], keep_input(resid, layer), pre=True))
            if layer < len(parts.mlps) and parts.mlps[layer] is not None:
                stack.enter_context(_hooked(parts.mlps[layer], keep_output(layer), pre=False))
        stack.enter_context(_hooked(final_norm, keep_final, pre=True))
        diffs = forward_diffs(loaded, parts, tokens, batch)
    return Side(
        diffs=diffs,
        heads=[heads[i] for i in range(parts.n_layers)],
        resid=[resid[i] for i in range(parts.n_layers)],
        mlp=[mlp[i] for i in sorted(mlp)] if len(mlp) == parts.n_layers else [],
        final_in=final[-1],
    )


def forward_diffs(loaded: LoadedModel, parts: ModelMap, tokens: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """One forward of ``tokens [V*B, T]`` -> the logit difference at the last position ``[V*B]``
    (the answers of ``batch`` repeated for each stacked variant), float64 on the CPU."""
    assert batch.pairs is not None
    model = loaded.model
    _, unembedding = parts.norm_and_unembedding()
    with torch.no_grad(), blockwise.attention_implementation(model, "sdpa"):
        output = base_model(model)(input_ids=tokens.to(input_device(loaded)), use_cache=False)
    hidden = getattr(output, "last_hidden_state", None)
    hidden = hidden if isinstance(hidden, torch.Tensor) else output[0]
    last = hidden[:, -1]
    with torch.no_grad():
        logits = unembedding(last.to(unembedding.weight.device)).double()
    if parts.final_softcap:
        logits = parts.final_softcap * torch.tanh(logits / parts.final_softcap)
    repeats = tokens.shape[0] // batch.pairs.answer.shape[0]
    answer = batch.pairs.answer.repeat(repeats).to(logits.device)
    wrong = batch.pairs.wrong.repeat(repeats).to(logits.device)
    diffs: torch.Tensor = (logits.gather(1, answer[:, None]) - logits.gather(1, wrong[:, None])).squeeze(1).cpu()
    if not torch.isfinite(diffs).all():
        raise CaptureError("the logit difference is not finite on this prompt set")
    return diffs


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    found = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
    if not isinstance(found, torch.Tensor):
        raise CaptureError("a patched module was not called with its input as a tensor")
    return found


@contextmanager
def _hooked(module: Any, hook: Any, *, pre: bool) -> Iterator[None]:
    handle = module.register_forward_pre_hook(hook, with_kwargs=True) if pre else module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---- patched runs ----


def _patched(
    loaded: LoadedModel,
    parts: ModelMap,
    runs: BatchRuns,
    sets: Sequence[Sequence[Component]],
    request: PairRequest,
) -> list[torch.Tensor]:
    """The patched logit difference ``[B]`` of each component set (each set patched jointly)."""
    base, source = (runs.corrupt, runs.clean) if request.direction == "denoise" else (runs.clean, runs.corrupt)
    if request.effect == "direct":
        return [base.diffs + direct(parts, runs, base, source, components) for components in sets]
    tokens = runs.batch.tokens if request.direction == "noise" else runs.batch.pairs.corrupt  # type: ignore[union-attr]
    size, length = tokens.shape
    per_chunk = max(1, CHUNK_TOKENS // (size * length))
    results: list[torch.Tensor] = []
    for start in range(0, len(sets), per_chunk):
        chunk = sets[start : start + per_chunk]
        with ExitStack() as stack:
            for module, hook, pre in _patch_hooks(parts, chunk, source, size, length):
                stack.enter_context(_hooked(module, hook, pre=pre))
            diffs = forward_diffs(loaded, parts, tokens.repeat(len(chunk), 1), runs.batch)
        results += list(diffs.view(len(chunk), size))
    return results


def _masks(chunk: Sequence[Sequence[Component]], kind: str, length: int, width: int) -> dict[int, torch.Tensor]:
    """layer -> bool ``[V, T, width]``: which variant replaces which position (and head)."""
    masks: dict[int, torch.Tensor] = {}
    for v, components in enumerate(chunk):
        for c in components:
            if c.kind != kind:
                continue
            mask = masks.setdefault(c.layer, torch.zeros(len(chunk), length, width, dtype=torch.bool))
            positions = list(range(length)) if c.positions is None else [p % length for p in c.positions]
            mask[v, positions, c.head if kind == "head" else 0] = True
    return masks


def _patch_hooks(
    parts: ModelMap, chunk: Sequence[Sequence[Component]], source: Side, size: int, length: int
) -> list[tuple[Any, Any, bool]]:
    hooks: list[tuple[Any, Any, bool]] = []
    for layer, mask in _masks(chunk, "head", length, parts.n_heads).items():
        hooks.append((parts.output_projection(layer), _replace_input(mask, source.heads[layer], parts.n_heads), True))
    for layer, mask in _masks(chunk, "resid", length, 1).items():
        hooks.append((parts.blocks[layer], _replace_input(mask, source.resid[layer], 1), True))
    for layer, mask in _masks(chunk, "mlp", length, 1).items():
        if not source.mlp:
            parts.mlp(layer)  # raises, naming the missing MLP
        hooks.append((parts.mlp(layer), _replace_output(mask, source.mlp[layer]), False))
    return hooks


def _swap(x: torch.Tensor, mask: torch.Tensor, src: torch.Tensor, groups: int) -> torch.Tensor:
    """``x [V*B, T, F]`` with the masked (variant, position, group) slices taken from ``src [B, T, F]``."""
    variants = mask.shape[0]
    size, length, features = src.shape
    shaped = x.view(variants, size, length, groups, features // groups)
    chosen = mask.to(x.device)[:, None, :, :, None]
    patched = torch.where(chosen, src.to(x.dtype).view(1, size, length, groups, -1), shaped)
    return patched.view_as(x)


def _replace_input(mask: torch.Tensor, src: torch.Tensor, groups: int) -> Any:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (_swap(args[0], mask, src, groups), *args[1:]), kwargs
        return args, kwargs | {"hidden_states": _swap(kwargs["hidden_states"], mask, src, groups)}

    return hook


def _replace_output(mask: torch.Tensor, src: torch.Tensor) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (_swap(output[0], mask, src, 1), *output[1:])
        return _swap(output, mask, src, 1)

    return hook


# ---- direct effects, closed form ----


def direct(parts: ModelMap, runs: BatchRuns, base: Side, source: Side, components: Sequence[Component]) -> torch.Tensor:
    """``[B]``: the change in the logit difference through each component's direct path only."""
    if parts.final_softcap:
        raise CaptureError(f"{parts.family}: final logit soft-capping is not linear; direct effects are not defined")
    if parts.layout.attention_output_norm:
        raise CaptureError(f"{parts.family}: attention outputs are normed before the residual; no direct path")
    length = base.heads[0].shape[1]
    delta = torch.zeros_like(base.final_in, dtype=torch.float64)
    for c in components:
        if c.positions is not None and (length - 1) not in [p % length for p in c.positions]:
            continue  # only the last position writes into the logits read there
        if c.kind == "head":
            d = parts.head_dim
            change = (source.heads[c.layer][:, -1] - base.heads[c.layer][:, -1]).double()[
                :, c.head * d : (c.head + 1) * d
            ]
            weight = parts.layer_weights(c.layer).output[c.head].double()  # [d, D]
            delta += change.cpu() @ weight
        elif c.kind == "mlp":
            if not source.mlp:
                parts.mlp(c.layer)
            delta += (source.mlp[c.layer][:, -1] - base.mlp[c.layer][:, -1]).double().cpu()
        else:
            raise CaptureError("direct effects are defined for heads and MLPs, not the residual stream")
    return logit_direction_readout(parts, runs, base, delta)


def _direct_all_heads(parts: ModelMap, runs: BatchRuns, request: PairRequest) -> torch.Tensor:
    """``[L*H, B]``: every head's direct effect at once (patched at every position)."""
    base, source = (runs.corrupt, runs.clean) if request.direction == "denoise" else (runs.clean, runs.corrupt)
    rows = []
    for layer in range(parts.n_layers):
        change = (source.heads[layer][:, -1] - base.heads[layer][:, -1]).double().cpu()
        change = change.view(change.shape[0], parts.n_heads, parts.head_dim)  # [B, H, d]
        weight = parts.layer_weights(layer).output.double()  # [H, d, D]
        written = torch.einsum("bhd,hdm->hbm", change, weight)  # [H, B, D]
        rows += [base.diffs + logit_direction_readout(parts, runs, base, written[h]) for h in range(parts.n_heads)]
    return torch.stack(rows)


def logit_direction_readout(parts: ModelMap, runs: BatchRuns, base: Side, delta: torch.Tensor) -> torch.Tensor:
    """``delta [B, D]`` added to the final norm's input, read through the norm with its scale
    frozen at ``base``'s value, into the logit difference ``[B]``."""
    norm, unembedding = parts.norm_and_unembedding()
    pairs = runs.batch.pairs
    assert pairs is not None
    x = base.final_in.double().cpu()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    if parts.layout.norm_kind == "layer":
        scale = torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)
        delta = delta - delta.mean(dim=-1, keepdim=True)
    else:
        scale = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    gain = getattr(norm, "weight", None)
    normed = delta / scale
    if gain is not None:
        normed = normed * (gain.detach().double().cpu() + parts.layout.gain_offset)
    weight = unembedding.weight.detach()
    direction = (weight[pairs.answer.to(weight.device)] - weight[pairs.wrong.to(weight.device)]).double().cpu()
    found: torch.Tensor = (normed * direction).sum(dim=-1)
    return found


# ---- attribution patching: a first-order screen of every head ----


def attribution(loaded: LoadedModel, batches: list[PromptBatch], direction: str = "denoise") -> np.ndarray:
    """``[L, H, N]``: each head's attribution-patching estimate of its single-head patched logit
    difference minus the unpatched one: the gradient of the logit difference on the run being
    patched times (donor - receiver) head output, summed over positions and features. One
    forward and one backward per batch (beside the memoised clean and corrupt runs)."""
    parts = model_map(loaded.model)
    runs, _ = base_runs(loaded, batches)
    n = sum(len(r.batch.tokens) for r in runs)
    out = np.empty((parts.n_layers, parts.n_heads, n))
    for r in runs:
        assert r.batch.pairs is not None
        receiver, donor = (r.corrupt, r.clean) if direction == "denoise" else (r.clean, r.corrupt)
        tokens = r.batch.pairs.corrupt if direction == "denoise" else r.batch.tokens
        kept: dict[int, torch.Tensor] = {}

        def leaf(layer: int, store: dict[int, torch.Tensor]) -> Any:
            def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                x = args[0].detach().requires_grad_(True)
                store[layer] = x
                return (x, *args[1:]), kwargs

            return hook

        with ExitStack() as stack, torch.enable_grad():
            for layer in range(parts.n_layers):
                stack.enter_context(_hooked(parts.output_projection(layer), leaf(layer, kept), pre=True))
            stack.enter_context(blockwise.attention_implementation(loaded.model, "sdpa"))
            output = base_model(loaded.model)(input_ids=tokens.to(input_device(loaded)), use_cache=False)
            hidden = getattr(output, "last_hidden_state", None)
            last = (hidden if isinstance(hidden, torch.Tensor) else output[0])[:, -1]
            _, unembedding = parts.norm_and_unembedding()
            weight = unembedding.weight
            direction_rows = (
                weight[r.batch.pairs.answer.to(weight.device)] - weight[r.batch.pairs.wrong.to(weight.device)]
            )
            (last.to(weight.dtype) * direction_rows).sum().backward()
        index = list(r.batch.pairs.index)
        for layer in range(parts.n_layers):
            grad = kept[layer].grad
            assert grad is not None
            change = (donor.heads[layer] - receiver.heads[layer]).to(grad.dtype)
            score = (grad * change).unflatten(-1, (parts.n_heads, -1)).sum(dim=(1, 3))  # [B, H]
            out[layer][:, index] = score.double().cpu().numpy().T
    return out
