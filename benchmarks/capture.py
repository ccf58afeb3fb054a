"""Time and peak memory of capture against a plain forward pass and the naive eager capture.

    python benchmarks/capture.py            # T = 128 (batch 8), 1024, 4096; about 5-8 minutes on 2 cores
    python benchmarks/capture.py --quick    # T = 128 and 1024 only

Three ways to run each configuration, each in a fresh subprocess (so peak memory is its own):

- ``plain``: the fastest forward pass with no outputs (SDPA where the model has it; GPT-Neo has
  only eager attention), without the LM head.
- ``naive``: the seed notebooks' way: eager forward with ``output_attentions`` and
  ``output_hidden_states``, every layer kept, then scored (``scores.pattern_scores``) and normed.
- ``ours``: ``capture.measure`` with every role, attention statistics and hidden norms.

Peak memory is the process's peak resident set during the run minus its resident set just
before it (after the model is loaded and warmed up, and freed heap memory is returned with
``malloc_trim``): the peak is reset through ``/proc/self/clear_refs``, or sampled every 2 ms
where that is not allowed. Models: SmolLM2
(the real weights) and a GPT-Neo-125M-shaped model (12 layers x 12 heads, 768 wide, random weights).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAIVE_LIMIT_GB = 16.0  # do not try the naive capture where its kept attention alone needs more
SHAPES = {"smollm2": (30, 9), "gpt-neo-125m": (12, 12)}  # layers, heads (for the naive estimate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only T = 128 (batch 8) and 1024")
    parser.add_argument("--models", default="smollm2,gpt-neo-125m")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "METHOD", "TOKENS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, method, tokens, batch = args.child
        print(json.dumps(run_one(model, method, int(tokens), int(batch))))
        return
    configs = [(128, 8), (1024, 1)] + ([] if args.quick else [(4096, 1)])
    print(f"capture benchmark: {os.cpu_count()} CPU cores, torch threads default; time in s, memory in MB")
    print(f"{'model':<13} {'T x B':>8} | {'plain s':>8} {'naive s':>8} {'ours s':>8} | "
          f"{'plain MB':>8} {'naive MB':>8} {'ours MB':>8} | {'ours/plain t':>12} {'mem':>5} | "
          f"{'naive/ours t':>12} {'mem':>5}")  # fmt: skip
    for model in args.models.split(","):
        for tokens, batch in configs:
            results: dict[str, dict[str, Any] | None] = {}
            layers, heads = SHAPES[model]
            naive_gb = layers * batch * heads * tokens * tokens * 4 / 1e9
            # the kept attention, a quarter more for the forward's own temporaries, within 80% of free memory
            naive_fits = naive_gb <= NAIVE_LIMIT_GB and naive_gb * 1.25 <= 0.8 * _available_gb()
            for method in ("plain", "naive", "ours"):
                if method == "naive" and not naive_fits:
                    results[method] = None
                    continue
                results[method] = child(model, method, tokens, batch)
            print(row(model, tokens, batch, results))
            if results["naive"] is None:
                need = "> 10 GB" if naive_gb > 10 else "more than is free"
                print(f"{'':<13} naive needs {need} (about {naive_gb:.1f} GB of kept attention alone): not run")
            sys.stdout.flush()


def child(model: str, method: str, tokens: int, batch: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", model, method, str(tokens), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model} {method} T={tokens} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(model: str, tokens: int, batch: int, results: dict[str, dict[str, Any] | None]) -> str:
    def cell(method: str, key: str, fmt: str) -> str:
        result = results[method]
        return format(result[key], fmt) if result else f"{'-':>8}"

    def ratio(top: str, bottom: str, key: str) -> str:
        a, b = results[top], results[bottom]
        return f"{a[key] / b[key]:.2f}" if a and b and b[key] > 0 else "-"

    return (
        f"{model:<13} {f'{tokens}x{batch}':>8} | {cell('plain', 'seconds', '8.2f')} {cell('naive', 'seconds', '8.2f')} "
        f"{cell('ours', 'seconds', '8.2f')} | {cell('plain', 'peak_mb', '8.0f')} {cell('naive', 'peak_mb', '8.0f')} "
        f"{cell('ours', 'peak_mb', '8.0f')} | {ratio('ours', 'plain', 'seconds'):>12} "
        f"{ratio('ours', 'plain', 'peak_mb'):>5} | {ratio('naive', 'ours', 'seconds'):>12} "
        f"{ratio('naive', 'ours', 'peak_mb'):>5}"
    )


# ---- one measurement, in its own process ----


def run_one(model_name: str, method: str, tokens: int, batch: int) -> dict[str, Any]:
    import torch

    loaded = load(model_name)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, int(loaded.config.vocab_size), (batch, tokens), generator=generator)
    runner = {"plain": plain, "naive": naive, "ours": ours}[method]
    runner(loaded, ids[:, :16])  # warm up: threads, allocator, lazy imports
    repeats = 3 if tokens * batch <= 1024 else 1
    seconds, peak = [], []
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            runner(loaded, ids)
            seconds.append(time.perf_counter() - start)
        peak.append(memory.peak_mb)
    # fastest time (least disturbed by other processes); memory of the first run (later runs reuse
    # what the allocator kept from it, so their resident set hardly grows)
    return {"seconds": min(seconds), "peak_mb": peak[0]}


def load(model_name: str) -> Any:
    import torch

    from interp_assert.models import LoadedModel, LoadOptions, load_model

    if model_name == "smollm2":
        return load_model("smollm2-135m-instruct", LoadOptions())
    from transformers import AutoModelForCausalLM, GPTNeoConfig

    torch.manual_seed(0)
    config = GPTNeoConfig(  # GPT-Neo-125M's shape (the config's own defaults are the 1.3B model's)
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        attention_types=[[["global", "local"], 6]],
        window_size=256,
        max_position_embeddings=4096,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval().requires_grad_(False)
    return LoadedModel("gpt-neo-125m-shaped", "random", model, None, LoadOptions())


def plain(loaded: Any, ids: Any) -> None:
    import torch

    from interp_assert import blockwise, capture

    with torch.inference_mode(), blockwise.attention_implementation(loaded.model, "sdpa"):
        capture._base_model(loaded.model)(input_ids=ids, use_cache=False)


def naive(loaded: Any, ids: Any) -> None:
    import torch

    from interp_assert import capture, scores
    from interp_assert.vocab import ROLES

    windows = capture.describe(loaded).windows
    with torch.inference_mode():
        out = capture._base_model(loaded.model)(
            input_ids=ids, use_cache=False, output_attentions=True, output_hidden_states=True
        )
        for layer, pattern in enumerate(out.attentions):
            scores.pattern_scores(pattern, ids, ROLES, windows[layer])
            pattern.amax((0, 2, 3))  # attention statistics
        [hidden.norm(dim=-1).mean() for hidden in out.hidden_states]


def ours(loaded: Any, ids: Any) -> None:
    from interp_assert import capture
    from interp_assert.prompts import PromptBatch
    from interp_assert.vocab import ROLES

    request = capture.CaptureRequest(roles=frozenset(ROLES), attention_stats=True, hidden_norms=True)
    capture.measure(loaded, [PromptBatch(ids)], request)


class PeakMemory:
    """Peak resident memory of this process inside the ``with`` block, over the resident memory at its start."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        _release_free_heap()
        self._start = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, _status_kb("VmRSS"))
        self.peak_mb = max(0, peak - self._start) / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._sampled = max(self._sampled, _status_kb("VmRSS"))


def _release_free_heap() -> None:
    """Hand memory the allocator keeps after frees back to the system, so that the resident set is
    live memory only: otherwise a run that reuses what loading freed would seem to need nothing."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure without it
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _available_gb() -> float:
    match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1e6 if match else 0.0


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


if __name__ == "__main__":
    main()
