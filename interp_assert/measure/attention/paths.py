"""The attention paths capture can take, behind one protocol, and the one function that chooses.

A path is a way to run the model's attention so that capture sees what it needs: nothing (SDPA),
each row's softmax normaliser from a fused kernel (FlexAttention, the native one-pass kernel, the
CPU flash kernel), the weights a row block at a time (blockwise), or eager attention's weights,
hooked. Each is an :class:`AttentionPath`: a name, whether it :meth:`~AttentionPath.applies` to a
model, request and device (and why not), its :meth:`~AttentionPath.cost` in attention passes of the
plain forward, a context manager that installs it on the model, and one line for ``interp-assert
doctor``. :data:`PATHS` is the table; :func:`choose` is the only place a path is picked: the
cheapest that applies, or the one the ``attention=`` option names.

Layers inside a path may still go another way, per layer, for reasons only the layer knows: a
fused layer with soft-capping on the CPU, or a mask transformers built anyway, is computed
blockwise in the same run (see :func:`~interp_assert.measure.attention.fused.fused_attention`);
under a device map, a fused layer on another kind of device takes that device's kernel
(:func:`kernel_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import torch

from interp_assert.errors import CaptureError
from interp_assert.measure.attention import blockwise, fused, native
from interp_assert.measure.attention.fused import Backend, LayerRows
from interp_assert.measure.attention.tuning import Tuning
from interp_assert.measure.capture.scores import BlockTargets, check_block
from interp_assert.measure.loading.architecture import ModelMap
from interp_assert.measure.measurements import CaptureRequest

Family = Literal["sdpa", "fused", "blockwise", "eager"]
# What ``attention=`` accepts: "auto" (the cheapest that applies), a family, or a path's name.
Choice = str
CHOICES = ("auto", "fused", "blockwise", "eager", "fused-flex", "fused-native", "fused-flash")


@dataclass(frozen=True)
class Situation:
    """What the choice of a path depends on: the request, the device the model's inputs go to (the
    first layers'; under a device map others may differ, see :func:`kernel_for`) and its head size."""

    request: CaptureRequest
    device: torch.device
    head_dim: int

    @property
    def statistics(self) -> bool:
        """Whether breadth, focus or the ``max`` statistic are wanted (the fused kernels' extras)."""
        return extra_passes(self.request) > 0


def extra_passes(request: CaptureRequest) -> int:
    """Passes the CPU flash kernel needs beyond its first: one for breadth (the entropy), one for
    the row maximum (focus, the ``max`` statistic)."""
    return ("breadth" in request.roles) + ("focus" in request.roles or request.attention_stats)


class Scorer(Protocol):
    """What a path feeds as the model runs: capture's run (:mod:`interp_assert.measure.capture.run`)."""

    request: CaptureRequest
    tolerance: float
    tuning: Tuning

    def score_rows(
        self,
        layer: int,
        weights: torch.Tensor,
        row_start: int,
        window: int | None,
        shifted_logits: torch.Tensor | None = None,
        masked: bool = False,
    ) -> None: ...

    def score_normaliser(self, layer: int, rows: LayerRows) -> None: ...

    def targets_for(self, n_keys: int, window: int | None, device: torch.device | None = None) -> BlockTargets: ...

    def pattern_heads(self, layer: int) -> list[int]: ...


@dataclass
class Installed:
    """A path on a model, for one run: ``switched`` is False where the model could not take it
    (then nothing was changed); after the run, :meth:`complete` says whether every layer's
    attention went the path's way (a model may route some layer around the ``AttentionInterface``)."""

    switched: bool
    complete: Callable[[], bool] = lambda: True


class AttentionPath(Protocol):
    """One way to run attention for capture (see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> Family: ...

    @property
    def through_interface(self) -> bool:
        """Whether it runs as a function of transformers' ``AttentionInterface`` (so a model whose
        attention bypasses the interface cannot take it, nor any other path that does)."""
        ...

    @property
    def doctor(self) -> str:
        """What it is, in one line, for ``interp-assert doctor``."""
        ...

    def applies(self, situation: Situation) -> str | None:
        """Why this path cannot run ``situation`` (``None``: it can)."""
        ...

    def cost(self, situation: Situation) -> float:
        """Roughly, the attention passes of the plain forward it costs (the choice takes the lowest)."""
        ...

    def installed(self, model: Any, arch: ModelMap, scorer: Scorer) -> AbstractContextManager[Installed]:
        """Install the path on ``model`` for the duration of one run feeding ``scorer``; always undone."""
        ...


@dataclass(frozen=True)
class SdpaPath:
    """No attention weights at all: PyTorch's SDPA, for requests that need none (norms, losses)."""

    name: str = "sdpa"
    family: Family = "sdpa"
    through_interface: bool = False
    doctor: str = "PyTorch's SDPA, no attention computed for capture: requests that need none (norms, losses)"

    def applies(self, situation: Situation) -> str | None:
        return "the request needs attention" if situation.request.needs_attention else None

    def cost(self, situation: Situation) -> float:
        return 1.0

    @contextmanager
    def installed(self, model: Any, arch: ModelMap, scorer: Scorer) -> Iterator[Installed]:
        with blockwise.attention_implementation(model, "sdpa"):  # a model without SDPA keeps its own
            yield Installed(True)


@dataclass(frozen=True)
class BlockwisePath:
    """The softmax weights a row block at a time, scored and dropped
    (:mod:`~interp_assert.measure.attention.blockwise`)."""

    name: str = "blockwise"
    family: Family = "blockwise"
    through_interface: bool = True
    doctor: str = "softmax weights a row block at a time, scored and dropped (any device)"

    def applies(self, situation: Situation) -> str | None:
        return None

    def cost(self, situation: Situation) -> float:
        return 2.3  # measured on CPU: logits, softmax and the weighted values, in float32

    @contextmanager
    def installed(self, model: Any, arch: ModelMap, scorer: Scorer) -> Iterator[Installed]:
        capture = _blockwise_capture(arch, scorer)
        with blockwise.capturing(model, capture) as switched:
            yield Installed(switched, lambda: capture.layers_seen == set(range(len(arch.attention))))


@dataclass(frozen=True)
class FusedPath:
    """Scores from a fused kernel's softmax normaliser (:mod:`~interp_assert.measure.attention.fused`),
    with ``kernel`` on the devices it is for. ``pinned``: every layer takes ``kernel``, whatever
    its device and request (when the ``attention=`` option names the path: for comparisons)."""

    name: str
    kernel: Backend
    doctor: str
    pinned: bool = False
    family: Family = "fused"
    through_interface: bool = True

    def applies(self, situation: Situation) -> str | None:
        device = situation.device.type
        if self.kernel == "flex":
            return None  # compiled on CUDA; elsewhere its reference implementation, which materialises the logits
        if device != "cpu":
            return f"a CPU kernel, and the inputs are on {device}"
        if self.kernel == "native" and not native.supports(situation.head_dim, situation.head_dim):
            error = native.build_error()
            return f"the native kernel is not used ({error})" if error else "the native kernel lacks this head size"
        return None

    def cost(self, situation: Situation) -> float:
        if self.kernel == "flex":
            return 1.0 if situation.device.type == "cuda" else 10.0
        if self.kernel == "native":
            return 1.1  # one pass that keeps every statistic: a little dearer than the flash kernel's
        return 1.0 + extra_passes(situation.request)

    @contextmanager
    def installed(self, model: Any, arch: ModelMap, scorer: Scorer) -> Iterator[Installed]:
        fallback = _blockwise_capture(arch, scorer)
        request = scorer.request
        capture = fused.FusedCapture(
            scorer.score_normaliser,
            scorer.targets_for,
            fallback.layer_of,
            fallback.wants_entropy,
            "focus" in request.roles or request.attention_stats,
            scorer.pattern_heads,
            fallback,
            kernel_for=_pinned(self.kernel) if self.pinned else _per_device(request, arch.head_dim),
            tuning=scorer.tuning,
        )
        with fused.capturing(model, capture) as switched:
            every = set(range(len(arch.attention)))
            yield Installed(switched, lambda: capture.layers_seen | fallback.layers_seen == every)


@dataclass(frozen=True)
class EagerPath:
    """Eager attention, with a forward hook on each attention module that scores the weights it
    returns, a row block at a time, and drops them: for models whose attention bypasses the
    ``AttentionInterface`` (GPT-Neo, Bloom, Falcon)."""

    name: str = "eager"
    family: Family = "eager"
    through_interface: bool = False
    doctor: str = "eager attention, each layer's weights hooked, scored and dropped (models outside the interface)"

    def applies(self, situation: Situation) -> str | None:
        return None

    def cost(self, situation: Situation) -> float:
        return 3.0  # the full weights, in the model's dtype, returned through the module

    @contextmanager
    def installed(self, model: Any, arch: ModelMap, scorer: Scorer) -> Iterator[Installed]:
        with ExitStack() as stack:
            stack.enter_context(blockwise.attention_implementation(model, "eager"))
            for layer, module in enumerate(arch.attention):
                handle = module.register_forward_hook(_eager_hook(model, arch, scorer, layer))
                stack.callback(handle.remove)
            yield Installed(True)


# Cheapest first where costs tie; the choice itself goes by :meth:`AttentionPath.cost`.
PATHS: tuple[AttentionPath, ...] = (
    SdpaPath(),
    FusedPath(
        "fused-flex", "flex", "FlexAttention (compiled on CUDA): output, log-sum-exp and row maximum in one pass"
    ),
    FusedPath(
        "fused-flash",
        "aten",
        "PyTorch's CPU flash kernel: log-sum-exp at SDPA's cost, one more pass each for breadth and the row maximum",
    ),
    FusedPath("fused-native", "native", "the native CPU kernel: log-sum-exp, entropy and row maximum in one pass"),
    BlockwisePath(),
    EagerPath(),
)


def choose(situation: Situation, attention: Choice = "auto") -> list[AttentionPath]:
    """The paths to try for ``situation``, in order. With ``attention="auto"``, the cheapest that
    applies, then, where that one runs through transformers' ``AttentionInterface``, the cheapest
    that does not (for a model that turns out to route some layer around the interface, where no
    path through it can go). Otherwise the one ``attention`` names, a family (``fused``: its
    cheapest kernel that applies) or a path, alone. A request that needs no attention takes SDPA
    whatever is asked: there is no attention to compute another way.

    Whether a path applies is asked in order of cost, and only until the choice is made (so the
    native kernel is not built for a request the flash kernel serves as cheaply)."""
    if attention not in CHOICES:
        raise CaptureError(f"unknown attention path {attention!r}: use one of {', '.join(CHOICES)}")
    if situation.request.needs_attention:
        candidates = [path for path in PATHS if attention in ("auto", path.family, path.name)]
    else:
        candidates = [path for path in PATHS if path.family == "sdpa"]
    chosen: list[AttentionPath] = []
    refused: list[str] = []
    for path in sorted(candidates, key=lambda path: path.cost(situation)):  # stable: table order breaks ties
        if chosen:  # only a fallback for a first choice through the interface is still wanted
            wanted = attention == "auto" and len(chosen) == 1 and chosen[0].through_interface
            if not wanted or path.through_interface:
                continue  # never tried
        reason = path.applies(situation)
        if reason is None:
            chosen.append(path)
        else:
            refused.append(f"{path.name}: {reason}")
    if not chosen:
        raise CaptureError(f"attention path {attention!r} cannot run here: {'; '.join(refused)}")
    first = chosen[0]
    if isinstance(first, FusedPath) and attention == first.name:
        return [replace(first, pinned=True)]
    return chosen


def kernel_for(device: torch.device, request: CaptureRequest, head_dim: int) -> Backend:
    """The fused kernel for a layer on ``device``: the cheapest fused path that applies there."""
    situation = Situation(request, device, head_dim)
    fused_paths = [p for p in PATHS if isinstance(p, FusedPath) and p.applies(situation) is None]
    return min(fused_paths, key=lambda path: path.cost(situation)).kernel


def doctor_lines(requests: Sequence[tuple[str, CaptureRequest]], devices: Sequence[str], head_dim: int) -> list[str]:
    """The table, and the path each of ``requests`` (described, request) takes on each device, for
    heads of ``head_dim``."""
    found = ["attention paths (capture takes the cheapest that applies; a later one where a model cannot take it):"]
    found += [f"  {path.name:<13} {path.doctor}" for path in PATHS]
    for device in devices:
        chosen = [
            f"{choose(Situation(request, torch.device(device), head_dim))[0].name} for {what}"
            for what, request in requests
        ]
        found.append(f"{device} attention path: " + ", ".join(chosen))
    return found


# ---- helpers ----


def _blockwise_capture(arch: ModelMap, scorer: Scorer) -> blockwise.BlockwiseCapture:
    layer_of = {id(module): layer for layer, module in enumerate(arch.attention)}
    return blockwise.BlockwiseCapture(scorer.score_rows, layer_of, "breadth" in scorer.request.roles, scorer.tuning)


def _pinned(kernel: Backend) -> Callable[[torch.device], Backend]:
    return lambda device: kernel


def _per_device(request: CaptureRequest, head_dim: int) -> Callable[[torch.device], Backend]:
    chosen: dict[torch.device, Backend] = {}

    def pick(device: torch.device) -> Backend:
        if device not in chosen:
            chosen[device] = kernel_for(device, request, head_dim)
        return chosen[device]

    return pick


def _eager_hook(model: Any, arch: ModelMap, scorer: Scorer, layer: int) -> Any:
    window = arch.windows[layer]
    tuning = scorer.tuning

    def hook(module: Any, args: Any, output: Any) -> Any:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
            raise CaptureError(
                f"{type(model).__name__}: layer {layer} attention ({type(module).__name__}) returned "
                "no attention weights; this architecture cannot report attention in eager mode"
            )
        batch, heads, n_rows, n_keys = weights.shape
        # in row blocks, so that checking and scoring add only a block's worth of temporaries
        height = max(tuning.min_block_rows, tuning.block_bytes // 4 // (batch * heads * n_keys))
        for start in range(0, n_rows, height):
            stop = min(n_rows, start + height)
            block = weights[:, :, start:stop]  # every key, so weight on any hidden key is caught
            problems = check_block(block, start, window, scorer.tolerance)
            if problems:
                raise CaptureError(f"invalid attention captured at layer {layer}: " + "; ".join(problems))
            scorer.score_rows(layer, block, start, window)
        return (output[0], None, *output[2:])  # drop the weights now

    return hook
