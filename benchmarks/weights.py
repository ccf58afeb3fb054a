"""All-pairs K-composition (every sender before every receiver) and every head's copying score,
read from the weights: time and peak memory against the model's weight bytes.

    python benchmarks/weights.py                 # SmolLM2-135M (the shared cache)
    python benchmarks/weights.py --one-b         # a 1B-shape Llama built from a config (random init)

Peak memory is the process's maximum resident set size (ru_maxrss), before and after scoring;
the model is loaded whole (streaming shards layer by layer is not implemented yet).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_b(layers: int) -> Any:
    import transformers

    config = transformers.LlamaConfig(  # Llama-3.2-1B's shape
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def main() -> None:
    from interp_assert.measure.weights import circuits as weights

    parser = argparse.ArgumentParser()
    parser.add_argument("--one-b", action="store_true")
    parser.add_argument("--layers", type=int, default=16, help="layers of the 1B-shape model")
    parser.add_argument("--draws", type=int, default=500)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    if args.one_b:
        model, name = _one_b(args.layers), f"1B-shape Llama ({args.layers} layers, random init)"
    else:
        from interp_assert.measure.loading.models import LoadOptions, load_model

        model, name = load_model("smollm2-135m-instruct", LoadOptions()).model, "SmolLM2-135M"
    loaded_s = time.perf_counter() - start
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = _rss_mib()
    mm = weights.model_map(model)
    heads = weights.all_heads(mm)
    start = time.perf_counter()
    table = weights.pair_table(model, "K", heads, heads, args.draws, 0)
    pairs_s = time.perf_counter() - start
    start = time.perf_counter()
    copying = weights.copying_scores(model)
    copying_s = time.perf_counter() - start
    after = _rss_mib()
    top = max(table.items(), key=lambda kv: kv[1][1])
    print(f"{name}: {mm.n_layers} layers x {mm.n_heads} heads ({mm.n_kv_heads} kv), d_model {mm.d_model}")
    print(f"  weights {weight_bytes / 2**20:.0f} MiB; loaded in {loaded_s:.1f} s; {torch.get_num_threads()} threads")
    print(f"  all-pairs K-composition: {len(table)} pairs, {args.draws} null draws, {pairs_s:.1f} s")
    print(f"  copying scores: {len(copying)} heads, {copying_s:.1f} s")
    print(f"  peak RSS {before:.0f} MiB after loading, {after:.0f} MiB after scoring")
    (s, r), (score, z) = top
    print(f"  strongest pair by z: L{s[0]}H{s[1]} -> L{r[0]}H{r[1]} raw {score:.3f} z {z:.1f}")


if __name__ == "__main__":
    main()
