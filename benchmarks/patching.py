"""An all-heads patching sweep against a plain forward of the same batch, measured in one run.

    python benchmarks/patching.py                 # SmolLM2, every head (270), the shipped pairs
    python benchmarks/patching.py --heads 27      # a spread sample of heads (a quick run)

For each batch of the shipped pair set (``model_specs/smollm2-ioi.yaml``, prompt set ``names``):
the plain forward (corrupt prompts, last-position logit difference, no hooks) timed three times
(the fastest kept), then the ``denoise`` ``total`` single-head sweep as the spec runs it (several
patched variants stacked along the batch dimension, ``CHUNK_TOKENS`` tokens per forward). Printed:
seconds per patched variant / seconds of the plain forward (target <= 1.2), and the peak resident
set above the level before each (sampled every 2 ms) for the plain forward and for the sweep.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from interp_assert.measure.capture.prompts import build_batches
from interp_assert.measure.counterfactual import patching
from interp_assert.measure.counterfactual.pair_request import PairRequest
from interp_assert.measure.loading.architecture import model_map
from interp_assert.measure.loading.models import LoadOptions, load_model
from interp_assert.measure.pair_requests import Component
from interp_assert.measure.prompt_sets import PromptSet

SPEC = Path(__file__).resolve().parent.parent / "model_specs" / "smollm2-ioi.yaml"


class PeakRss:
    """The peak resident set (bytes) above the level at entry, sampled every 2 ms."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        self.running = False
        self.thread.join()

    @property
    def above(self) -> float:
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--heads", type=int, default=0, help="a spread sample of this many heads (0: every head)")
    parser.add_argument("--chunk-tokens", type=int, default=patching.CHUNK_TOKENS)
    args = parser.parse_args()
    patching.CHUNK_TOKENS = args.chunk_tokens
    prompt_set = PromptSet.model_validate(yaml.safe_load(SPEC.read_text())["prompts"]["names"])
    loaded = load_model(args.model, LoadOptions(dtype="float32"))
    parts = model_map(loaded.model)
    batches = build_batches(prompt_set, loaded.tokenizer, vocab_size=int(loaded.config.vocab_size), max_positions=None)
    heads = patching.head_list(parts)
    if args.heads:
        heads = [heads[int(i)] for i in np.linspace(0, len(heads) - 1, args.heads).round()]
    sets = [[Component("head", layer, head)] for layer, head in heads]
    request = PairRequest(direction="denoise")
    runs, _ = patching.base_runs(loaded, batches)
    print(f"{args.model}: {len(heads)} heads, {len(batches)} batches, chunk {patching.CHUNK_TOKENS} tokens")
    ratios, plain_memory, sweep_memory = [], [], []
    for r in runs:
        assert r.batch.pairs is not None
        tokens = r.batch.pairs.corrupt
        patching.forward_diffs(loaded, parts, tokens, r.batch)  # warm-up
        plain = []
        for _ in range(3):
            with PeakRss() as memory:
                start = time.perf_counter()
                patching.forward_diffs(loaded, parts, tokens, r.batch)
                plain.append(time.perf_counter() - start)
            plain_memory.append(memory.above)
        with PeakRss() as memory:
            start = time.perf_counter()
            patching._patched(loaded, parts, r, sets, request)
            sweep = time.perf_counter() - start
        sweep_memory.append(memory.above)
        ratio = sweep / len(sets) / min(plain)
        ratios.append(ratio)
        print(
            f"batch {tuple(tokens.shape)}: plain forward {min(plain) * 1e3:.1f} ms; sweep {sweep:.2f} s for "
            f"{len(sets)} variants = {sweep / len(sets) * 1e3:.1f} ms each; ratio {ratio:.3f}; peak memory above "
            f"start: plain {max(plain_memory[-3:]):.1f} MiB, sweep {memory.above:.1f} MiB"
        )
    print(
        f"time per patched variant / plain forward: median {np.median(ratios):.3f} (target <= 1.2); "
        f"peak memory: sweep {max(sweep_memory):.1f} MiB vs plain forward {max(plain_memory):.1f} MiB"
    )


if __name__ == "__main__":
    main()
