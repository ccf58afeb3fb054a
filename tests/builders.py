"""Small real transformers models built from configs, saved to disk like any checkpoint.

``zero_queries`` zeroes every query projection, so every head attends
uniformly over the keys it can see: a model whose scores are known exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

VOCAB = 64


def word_tokenizer(directory: Path) -> Any:
    """A whitespace word-level tokenizer: <bos>=0, <eos>=1, <pad>=2, <unk>=3, then t4..t63."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<unk>": 3} | {f"t{i}": i for i in range(4, VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


# The shape of the small grouped-query decoders (Llama, Qwen2, Mistral, Gemma2) in ``tiny_config``.
SMALL_DECODER: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def llama_config(**overrides: Any) -> Any:
    return tiny_config("llama", **overrides)


def save_model(config: Any, directory: Path, *, zero_queries: bool = False, seed: int = 0) -> Path:
    """Build a causal LM from ``config`` with seeded random weights and save it with a tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if zero_queries:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if _is_query(name):
                    parameter.zero_()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    word_tokenizer(directory)
    return directory


def _is_query(name: str) -> bool:
    """Query projections (weights and biases). Fused projections (GPT-2's c_attn, GPT-NeoX's
    query_key_value) are zeroed whole: every key is then the same vector, which is uniform too."""
    return any(part in name for part in ("q_proj", "c_attn", "query_key_value"))


def uniform_first_token_score(n_tokens: int) -> float:
    """first_token (= previous_token = self) score of a uniform causal head on one sequence of n_tokens."""
    rows = range(1, n_tokens)
    return sum(1.0 / (i + 1) for i in rows) / len(rows)


def perturbed_copy(
    source: Path, target: Path, *, zero_query_head: tuple[int, int] | None = None, noise: float = 0.0, seed: int = 0
) -> Path:
    """Copy a Llama-family checkpoint, zeroing one query head's weights and/or adding relative noise."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    if noise:
        for name, tensor in weights.items():
            weights[name] = tensor + noise * tensor.abs() * torch.randn(tensor.shape, generator=generator)
    if zero_query_head is not None:
        layer, head = zero_query_head
        config = json.loads((source / "config.json").read_text())
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        weights[f"model.layers.{layer}.self_attn.q_proj.weight"][head * head_dim : (head + 1) * head_dim] = 0
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def tiny_config(architecture: str, **overrides: Any) -> Any:
    """A 2-layer, 64-wide config of each architecture the capture tests cover (vocab 64)."""
    import transformers

    common: dict[str, Any] = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    configs: dict[str, tuple[str, dict[str, Any]]] = {
        "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
        "gpt_neo": (
            "GPTNeoConfig",
            dict(
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                max_position_embeddings=128,
                attention_types=[[["global", "local"], 1]],
                window_size=8,
            ),
        ),
        "gpt_neox": (
            "GPTNeoXConfig",
            dict(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=128,
            ),
        ),
        "llama": ("LlamaConfig", SMALL_DECODER),
        "qwen2": (
            "Qwen2Config",
            SMALL_DECODER
            | dict(
                use_sliding_window=True,
                sliding_window=8,
                max_window_layers=1,
                layer_types=["full_attention", "sliding_attention"],
            ),
        ),
        "gemma": (
            "GemmaConfig",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=16,
                max_position_embeddings=128,
            ),
        ),
        "mistral": (
            "MistralConfig",
            SMALL_DECODER | dict(sliding_window=8),
        ),
        "gemma2": (  # soft-capped logits, a scaling other than 1/sqrt(head_dim), sliding and full layers in turn
            "Gemma2Config",
            SMALL_DECODER | dict(head_dim=16, sliding_window=8, attn_logit_softcapping=5.0, query_pre_attn_scalar=24),
        ),
        "phi": (
            "PhiConfig",
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=128,
            ),
        ),
    }
    class_name, settings = configs[architecture]
    return getattr(transformers, class_name)(**(common | settings | overrides))


ARCHITECTURES = ("gpt2", "gpt_neo", "gpt_neox", "llama", "qwen2", "mistral", "gemma", "phi")


def hub_cache(hf_home: Path, repo_id: str, revisions: dict[str, Path], *, link: bool = False) -> dict[str, str]:
    """Lay model folders out as the Hugging Face hub cache does, under ``hf_home/hub``:
    ``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` (relative symlinks to the
    blobs) and ``refs/<branch>`` holding the commit sha. ``revisions``: branch name -> folder.
    ``link``: blobs are symlinks to the folders' files (no copy of big weights). Returns branch -> commit."""
    import hashlib
    import os
    import shutil

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    commits = {}
    for branch, folder in revisions.items():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        digests = {}
        for file in files:
            digest = hashlib.sha256()
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            digests[file.name] = digest.hexdigest()
            blob = repo / "blobs" / digests[file.name]
            if not blob.exists():
                os.symlink(file.resolve(), blob) if link else shutil.copyfile(file, blob)
        commit = hashlib.sha1(json_text(sorted(digests.items())).encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, blob in digests.items():
            target = snapshot / name
            if not target.exists():
                os.symlink(os.path.join("..", "..", "blobs", blob), target)
        ref = repo / "refs" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        commits[branch] = commit
    return commits


def json_text(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer, 4-head (2 KV heads) Llama written as a float32 .gguf file with a SentencePiece-style
    vocabulary of letters, as llama.cpp writes one: transformers reads it in about a second."""
    import gguf
    import numpy as np

    layers, width, heads, kv_heads, inner, vocab = 2, 32, 4, 2, 64, 64
    head_size = width // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(512)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(inner)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_size)
    writer.add_vocab_size(vocab)
    letters = [chr(c) for c in [*range(ord("a"), ord("z") + 1), *range(ord("A"), ord("Z") + 1)]]
    tokens = ["<unk>", "<s>", "</s>", "\u2581", *letters]
    tokens += [f"\u2581{i}" for i in range(vocab - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [-float(i) for i in range(vocab - 3)])
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    tensor("token_embd.weight", vocab, width)
    tensor("output_norm.weight", width)
    tensor("output.weight", vocab, width)
    for i in range(layers):
        for name, shape in (
            ("attn_norm", (width,)),
            ("attn_q", (width, width)),
            ("attn_k", (kv_heads * head_size, width)),
            ("attn_v", (kv_heads * head_size, width)),
            ("attn_output", (width, width)),
            ("ffn_norm", (width,)),
            ("ffn_gate", (inner, width)),
            ("ffn_up", (inner, width)),
            ("ffn_down", (width, inner)),
        ):
            tensor(f"blk.{i}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
