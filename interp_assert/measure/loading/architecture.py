"""Where each model family keeps its blocks, heads, norms and unembedding: one table, one map.

Every module that needs to find a part of a loaded model (capture, ablation, the logit lens,
patching, weight scores) asks :func:`model_map`, never the model's attribute names. A family's
spellings are one :class:`Family` row in :data:`FAMILIES`, keyed by the config's
``model_type``, as nnterp's ``families/`` does. A model whose ``model_type`` is not in the
table is matched against the known layouts in turn; whatever no layout resolves is listed in
:attr:`ModelMap.problems` (said once at load, raised by name where it is needed) rather than
guessed. A new family is one :func:`register_family` call (from a conftest, or a package's
``interp_assert.families`` entry point naming a ``{model_type: Family}`` mapping).

Head conventions, for every family: a head's output is its slice of the input of the
attention output projection (head h at features ``h*d_head .. (h+1)*d_head``); grouped-query
models have ``n_heads`` query heads reading ``n_kv_heads`` key/value groups (query head h reads
group ``h // (n_heads // n_kv_heads)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal

import torch

from interp_assert.errors import CaptureError, InterpAssertError

NormKind = Literal["rms", "layer"]
FusedLayout = Literal["blocks", "per_head"]  # [q | k | v] (GPT-2) or [h0 q k v | h1 q k v ...] (GPT-NeoX)
ENTRY_POINT_GROUP = "interp_assert.families"


def _config_windows(config: Any, n_layers: int) -> list[int | None]:
    """Each layer's local-attention window (keys with query - key < window are visible), or None."""
    layer_types = getattr(config, "layer_types", None)
    sliding = getattr(config, "sliding_window", None)
    if layer_types is not None:
        return [sliding if kind == "sliding_attention" and sliding else None for kind in layer_types]
    # No per-layer types (Mistral, Mixtral, Phi-3, Starcoder2): a configured window applies to every layer.
    return [sliding if sliding else None] * n_layers


def _gpt_neo_windows(config: Any, n_layers: int) -> list[int | None]:
    return [config.window_size if kind == "local" else None for kind in config.attention_layers]


@dataclass(frozen=True, kw_only=True)
class Family:
    """One family's spellings: attribute paths from the base model (``blocks``, ``final_norm``),
    from a block (``attention``, ``attention_norm``) and from the attention module (the
    projections). ``None`` means the family has no such part."""

    blocks: str = "layers"
    attention: str = "self_attn"
    query: str | None = "q_proj"
    key: str | None = "k_proj"
    value: str | None = "v_proj"
    fused_qkv: str | None = None  # one projection for q, k and v
    fused_layout: FusedLayout = "blocks"
    output: str = "o_proj"
    attention_norm: str = "input_layernorm"  # reads the residual stream for attention
    final_norm: str = "norm"
    norm_kind: NormKind = "rms"
    gain_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    attention_output_norm: str | None = None  # Gemma 2: each attention output is normed before the residual
    mlp: str = "mlp"  # from a block: the MLP, whose output is added to the residual stream
    conv1d: bool = False  # GPT-2's Conv1D keeps weights as [in, out], not Linear's [out, in]
    scaled: bool = True  # False: no 1/sqrt(d_head) on the logits (GPT-Neo)
    windows: Callable[[Any, int], list[int | None]] = _config_windows


LLAMA = Family()
FAMILIES: dict[str, Family] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "mixtral": LLAMA,
    "qwen2": LLAMA,
    "gemma": Family(gain_offset=1.0),
    "gemma2": Family(gain_offset=1.0, attention_output_norm="post_attention_layernorm"),
    "phi": Family(output="dense", final_norm="final_layernorm", norm_kind="layer"),
    "gpt2": Family(
        blocks="h",
        attention="attn",
        query=None,
        key=None,
        value=None,
        fused_qkv="c_attn",
        output="c_proj",
        attention_norm="ln_1",
        final_norm="ln_f",
        norm_kind="layer",
        conv1d=True,
    ),
    "gpt_neo": Family(
        blocks="h",
        attention="attn.attention",
        output="out_proj",
        attention_norm="ln_1",
        final_norm="ln_f",
        norm_kind="layer",
        scaled=False,
        windows=_gpt_neo_windows,
    ),
    "gpt_neox": Family(
        attention="attention",
        query=None,
        key=None,
        value=None,
        fused_qkv="query_key_value",
        fused_layout="per_head",
        output="dense",
        final_norm="final_layer_norm",
        norm_kind="layer",
    ),
}
_REGISTERED: dict[str, Family] = {}


def register_family(model_type: str, family: Family) -> None:
    """Say where a model family keeps its parts (wins over the built-in table)."""
    _REGISTERED[model_type] = family
    _plugin_families.cache_clear()


@cache
def _plugin_families() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            table = entry.load()
        except Exception as exc:  # a broken plug-in must say which one
            raise InterpAssertError(f"family plug-in {entry.name!r} ({entry.value}) cannot be imported: {exc}") from exc
        if not isinstance(table, Mapping) or not all(isinstance(f, Family) for f in table.values()):
            raise InterpAssertError(f"family plug-in {entry.name!r} must name a {{model_type: Family}} mapping")
        found.update(table)
    return found


def families() -> dict[str, Family]:
    """model_type -> Family: the built-in table, then entry points, then :func:`register_family` calls."""
    return FAMILIES | _plugin_families() | _REGISTERED


@dataclass(frozen=True)
class LayerWeights:
    """One layer's attention weights per head, in float32 on the CPU, in the residual basis.

    ``query[h]`` maps the (normed) residual stream to head h's query: ``[n_heads, d_model,
    d_head]``; ``key`` and ``value`` likewise per key/value group ``[n_kv_heads, d_model,
    d_head]``; ``output[h]`` maps head h's output into the residual stream ``[n_heads, d_head,
    d_model]``. ``gain`` is the attention norm's elementwise gain ``[d_model]`` (offset
    included); ``centred`` says the norm subtracts the mean first (LayerNorm)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    output: torch.Tensor
    gain: torch.Tensor | None
    centred: bool


@dataclass(frozen=True)
class ModelMap:
    """A loaded model's parts, resolved once (see the module docstring)."""

    family: str  # the model_type, or "<model_type> (laid out as <family>)" when matched by layout
    layout: Family
    config: Any
    base: Any  # the model without its LM head
    blocks: list[Any]
    attention: list[Any]
    output_projections: tuple[Any | None, ...]
    final_norm: Any | None
    unembedding: Any | None
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    windows: list[int | None]
    attention_softcap: float | None
    final_softcap: float | None
    problems: tuple[str, ...] = field(default=())
    mlps: tuple[Any | None, ...] = field(default=())  # each block's MLP (None where not found)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def output_projection(self, layer: int) -> Any:
        found = self.output_projections[layer]
        if found is None:
            raise CaptureError(
                f"layer {layer} attention ({type(self.attention[layer]).__name__}) has no output projection "
                f"'{self.layout.output}' ({self.family}): its heads cannot be ablated or patched"
            )
        return found

    def mlp(self, layer: int) -> Any:
        found = self.mlps[layer] if layer < len(self.mlps) else None
        if found is None:
            raise CaptureError(
                f"layer {layer} ({type(self.blocks[layer]).__name__}) has no MLP '{self.layout.mlp}' ({self.family}): "
                "its output cannot be patched"
            )
        return found

    def norm_and_unembedding(self) -> tuple[Any, Any]:
        if self.final_norm is None or self.unembedding is None:
            raise CaptureError(
                f"{self.family}: no final norm '{self.layout.final_norm}' or unembedding found; "
                "register the family's spellings with interp_assert.measure.loading.architecture.register_family"
            )
        return self.final_norm, self.unembedding

    def scale(self, layer: int) -> float:
        """The factor on ``q . k`` before the softmax."""
        if not self.layout.scaled:
            return 1.0
        scaling = getattr(self.attention[layer], "scaling", None)
        return float(scaling) if isinstance(scaling, int | float) else self.head_dim**-0.5

    def layer_weights(self, layer: int) -> LayerWeights:
        """Layer ``layer``'s per-head weights (see :class:`LayerWeights`)."""
        attention = self.attention[layer]
        layout = self.layout
        h, g, d, dm = self.n_heads, self.n_kv_heads, self.head_dim, self.d_model
        if layout.fused_qkv is not None:
            fused = _linear_weight(_module(attention, layout.fused_qkv, self.family), layout.conv1d)  # [3*h*d, dm]
            if layout.fused_layout == "per_head":
                q, k, v = fused.reshape(h, 3, d, dm).unbind(1)
                q, k, v = q.reshape(h * d, dm), k.reshape(h * d, dm), v.reshape(h * d, dm)
            else:
                q, k, v = fused.split([h * d, g * d, g * d])
        else:
            q, k, v = (
                _linear_weight(_module(attention, name, self.family), layout.conv1d)
                for name in (layout.query, layout.key, layout.value)
            )
        output = _linear_weight(self.output_projection(layer), layout.conv1d)  # [dm, h*d]
        norm = _dotted(self.blocks[layer], layout.attention_norm)
        gain = getattr(norm, "weight", None)
        return LayerWeights(
            query=q.reshape(h, d, dm).transpose(1, 2),
            key=k.reshape(g, d, dm).transpose(1, 2),
            value=v.reshape(g, d, dm).transpose(1, 2),
            output=output.reshape(dm, h, d).permute(1, 2, 0),
            gain=None if gain is None else gain.detach().float().cpu() + layout.gain_offset,
            centred=layout.norm_kind == "layer",
        )


def _module(parent: Any, name: str | None, family: str) -> Any:
    found = _dotted(parent, name) if name else None
    if not isinstance(found, torch.nn.Module):
        raise CaptureError(f"{family}: {type(parent).__name__} has no '{name}': its weights cannot be read per head")
    return found


def _linear_weight(module: Any, conv1d: bool) -> torch.Tensor:
    weight: torch.Tensor = module.weight.detach().float().cpu()
    return weight.T if conv1d else weight  # as Linear keeps it: [out, in]


def _dotted(parent: Any, path: str) -> Any:
    for part in path.split("."):
        parent = getattr(parent, part, None)
        if parent is None:
            return None
    return parent


def base_model(model: Any) -> Any:
    """The model without its LM head (a PEFT wrapper's inner model unwrapped first)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(inner, "base_model", None)
    return base if isinstance(base, torch.nn.Module) and base is not inner else inner


def _resolve_layout(base: Any, model_type: str) -> tuple[str, Family] | None:
    table = families()
    if model_type in table:
        return model_type, table[model_type]
    for name, family in table.items():  # an unknown family laid out like a known one
        blocks = _dotted(base, family.blocks)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) and _dotted(blocks[0], family.attention) is not None:
            return f"{model_type} (laid out as {name})", family
    return None


_MAPS: weakref.WeakKeyDictionary[Any, ModelMap] = weakref.WeakKeyDictionary()


def model_map(model: Any) -> ModelMap:
    """Resolve ``model``'s parts (cached per model object)."""
    # keyed by the object (weakly), not stored on it: a deep copy of the model must resolve its own parts
    resolved = _MAPS.get(model)
    if resolved is None:
        resolved = _MAPS[model] = _build(model)
    return resolved


def _build(model: Any) -> ModelMap:
    config = model.config
    model_type = str(getattr(config, "model_type", "?"))
    base = base_model(model)
    found = _resolve_layout(base, model_type)
    if found is None:
        raise CaptureError(
            f"{type(model).__name__} ({model_type}): no known layout of transformer blocks and attention modules; "
            f"known families: {', '.join(sorted(families()))}; register this one with "
            "interp_assert.measure.loading.architecture.register_family"
        )
    family, layout = found
    blocks = _dotted(base, layout.blocks)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or len(blocks))
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != n_layers:
        raise CaptureError(f"{family}: '{layout.blocks}' is not a list of {n_layers} transformer blocks")
    problems: list[str] = []
    attention = []
    for index, block in enumerate(blocks):
        module = _dotted(block, layout.attention)
        if not isinstance(module, torch.nn.Module):
            raise CaptureError(f"{family}: block {index} has no attention module '{layout.attention}'")
        attention.append(module)
    projections = tuple(_dotted(module, layout.output) for module in attention)
    if any(p is None for p in projections):
        problems.append(f"no output projection '{layout.output}': heads cannot be ablated or patched")
    final_norm = _dotted(base, layout.final_norm)
    if final_norm is None:
        problems.append(f"no final norm '{layout.final_norm}': no logit lens or direct effects")
    unembedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    d_model = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or d_model // n_heads)
    return ModelMap(
        family=family,
        layout=layout,
        config=config,
        base=base,
        blocks=list(blocks),
        attention=attention,
        output_projections=projections,
        final_norm=final_norm,
        unembedding=unembedding,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        windows=layout.windows(config, n_layers),
        attention_softcap=getattr(config, "attn_logit_softcapping", None),
        final_softcap=getattr(config, "final_logit_softcapping", None),
        problems=tuple(problems),
        mlps=tuple(_dotted(block, layout.mlp) for block in blocks),
    )
