"""Time and peak memory of capture against a plain forward pass and the naive eager capture.

    python benchmarks/capture.py                 # CPU: T = 128 (batch 8), 1024, 4096; about 15 minutes on 2 cores
    python benchmarks/capture.py --quick         # CPU: T = 128 and 1024 only
    python benchmarks/capture.py --device cuda   # GPU: a Llama-3.2-1B-shaped model, T = 1024, 4096, 16384

Ways to run each configuration:

- ``plain``: the fastest forward pass with no outputs (SDPA where the model has it; GPT-Neo has
  only eager attention), without the LM head.
- ``naive``: the seed notebooks' way: eager forward with ``output_attentions`` and
  ``output_hidden_states``, every layer kept, then scored (``scores.pattern_scores``) and normed.
- ``ours``, per role set: ``capture.measure`` with ``pfs`` = previous_token, first_token, self and
  hidden norms (on CUDA also induction and duplicate_token, the issue's first role set), and
  ``all`` = every role, attention statistics and hidden norms; ``--attention`` picks the path
  (default ``auto``, as ``pytest`` runs it).

CPU: time and memory are measured apart. Time: one process per model and length runs the
methods in turn (plain, pfs, all, plain, ...; naive in a process of its own) for up to five
rounds (fewer where the rounds so far took 100 s), after a warm-up on 16 tokens. The table shows
each method's fastest run, and as ratios the median of each round's ratio: on a shared 2-core
machine the same run varies by 5-10%, in phases longer than a run, so runs of one round are
compared with each other, not the luckiest of one method with the luckiest of another. For
naive, in its own process, the ratio is of the fastest runs. Memory: each method in a fresh
process, one run after the warm-up, with glibc's mmap threshold fixed at 1 MB (so the resident
set follows the live tensors, not what the heap kept): the peak resident set during the run minus
the resident set just before it (after loading and the warm-up, with freed heap memory returned
through ``malloc_trim``). The peak is reset through ``/proc/self/clear_refs``, or sampled every
2 ms where that is not allowed. Models: SmolLM2
(the real weights) and a GPT-Neo-125M-shaped model (12 layers x 12 heads, 768 wide, random weights).

CUDA: one process; a model of Llama-3.2-1B's shape (16 layers, 32 query heads, 8 key/value heads,
2048 wide, bfloat16, random weights) built from its config, no download. Times are the fastest of
three synchronised runs after a warm-up at the same length (which compiles FlexAttention's
kernels); memory is ``torch.cuda.max_memory_allocated`` during the run (weights included).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAIVE_LIMIT_GB = 16.0  # do not try the naive capture where its kept attention alone needs more
SHAPES = {"smollm2": (30, 9), "gpt-neo-125m": (12, 12), "llama-1b-shaped": (16, 32)}  # layers, heads (naive estimate)
ROLE_SETS = ("pfs", "all")
ROUNDS = 5  # CPU: timed runs of each method, taken in turn
ROUND_BUDGET_S = 100.0  # no further round once the rounds so far took this long
METHODS = ("plain", "naive", *(f"ours-{name}" for name in ROLE_SETS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU: only T = 128 (batch 8) and 1024")
    parser.add_argument("--models", default="smollm2,gpt-neo-125m", help="CPU models")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--attention", default="auto", choices=("auto", "fused", "blockwise", "eager"))
    parser.add_argument("--lengths", help="comma-separated sequence lengths (batch 1), instead of the defaults")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)  # KIND MODEL METHODS TOKENS BATCH PATH
    args = parser.parse_args()
    if args.child:
        kind, model, methods, tokens, batch, path = args.child
        if kind == "time":
            print(json.dumps(time_methods(model, methods.split(","), int(tokens), int(batch), path)))
        else:
            print(json.dumps(peak_memory(model, methods, int(tokens), int(batch), path)))
        return
    lengths = [(int(t), 1) for t in args.lengths.split(",")] if args.lengths else None
    if args.device == "cuda":
        cuda_benchmark(lengths or [(1024, 1), (4096, 1), (16384, 1)], args.attention)
        return
    configs = lengths or [(128, 8), (1024, 1)] + ([] if args.quick else [(4096, 1)])
    print(f"capture benchmark: {os.cpu_count()} CPU cores, torch threads default, load average "
          f"{os.getloadavg()[0]:.1f}; path {args.attention}; time in s, memory in MB")  # fmt: skip
    print(header())
    for model in args.models.split(","):
        for tokens, batch in configs:
            results: dict[str, dict[str, Any] | None] = {}
            layers, heads = SHAPES[model]
            naive_gb = layers * batch * heads * tokens * tokens * 4 / 1e9
            # the kept attention, a quarter more for the forward's own temporaries, within 80% of free memory
            naive_fits = naive_gb <= NAIVE_LIMIT_GB and naive_gb * 1.25 <= 0.8 * _available_gb()
            methods = [method for method in METHODS if method != "naive" or naive_fits]
            sizes = (str(tokens), str(batch), args.attention)
            # naive in a process of its own: freeing its gigabytes of kept attention would slow
            # whichever method ran next (fresh pages to fault in), a bias against that method
            times = child("time", model, ",".join(m for m in methods if m != "naive"), *sizes)
            if "naive" in methods:
                times |= child("time", model, "naive", *sizes)
            for method in METHODS:
                results[method] = (
                    {**times[method], **child("memory", model, method, *sizes, fixed_heap=True)}
                    if method in methods
                    else None
                )
            print(row(model, tokens, batch, results))
            if results["naive"] is None:
                need = "> 10 GB" if naive_gb > 10 else "more than is free"
                print(f"{'':<15} naive needs {need} (about {naive_gb:.1f} GB of kept attention alone): not run")
            sys.stdout.flush()


def header(unit: str = "s") -> str:
    times = " ".join(f"{name + ' ' + unit:>7}" for name in ("plain", "naive", "pfs", "all"))
    return (
        f"{'model':<15} {'T x B':>8} | {times} | "
        f"{'plain MB':>8} {'naive MB':>8} {'pfs MB':>8} {'all MB':>8} | {'pfs/plain t':>11} {'mem':>5} | "
        f"{'all/plain t':>11} {'mem':>5} | {'naive/all t':>11} {'mem':>5}"
    )


def child(*arguments: str, fixed_heap: bool = False) -> Any:
    """Run this script with ``--child arguments`` in a fresh process; its last line of output, parsed."""
    # A fixed mmap threshold: glibc serves every allocation above 1 MB with its own mapping and
    # unmaps it when freed, so the resident set follows the live tensors rather than what the
    # heap happened to keep (otherwise the same run's peak varies by 30%). Slower, so memory only.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if fixed_heap else None
    command = [sys.executable, __file__, "--child", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(model: str, tokens: int, batch: int, results: dict[str, dict[str, Any] | None], unit: float = 1.0) -> str:
    def cell(method: str, key: str, fmt: str) -> str:
        result = results.get(method)
        return format(result[key] * (unit if key == "seconds" else 1), fmt) if result else f"{'-':>{fmt[0]}}"

    def ratio(top: str, bottom: str, key: str, width: int) -> str:
        a, b = results.get(top), results.get(bottom)
        text = f"{paired_ratio(a, b, key):.2f}" if a and b and b[key] > 0 else "-"
        return f"{text:>{width}}"

    return (
        f"{model:<15} {f'{tokens}x{batch}':>8} | {cell('plain', 'seconds', '7.2f')} {cell('naive', 'seconds', '7.2f')} "
        f"{cell('ours-pfs', 'seconds', '7.2f')} {cell('ours-all', 'seconds', '7.2f')} | "
        f"{cell('plain', 'peak_mb', '8.0f')} {cell('naive', 'peak_mb', '8.0f')} {cell('ours-pfs', 'peak_mb', '8.0f')} "
        f"{cell('ours-all', 'peak_mb', '8.0f')} | {ratio('ours-pfs', 'plain', 'seconds', 11)} "
        f"{ratio('ours-pfs', 'plain', 'peak_mb', 5)} | {ratio('ours-all', 'plain', 'seconds', 11)} "
        f"{ratio('ours-all', 'plain', 'peak_mb', 5)} | {ratio('naive', 'ours-all', 'seconds', 11)} "
        f"{ratio('naive', 'ours-all', 'peak_mb', 5)}"
    )


def paired_ratio(top: dict[str, Any], bottom: dict[str, Any], key: str) -> float:
    """``top / bottom``; for times run in turn in one process, the median of each round's ratio
    (a round's runs share the machine's state of the moment, which drifts by more than 5%)."""
    if key == "seconds" and len(top.get("each", ())) == len(bottom.get("each", ())) > 1:
        return float(statistics.median(a / b for a, b in zip(top["each"], bottom["each"], strict=True)))
    return float(top[key] / bottom[key])


# ---- the measurements (CPU) ----


def time_methods(model_name: str, methods: list[str], tokens: int, batch: int, path: str) -> dict[str, Any]:
    """method -> {"seconds": the fastest run, "each": every run's}: one process, the methods in turn."""
    loaded = load(model_name)
    ids = token_ids(loaded, tokens, batch)
    found = runners(path)
    for method in methods:
        found[method](loaded, ids[:, :16])  # warm up: threads, allocator, lazy imports, the native kernel
    seconds: dict[str, list[float]] = {method: [] for method in methods}
    spent = 0.0
    while len(seconds[methods[0]]) < ROUNDS and spent < ROUND_BUDGET_S:
        for method in methods:
            start = time.perf_counter()
            found[method](loaded, ids)
            seconds[method].append(time.perf_counter() - start)
            spent += seconds[method][-1]
    return {method: {"seconds": min(times), "each": times} for method, times in seconds.items()}


def peak_memory(model_name: str, method: str, tokens: int, batch: int, path: str) -> dict[str, Any]:
    """{"peak_mb": ...}: one run in this (fresh) process, after a warm-up on 16 tokens."""
    loaded = load(model_name)
    ids = token_ids(loaded, tokens, batch)
    runner = runners(path)[method]
    runner(loaded, ids[:, :16])
    with PeakMemory() as memory:
        runner(loaded, ids)
    return {"peak_mb": memory.peak_mb}


def token_ids(loaded: Any, tokens: int, batch: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(10, int(loaded.config.vocab_size), (batch, tokens), generator=generator)


def load(model_name: str) -> Any:
    import torch

    from interp_assert.measure.loading.models import LoadedModel, LoadOptions, load_model

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


def runners(path: str, cuda: bool = False) -> dict[str, Any]:
    """method -> function(loaded, ids) running it."""
    from interp_assert.measure.capture.run import CaptureRequest
    from interp_assert.vocab import ROLES

    positional = {"previous_token", "first_token", "self"} | ({"induction", "duplicate_token"} if cuda else set())
    requests = {
        "pfs": CaptureRequest(roles=frozenset(positional), hidden_norms=True),  # type: ignore[arg-type]
        "all": CaptureRequest(roles=frozenset(ROLES), attention_stats=True, hidden_norms=True),
    }
    found: dict[str, Any] = {"plain": plain, "naive": naive}
    for name, request in requests.items():
        found[f"ours-{name}"] = lambda loaded, ids, request=request: ours(loaded, ids, request, path)
    return found


def plain(loaded: Any, ids: Any) -> None:
    import torch

    from interp_assert.measure.attention import blockwise
    from interp_assert.measure.loading.architecture import base_model

    with torch.inference_mode(), blockwise.attention_implementation(loaded.model, "sdpa"):
        base_model(loaded.model)(input_ids=ids, use_cache=False)


def naive(loaded: Any, ids: Any) -> None:
    import torch

    from interp_assert.measure.attention import blockwise
    from interp_assert.measure.capture import run as capture
    from interp_assert.measure.capture import scores
    from interp_assert.measure.loading.architecture import base_model
    from interp_assert.vocab import ROLES

    windows = capture.describe(loaded).windows
    with torch.inference_mode(), blockwise.attention_implementation(loaded.model, "eager"):
        out = base_model(loaded.model)(
            input_ids=ids, use_cache=False, output_attentions=True, output_hidden_states=True
        )
        for layer, pattern in enumerate(out.attentions):
            scores.pattern_scores(pattern, ids, ROLES, windows[layer])
            pattern.amax((0, 2, 3))  # attention statistics
        [hidden.norm(dim=-1).mean() for hidden in out.hidden_states]


def ours(loaded: Any, ids: Any, request: Any, path: Any) -> None:
    from interp_assert.measure.capture import run as capture
    from interp_assert.measure.capture.prompts import PromptBatch

    capture.measure(loaded, [PromptBatch(ids)], request, attention=path)


# ---- CUDA: one process, synchronised timings, torch.cuda.max_memory_allocated ----


def cuda_benchmark(configs: list[tuple[int, int]], path: str) -> None:
    import torch

    loaded = llama_1b_shaped()
    free, total = torch.cuda.mem_get_info()
    print(f"capture benchmark on {torch.cuda.get_device_name()} ({total / 2**30:.0f} GiB), torch {torch.__version__}; "
          f"Llama-3.2-1B shape, bfloat16, random weights; path {path}; time in ms, peak memory in MB "
          "(torch.cuda.max_memory_allocated, weights included)")  # fmt: skip
    print("pfs = previous_token, first_token, self, induction, duplicate_token + hidden norms; "
          "all = every role + attention statistics + hidden norms")  # fmt: skip
    print(header("ms"))
    methods = runners(path, cuda=True)
    for tokens, batch in configs:
        ids = torch.randint(10, int(loaded.config.vocab_size), (batch, tokens), device="cuda")
        layers, heads = SHAPES["llama-1b-shaped"]
        naive_gb = layers * batch * heads * tokens * tokens * 2 / 1e9
        results: dict[str, dict[str, Any] | None] = {}
        for method in METHODS:
            if method == "naive" and naive_gb * 1.5 > 0.8 * free / 1e9:
                results[method] = None
                continue
            results[method] = time_cuda(methods[method], loaded, ids)
        print(row("llama-1b-shaped", tokens, batch, results, unit=1000.0))
        if results["naive"] is None:
            print(f"{'':<15} naive would keep about {naive_gb:.1f} GB of attention: not run")
        sys.stdout.flush()


def llama_1b_shaped() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from interp_assert.measure.loading.models import LoadedModel, LoadOptions

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model: Any = LlamaForCausalLM(config)
    model = model.to(dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    model.set_attn_implementation("eager")  # as interp_assert loads models; capture switches as it needs
    return LoadedModel("llama-1b-shaped", "random", model, None, LoadOptions(device="cuda", dtype="bfloat16"))


def time_cuda(runner: Any, loaded: Any, ids: Any, repeats: int = 3) -> dict[str, Any]:
    import torch

    runner(loaded, ids)  # warm up at this length: compiles FlexAttention's kernels, block masks
    torch.cuda.synchronize()
    seconds = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        runner(loaded, ids)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"seconds": min(seconds), "peak_mb": torch.cuda.max_memory_allocated() / 2**20}


# ---- peak resident memory (CPU) ----


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
