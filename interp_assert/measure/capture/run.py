"""Capture: runs the model for a :class:`CaptureRequest` on the attention path
:func:`~interp_assert.measure.attention.paths.choose` picks (the only place a path is chosen), with
:mod:`~interp_assert.measure.counterfactual.ablation`, :mod:`~interp_assert.measure.capture.lens`
and the measurements property modules bring, which it calls.

Capture is driven by a :class:`CaptureRequest`: the roles whose scores are
needed, attention statistics, hidden-state norms, patterns. Only those are
computed. Attention is reduced to per-head sums as it is produced and then
dropped: from a fused kernel's softmax normaliser or a row block at a time where
the model's attention goes through transformers' ``AttentionInterface``, a layer at
a time (eager hooks) elsewhere, and not computed at all (SDPA) when nothing needs
it. Raw tensors never leave capture; :class:`Measurements` holds numbers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import fused, kernels, paths
from interp_assert.measure.attention.tuning import DEFAULT, Tuning
from interp_assert.measure.capture import lens
from interp_assert.measure.capture.peaks import PeakAccumulator
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.scores import (
    BlockSums,
    BlockTargets,
    block_targets,
    check_normaliser,
    check_rows,
    merge_targets,
    score_block,
    score_rows,
)
from interp_assert.measure.counterfactual import ablation
from interp_assert.measure.loading.architecture import ModelMap, base_model, model_map
from interp_assert.measure.loading.models import LoadedModel, input_device
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.vocab import Role


def describe(loaded: LoadedModel) -> ModelMap:
    """Where the model keeps its blocks, attention modules and windows
    (:mod:`interp_assert.measure.loading.architecture`)."""
    return model_map(loaded.model)


def max_positions(loaded: LoadedModel) -> int | None:
    value = getattr(loaded.config, "max_position_embeddings", None)
    return int(value) if value else None


def measure(
    loaded: LoadedModel,
    batches: list[PromptBatch],
    request: CaptureRequest,
    *,
    attention: paths.Choice = "auto",
    tuning: Tuning = DEFAULT,
) -> Measurements:
    """:func:`measure_internals`, plus the logit lens (:mod:`interp_assert.measure.capture.lens`, a pass of its
    own) and each :class:`~interp_assert.measure.measurements.MeasureRequest` (their own passes) when asked."""
    result = measure_internals(loaded, batches, request, attention=attention, tuning=tuning)
    if request.logit_lens:
        with _quiet():
            result = replace(result, logit_lens=lens.measure(loaded, batches))
    if request.extras:
        with _quiet():
            result = replace(result, extras={extra: extra.run(loaded, batches) for extra in request.extras})
    return result


def measure_internals(
    loaded: LoadedModel,
    batches: list[PromptBatch],
    request: CaptureRequest,
    *,
    attention: paths.Choice = "auto",
    tuning: Tuning = DEFAULT,
) -> Measurements:
    """Run the model over ``batches`` and reduce what ``request`` asks for.

    The attention path (:mod:`interp_assert.measure.attention.paths`): with ``attention="auto"`` the
    cheapest that applies (SDPA when no attention is needed; a fused kernel's normaliser; the
    weights a row block at a time; eager attention's weights, hooked), else the family or path
    ``attention`` names (for comparisons and benchmarks). ``tuning``: the sizes the paths work in
    (:mod:`interp_assert.measure.attention.tuning`); they never change the numbers.
    """
    arch = describe(loaded)
    n_layers = len(arch.blocks)
    for layer, head in request.patterns:
        if not (0 <= layer < n_layers and 0 <= head < arch.n_heads):
            raise CaptureError(f"no head L{layer}H{head}: layers 0-{n_layers - 1}, heads 0-{arch.n_heads - 1}")
    if not (request.needs_attention or request.needs_hidden_states or request.needs_losses):
        return Measurements(n_layers, arch.n_heads)
    # the clean run serves attention, norms and the ablations' clean losses alike
    record = ablation.CleanRecord(loaded, arch.attention, request.ablations) if request.needs_losses else None
    with torch.inference_mode(), _quiet():
        result = _clean_run(loaded, arch, request, batches, attention, record, tuning)
        if record is not None:
            ablated = ablation.run(record, arch.n_heads, batches, request.ablations)
            by_layer = ablation.run_layers(record, arch.n_heads, batches) if request.layer_ablations else None
            result = replace(
                result, token_losses=tuple(record.losses), ablations=ablated, layer_ablation_losses=by_layer
            )
    return result


def _clean_run(
    loaded: LoadedModel,
    arch: ModelMap,
    request: CaptureRequest,
    batches: list[PromptBatch],
    attention: paths.Choice,
    record: ablation.CleanRecord | None,
    tuning: Tuning,
) -> Measurements:
    """One run on the path :func:`~interp_assert.measure.attention.paths.choose` picks; where the model
    turns out not to take it (its attention bypasses transformers' ``AttentionInterface`` in some
    layer), on the next that does not need the interface."""
    model = loaded.model
    situation = paths.Situation(request, input_device(loaded), arch.head_dim)
    for path in paths.choose(situation, attention):
        run = _Run(loaded, arch, request, record, tuning)
        with path.installed(model, arch, run) as installed:
            if installed.switched:
                result = run.forward(batches)
                if installed.complete():
                    return result
    raise CaptureError(
        f"{type(model).__name__}: attention does not go through transformers' AttentionInterface "
        f"in every layer, so it cannot be captured {attention}"
    )


class _Run:
    """One measurement: the accumulator, the tokens of the batch being run, and the hooks."""

    def __init__(
        self,
        loaded: LoadedModel,
        arch: ModelMap,
        request: CaptureRequest,
        record: ablation.CleanRecord | None,
        tuning: Tuning = DEFAULT,
    ) -> None:
        self.loaded, self.arch, self.request, self.record, self.tuning = loaded, arch, request, record, tuning
        self.accumulator = _Accumulator(len(arch.blocks), arch.n_heads)
        self.tolerance = 1e-4 if loaded.options.dtype == "float32" else 5e-2
        self.roles = tuple(sorted(request.roles))
        self.tokens = torch.zeros(0, 0, dtype=torch.long)
        self.first_batch = True
        self.sequences_done = 0  # sequences of earlier batches: activation peaks name a sequence by its index
        self.peaks = PeakAccumulator(len(arch.blocks) + 1) if request.activation_peaks else None
        self.patterns: dict[tuple[int, int], np.ndarray] = {}
        self.targets: dict[tuple[Any, ...], BlockTargets] = {}
        self.moved: dict[torch.device, torch.Tensor] = {}  # this batch's tokens on other layers' devices

    def forward(self, batches: list[PromptBatch]) -> Measurements:
        """Run every batch (the attention path is installed around this) with the norm hooks."""
        arch, request = self.arch, self.request
        with ExitStack() as stack:
            handles = []
            if request.needs_hidden_states:
                handles.append(arch.blocks[0].register_forward_pre_hook(self._norm_hook(0), with_kwargs=True))
                handles += [
                    b.register_forward_hook(_output_only(self._norm_hook(i + 1))) for i, b in enumerate(arch.blocks)
                ]
            for handle in handles:
                stack.callback(handle.remove)
            if self.record is not None:
                stack.enter_context(self.record.recording())
            for index, batch in enumerate(batches):
                self.tokens = batch.tokens.to(input_device(self.loaded))
                self.first_batch = index == 0
                self.targets, self.moved = {}, {}
                output = base_model(self.loaded.model)(input_ids=self.tokens, use_cache=False)
                if self.record is not None:
                    self.record.add_batch(output, self.tokens)
                self.sequences_done += int(self.tokens.shape[0])
        result = self.accumulator.result(self.roles, request)
        if self.peaks is not None:
            result = replace(result, activation_peaks=self.peaks.result())
        if request.patterns:
            first = batches[0].tokens[0].tolist()
            words = tuple(self.loaded.tokenizer.convert_ids_to_tokens(first))
            result = replace(result, patterns=self.patterns, pattern_tokens=words)
        return result

    def score_rows(
        self,
        layer: int,
        weights: torch.Tensor,
        row_start: int,
        window: int | None,
        shifted_logits: torch.Tensor | None = None,
        masked: bool = False,
    ) -> None:
        """Score rows ``row_start ..`` of ``layer``'s attention (``weights[B, H, R, K]``, K >= last row + 1).

        ``masked``: the weights come from :mod:`interp_assert.measure.attention.blockwise`, which gives hidden keys
        weight exactly 0 and rows that sum to 1 by construction (checked all the same)."""
        n_rows, n_keys = weights.shape[2], weights.shape[3]
        tokens = self.tokens_on(weights.device)
        where = (row_start, n_rows, n_keys, window, tokens.device)
        if where not in self.targets:  # the same for every layer of this batch (on one device)
            self.targets[where] = block_targets(tokens, row_start, n_rows, n_keys, self.roles, window)
        sums = score_block(
            weights,
            tokens,
            row_start,
            self.roles,
            window,
            shifted_logits=shifted_logits,
            targets=self.targets[where],
            attention_stats=self.request.attention_stats,
            hidden_are_zero=masked,
        )
        if sums.row_sums is not None:
            problems = check_rows(sums.row_sums, self.tolerance)
            if problems:
                raise CaptureError(f"invalid attention captured at layer {layer}: " + "; ".join(problems))
        self.accumulator.add(layer, sums)
        if self.first_batch:
            n_tokens = self.tokens.shape[1]
            for wanted_layer, head in self.request.patterns:
                if wanted_layer == layer:
                    pattern = self.patterns.setdefault((layer, head), np.zeros((n_tokens, n_tokens), np.float32))
                    pattern[row_start : row_start + n_rows, :n_keys] = weights[0, head].float().cpu().numpy()

    def tokens_on(self, device: torch.device) -> torch.Tensor:
        """This batch's tokens on ``device``: under a device map, layers run on different devices."""
        if device == self.tokens.device:
            return self.tokens
        if device not in self.moved:
            self.moved[device] = self.tokens.to(device)
        return self.moved[device]

    def targets_for(self, n_keys: int, window: int | None, device: torch.device | None = None) -> BlockTargets:
        """The targets of rows ``0 .. n_keys - 1`` of this batch (shared by the layers with ``window``
        on ``device``), found a block of rows at a time (the masks of duplicate_token and induction are
        ``[B, R, T]``)."""
        tokens = self.tokens if device is None else self.tokens_on(device)
        where = (0, n_keys, n_keys, window, tokens.device)
        if where not in self.targets:
            rows = max(1, self.tuning.target_mask_elements // (tokens.shape[0] * n_keys))
            parts = [
                (start, block_targets(tokens, start, min(rows, n_keys - start), n_keys, self.roles, window))
                for start in range(0, n_keys, rows)
            ]
            self.targets[where] = parts[0][1] if len(parts) == 1 else merge_targets(parts)
        return self.targets[where]

    def pattern_heads(self, layer: int) -> list[int]:
        """Heads of ``layer`` whose full pattern is wanted from this batch (only the first has them)."""
        return sorted(head for wanted, head in self.request.patterns if wanted == layer) if self.first_batch else []

    def score_normaliser(self, layer: int, rows: fused.LayerRows) -> None:
        """Score a whole layer from :mod:`interp_assert.measure.attention.fused`'s per-row reductions."""
        problems = check_normaliser(rows.lse)
        if problems:
            raise CaptureError(f"invalid attention captured at layer {layer}: " + "; ".join(problems))
        batch, _, n_tokens = rows.lse.shape
        sums = score_rows(
            rows.targets,
            rows.target_weights,
            0,
            n_tokens,
            batch,
            self.roles,
            rows.window,
            max_weight=rows.max_weight,
            entropy=rows.entropy,
            attention_stats=self.request.attention_stats,
        )
        self.accumulator.add(layer, sums)
        for head, pattern in rows.patterns.items():
            self.patterns[(layer, head)] = pattern.float().cpu().numpy()

    def _norm_hook(self, index: int) -> Any:
        def hook(module: Any, args: Any, kwargs: Any, output: Any = None) -> None:
            hidden = output if output is not None else (args[0] if args else kwargs["hidden_states"])
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            with kernels.one_thread():  # one small reduction: not worth waking (or waiting for) other threads
                if self.request.hidden_norms:
                    self.accumulator.add_norms(index, hidden.float().norm(dim=-1))
                if self.peaks is not None:
                    self.peaks.add(index, hidden, self.sequences_done)

        return hook


def generate(loaded: LoadedModel, batches: list[PromptBatch], max_new_tokens: int) -> list[PromptBatch]:
    """Greedy (deterministic) continuation of every sequence by ``max_new_tokens`` tokens.

    The returned batches hold prompt + continuation; measuring them with one forward
    pass gives every generated position the same attention it had while being
    generated with a KV cache, since attention is causal.
    """
    extended = []
    with torch.inference_mode(), _quiet():
        for batch in batches:
            tokens = batch.tokens.to(input_device(loaded))
            output = loaded.model.generate(
                input_ids=tokens,
                attention_mask=torch.ones_like(tokens),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id or 0,
            )
            extended.append(PromptBatch(output.cpu()))
    return extended


def _output_only(hook: Any) -> Any:
    return lambda module, args, output: hook(module, args, {}, output)


@contextmanager
def _quiet() -> Iterator[None]:
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


class _Accumulator:
    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads
        self.role_sums: dict[Role, np.ndarray] = {}
        self.role_rows: dict[Role, np.ndarray] = {}
        self.max_weight = np.zeros((n_layers, n_heads))
        self.visible_sum = np.zeros((n_layers, n_heads))
        self.visible_entries = np.zeros(n_layers)
        self.norm_sum = np.zeros(n_layers + 1)
        self.norm_sum_rest = np.zeros(n_layers + 1)
        self.norm_count = np.zeros(n_layers + 1)
        self.norm_count_rest = np.zeros(n_layers + 1)

    def add(self, layer: int, sums: BlockSums) -> None:
        for role, values in sums.role_sums.items():
            self.role_sums.setdefault(role, np.zeros((self.n_layers, self.n_heads)))[layer] += (
                values.double().cpu().numpy()
            )
            self.role_rows.setdefault(role, np.zeros(self.n_layers))[layer] += sums.role_rows[role]
        if sums.max_weight is not None and sums.visible_sum is not None:
            self.max_weight[layer] = np.maximum(self.max_weight[layer], sums.max_weight.cpu().numpy())
            self.visible_sum[layer] += sums.visible_sum.double().cpu().numpy()
            self.visible_entries[layer] += sums.visible_entries

    def add_norms(self, index: int, norms: torch.Tensor) -> None:
        if not bool(torch.isfinite(norms).all()):
            where = "the embeddings" if index == 0 else f"the output of block {index - 1}"
            raise CaptureError(f"hidden state {index} ({where}) has non-finite values")
        self.norm_sum[index] += float(norms.double().sum())
        self.norm_count[index] += norms.numel()
        self.norm_sum_rest[index] += float(norms[:, 1:].double().sum())
        self.norm_count_rest[index] += norms[:, 1:].numel()

    def result(self, roles: tuple[Role, ...], request: CaptureRequest) -> Measurements:
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = {
                role: self.role_sums[role] / self.role_rows[role][:, None] for role in roles if role in self.role_sums
            }
            hidden = request.hidden_norms
            return Measurements(
                self.n_layers,
                self.n_heads,
                scores,
                self.max_weight if request.attention_stats else None,
                self.visible_sum / self.visible_entries[:, None] if request.attention_stats else None,
                self.norm_sum / self.norm_count if hidden else None,
                self.norm_sum_rest / self.norm_count_rest if hidden else None,
            )
