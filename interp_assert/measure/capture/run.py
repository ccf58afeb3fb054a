"""Capture: runs the model for a :class:`CaptureRequest`, with the attention paths
(:mod:`~interp_assert.measure.attention.blockwise`, :mod:`~interp_assert.measure.attention.fused`),
:mod:`~interp_assert.measure.counterfactual.ablation`, :mod:`~interp_assert.measure.capture.lens`
and the measurements property modules bring, which it calls.

Capture is driven by a :class:`CaptureRequest`: the roles whose scores are
needed, attention statistics, hidden-state norms, patterns. Only those are
computed. Attention is reduced to per-head sums as it is produced and then
dropped: a row block at a time where the model's attention goes through
transformers' ``AttentionInterface``, a layer at a time (eager hooks) elsewhere,
and not computed at all (SDPA) when nothing needs it. Raw tensors never leave
this module; :class:`Measurements` holds numbers only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import blockwise, fused, kernels, native
from interp_assert.measure.capture import lens
from interp_assert.measure.capture.peaks import PeakAccumulator
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.scores import (
    BlockSums,
    BlockTargets,
    block_targets,
    check_block,
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

AttentionPath = Literal["auto", "fused", "blockwise", "eager"]
# Elements of one block's target masks when the fused path finds a whole sequence's targets.
TARGET_MASK_ELEMENTS = 1 << 22


def describe(loaded: LoadedModel) -> ModelMap:
    """Where the model keeps its blocks, attention modules and windows
    (:mod:`interp_assert.measure.loading.architecture`)."""
    return model_map(loaded.model)


def max_positions(loaded: LoadedModel) -> int | None:
    value = getattr(loaded.config, "max_position_embeddings", None)
    return int(value) if value else None


def measure(
    loaded: LoadedModel, batches: list[PromptBatch], request: CaptureRequest, *, attention: AttentionPath = "auto"
) -> Measurements:
    """:func:`measure_internals`, plus the logit lens (:mod:`interp_assert.measure.capture.lens`, a pass of its
    own) and each :class:`~interp_assert.measure.measurements.MeasureRequest` (their own passes) when asked."""
    result = measure_internals(loaded, batches, request, attention=attention)
    if request.logit_lens:
        with _quiet():
            result = replace(result, logit_lens=lens.measure(loaded, batches))
    if request.extras:
        with _quiet():
            result = replace(result, extras={extra: extra.run(loaded, batches) for extra in request.extras})
    return result


def measure_internals(
    loaded: LoadedModel, batches: list[PromptBatch], request: CaptureRequest, *, attention: AttentionPath = "auto"
) -> Measurements:
    """Run the model over ``batches`` and reduce what ``request`` asks for.

    Four ways, cheapest first (``attention="auto"``): no attention needed -> SDPA, no weights
    computed at all; attention through transformers' ``AttentionInterface`` -> ``fused`` where
    it is the cheaper (a fused kernel's output and log-sum-exp, every score from the normaliser,
    see :mod:`interp_assert.measure.attention.fused`) or else ``blockwise`` (weights computed and scored a row block
    at a time, see :mod:`interp_assert.measure.attention.blockwise`); otherwise ``eager`` attention with a forward
    hook that scores each layer's weights and drops them. ``attention`` forces one of the last
    three (for comparisons and benchmarks).
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
        result = _clean_run(loaded, arch, request, batches, attention, record)
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
    attention: AttentionPath,
    record: ablation.CleanRecord | None,
) -> Measurements:
    model = loaded.model
    if not request.needs_attention:
        with blockwise.attention_implementation(model, "sdpa"):
            return _Run(loaded, arch, request, record).forward(batches, hooks="norms")
    device = input_device(loaded)
    head_dim = getattr(loaded.config, "head_dim", None) or getattr(loaded.config, "hidden_size", 0) // arch.n_heads
    use_fused = attention == "fused" or (attention == "auto" and fused_is_cheaper(request, device, head_dim))
    if attention != "eager":
        result = _through_interface(loaded, arch, request, batches, use_fused, record)
        if result is not None:
            return result
        if attention in ("blockwise", "fused"):
            raise CaptureError(
                f"{type(model).__name__}: attention does not go through transformers' AttentionInterface "
                f"in every layer, so it cannot be captured {attention}"
            )
    # Some layer's attention bypasses the interface: measure it all from eager attention weights.
    return _Run(loaded, arch, request, record).forward(batches, hooks="attention+norms")


def fused_is_cheaper(request: CaptureRequest, device: torch.device, head_dim: int | None = None) -> bool:
    """Whether :mod:`~interp_assert.measure.attention.fused` beats
    :mod:`~interp_assert.measure.attention.blockwise` for ``request``.

    With FlexAttention (CUDA) one pass gives every statistic. On CPU the flash kernel gives the
    output and ``lse`` at SDPA's cost, and each of breadth and the row maximum (focus, ``max``)
    takes one more pass of the same cost, unless :mod:`interp_assert.measure.attention.native` (one pass for all)
    is built and takes the head size; blockwise computes everything from one pass that costs
    about 2.3 of them, so it is the cheaper when both are wanted without the native kernel."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    extra = ("breadth" in request.roles) + ("focus" in request.roles or request.attention_stats)
    return extra <= 1 or (head_dim is not None and native.supports(head_dim, head_dim))


def _through_interface(
    loaded: LoadedModel,
    arch: ModelMap,
    request: CaptureRequest,
    batches: list[PromptBatch],
    use_fused: bool,
    record: ablation.CleanRecord | None,
) -> Measurements | None:
    """Measure with an ``AttentionInterface`` function (fused or blockwise); None if some layer's
    attention does not go through the interface."""
    run = _Run(loaded, arch, request, record)
    layer_of = {id(m): i for i, m in enumerate(arch.attention)}
    wants_entropy = "breadth" in request.roles
    fallback = blockwise.BlockwiseCapture(run.score_rows, layer_of, wants_entropy)
    if use_fused:
        capture = fused.FusedCapture(
            run.score_normaliser,
            run.targets_for,
            layer_of,
            wants_entropy,
            "focus" in request.roles or request.attention_stats,
            run.pattern_heads,
            fallback,
        )
        switch = fused.capturing(loaded.model, capture)
        seen = capture.layers_seen
    else:
        switch, seen = blockwise.capturing(loaded.model, fallback), set()
    with switch as switched:
        if switched:
            result = run.forward(batches, hooks="norms")
            if seen | fallback.layers_seen == set(range(len(arch.blocks))):
                return result
    return None


class _Run:
    """One measurement: the accumulator, the tokens of the batch being run, and the hooks."""

    def __init__(
        self, loaded: LoadedModel, arch: ModelMap, request: CaptureRequest, record: ablation.CleanRecord | None
    ) -> None:
        self.loaded, self.arch, self.request, self.record = loaded, arch, request, record
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

    def forward(self, batches: list[PromptBatch], hooks: Literal["norms", "attention+norms"]) -> Measurements:
        arch, request = self.arch, self.request
        with ExitStack() as stack:
            handles = []
            if hooks == "attention+norms":
                handles += [m.register_forward_hook(self._attention_hook(i)) for i, m in enumerate(arch.attention)]
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
            rows = max(1, TARGET_MASK_ELEMENTS // (tokens.shape[0] * n_keys))
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

    def _attention_hook(self, layer: int) -> Any:
        window = self.arch.windows[layer]

        def hook(module: Any, args: Any, output: Any) -> Any:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
                raise CaptureError(
                    f"{type(self.loaded.model).__name__}: layer {layer} attention ({type(module).__name__}) returned "
                    "no attention weights; this architecture cannot report attention in eager mode"
                )
            batch, heads, n_rows, n_keys = weights.shape
            # in row blocks, so that checking and scoring add only a block's worth of temporaries
            height = max(blockwise.MIN_BLOCK_ROWS, blockwise.BLOCK_BYTES // 4 // (batch * heads * n_keys))
            for start in range(0, n_rows, height):
                stop = min(n_rows, start + height)
                block = weights[:, :, start:stop]  # every key, so weight on any hidden key is caught
                problems = check_block(block, start, window, self.tolerance)
                if problems:
                    raise CaptureError(f"invalid attention captured at layer {layer}: " + "; ".join(problems))
                self.score_rows(layer, block, start, window)
            return (output[0], None, *output[2:])  # drop the weights now

        return hook

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
