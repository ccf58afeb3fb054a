"""Time and peak memory of the weight scores, against the model's own weight bytes.

    python benchmarks/weights.py            # SmolLM2-135M (the real weights)
    python benchmarks/weights.py --big      # and a Llama-3.2-1B-shaped model built from its config (random)

Per model, each in a fresh process: loading; ``circuits`` (every head's reading and writing
weights, norm folded, float64); all-pairs K-composition raw scores (every sender before every
receiver, factored: d_head x d_head products only, one batch per receiver layer); one receiver's K-composition z-scores
against all earlier senders with 50 rotations; every head's OV copying score. Peak memory is the
process's peak resident set after each step minus after loading, as a multiple of the weights'
bytes (float32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(name: str) -> dict[str, Any]:
    import torch

    from interp_assert.measure import weights
    from interp_assert.measure.models import LoadedModel, LoadOptions, load_model

    torch.manual_seed(0)
    if name == "smollm2":
        loaded = load_model("smollm2-135m-instruct", LoadOptions())
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        )  # fmt: skip
        model = LlamaForCausalLM(config).eval().requires_grad_(False)
        loaded = LoadedModel("llama-1b-shaped", "random", model, None, LoadOptions())
    model = loaded.model
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    base = peak_bytes()
    found: dict[str, Any] = {"model": name, "weights_mb": weight_bytes / 2**20}

    def step(label: str, work: Any) -> Any:
        start = time.perf_counter()
        result = work()
        found[label] = (time.perf_counter() - start, (peak_bytes() - base) / weight_bytes)
        return result

    parts, c = step("circuits", lambda: weights.for_model(model))
    heads = [(layer, h) for layer in range(parts.n_layers) for h in range(parts.n_heads)]

    def all_pairs() -> int:
        weights.all_pairs(c, "K")
        return sum(h[0] * parts.n_heads for h in heads)

    found["pairs"] = step("all_pairs_raw", all_pairs)
    last = heads[-1]
    step("one_receiver_z50", lambda: weights.into_receiver(
        c, "K", [s for s in heads if s[0] < last[0]], last, weights.rotations(parts.d_model, 50, 0)))  # fmt: skip
    step("copying_all_heads", lambda: weights.copying_scores(parts, c))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print("weight scores: seconds and peak memory (RSS beyond the loaded model) / weight bytes (float32)")
    print(f"{'model':<16} {'weights':>9} | {'circuits':>15} | {'all pairs raw':>22} | {'1 receiver z (50)':>17} | "
          f"{'copying, all':>15}")  # fmt: skip
    for name in ["smollm2", *(["llama-1b-shaped"] if args.big else [])]:
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])

        def cell(key: str, r: dict[str, Any] = r) -> str:
            seconds, memory = r[key]
            return f"{seconds:6.2f} s {memory:5.2f}x"

        row = [f"{r['model']:<16} {r['weights_mb']:7.0f}MB", f"{cell('circuits'):>15}",
               f"{r['pairs']:>6} {cell('all_pairs_raw'):>15}", f"{cell('one_receiver_z50'):>17}",
               f"{cell('copying_all_heads'):>15}"]  # fmt: skip
        print(" | ".join(row))


if __name__ == "__main__":
    main()
