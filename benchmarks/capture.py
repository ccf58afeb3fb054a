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

Breakdown (CPU, SmolLM2; ``--breakdown-only`` runs only it, ``--breakdown-lengths`` sets its lengths): where
capture's time and memory beyond the plain forward go, as shares of the plain forward measured
in the same process and round (the median over rounds). Time: each component's wall time summed
over the run (choosing the path and reading the model map, installing and removing the path, the
attention kernels against the plain forward's own SDPA attention, the scoring from the
normaliser, the hidden-norm hooks, the switches to one thread, the result), and what is left
(the glue in the attention function, the rest of the model running slower or faster: noise).
Memory: the bytes the run's operators allocate (torch profiler, ``profile_memory``: freed again
within the run, not a peak) beyond the plain forward's, by operator; and the peak resident set
(as in the table) of ablations: SDPA with the hidden-norm hooks only, and previous/first/self
without the norm hooks.

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
import types
from pathlib import Path
from typing import Any

from interp_assert.measure.attention.paths import CHOICES

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
    parser.add_argument("--attention", default="auto", choices=CHOICES)
    parser.add_argument("--breakdown-only", action="store_true", help="CPU: only the breakdown section")
    parser.add_argument("--breakdown-lengths", default="16,128,1024", help="the breakdown's lengths (batch 1)")
    parser.add_argument(
        "--breakdown-threads",
        default="one",
        choices=("one", "default"),
        help="the breakdown's torch threads: one (time is the thread's CPU time, which other load hardly moves) "
        "or the default (wall time)",
    )
    parser.add_argument("--lengths", help="comma-separated sequence lengths (batch 1), instead of the defaults")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)  # KIND MODEL METHODS TOKENS BATCH PATH
    args = parser.parse_args()
    if args.child:
        kind, model, methods, tokens, batch, path = args.child
        if kind == "time":
            print(json.dumps(time_methods(model, methods.split(","), int(tokens), int(batch), path)))
        elif kind == "breakdown":
            print(json.dumps(time_breakdown(model, int(tokens), int(batch), path, one_thread=methods == "one-thread")))
        elif kind == "allocations":
            print(json.dumps(allocations(model, int(tokens), int(batch), path)))
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
    if not args.breakdown_only:
        main_table(args, configs)
    if "smollm2" in args.models.split(","):
        lengths = [(int(t), 1) for t in args.breakdown_lengths.split(",")]
        breakdown_section(lengths, args.attention, one_thread=args.breakdown_threads == "one")


def main_table(args: argparse.Namespace, configs: list[tuple[int, int]]) -> None:
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
    requests["norms"] = CaptureRequest(hidden_norms=True)  # SDPA and the norm hooks only
    requests["pfs-bare"] = CaptureRequest(roles=frozenset(positional))  # type: ignore[arg-type]
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


# ---- the breakdown (CPU): where capture's time and memory beyond the plain forward go ----

# component -> what it times (each summed over a run, in seconds)
COMPONENTS = {
    "choose": "choosing the path and reading the model map",
    "install": "installing and removing the path (the attention implementation switched and back)",
    "kernels": "the attention kernels (fused or blockwise), against the plain forward's SDPA attention",
    "scoring": "scoring from the normaliser: targets, weights at the targets, sums",
    "norms": "the hidden-norm hooks",
    "threads": "switching torch to one thread and back around small reductions",
    "result": "the accumulator's result",
}


def breakdown_section(configs: list[tuple[int, int]], path: str, one_thread: bool) -> None:
    print()
    clock = "one torch thread, the thread's CPU time" if one_thread else "default threads, wall time"
    print(f"breakdown, SmolLM2 ({clock}): capture beyond the plain forward, as % of the plain forward measured in "
          "the same process and round (median over rounds)")  # fmt: skip
    for name, text in COMPONENTS.items():
        print(f"  {name:<8} {text}")
    print("  other    what is left: the attention function's glue, the rest of the model slower or faster (noise)")
    for tokens, batch in configs:
        found = child("breakdown", "smollm2", "one-thread" if one_thread else "-", str(tokens), str(batch), path)
        print(breakdown_rows(tokens, batch, found))
        sys.stdout.flush()
    for tokens, batch in configs:
        if tokens < 128:
            continue
        sizes = (str(tokens), str(batch), path)
        peaks = {m: child("memory", "smollm2", m, *sizes, fixed_heap=True)["peak_mb"] for m in MEMORY_ABLATIONS}
        allocated = child("allocations", "smollm2", "pfs,all", *sizes)
        print(memory_rows(tokens, batch, peaks, allocated))
        sys.stdout.flush()


def breakdown_rows(tokens: int, batch: int, found: dict[str, Any]) -> str:
    lines = [
        f"{tokens}x{batch}: plain {found['plain_ms']:.1f} ms (its SDPA attention {found['plain_attention_pct']:.1f}%), "
        f"{found['rounds']} rounds"
    ]
    columns = [*COMPONENTS, "other"]
    lines.append(f"  {'role set':<8} {'capture':>8} | " + " ".join(f"{c:>8}" for c in columns) + " | fixed ms")
    for method in ("pfs", "all"):
        shares = found[method]
        cells = " ".join(f"{shares[c]:>+7.1f}%" for c in columns)
        fixed = found[method + "_fixed_ms"]
        lines.append(f"  {method:<8} {shares['total']:>7.1f}% | {cells} | {fixed:8.2f}")
    return "\n".join(lines)


MEMORY_ABLATIONS = ("plain", "ours-norms", "ours-pfs-bare", "ours-pfs", "ours-all")


def memory_rows(tokens: int, batch: int, peaks: dict[str, float], allocated: dict[str, Any]) -> str:
    plain = peaks["plain"]
    cells = ", ".join(f"{m.removeprefix('ours-')} {peaks[m]:.0f} MB ({peaks[m] / plain:.2f}x)" for m in peaks)
    lines = [f"{tokens}x{batch} peak resident set: {cells}"]
    for method in ("pfs", "all"):
        extra = allocated[method]["extra_by_op"]
        ops = ", ".join(f"{op} {mb:+.1f}" for op, mb in extra[:5])
        ours, base = allocated[method]["total_mb"], allocated["plain"]["total_mb"]
        lines.append(
            f"  allocated during the run, {method}: {ours:.0f} MB against plain {base:.0f} MB ({ours / base:.3f}x); "
            f"beyond plain, by operator (MB): {ops}"
        )
    return "\n".join(lines)


class Timers:
    """Time summed per component, by wrapping the functions capture calls (the benchmark's own
    instrumentation: a microsecond per call, a few hundred calls per run), on ``clock``."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.spent: dict[str, float] = {}
        self.clock = clock

    def add(self, label: str, seconds: float) -> None:
        self.spent[label] = self.spent.get(label, 0.0) + seconds

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, self.clock() - start)

        setattr(owner, name, timed)

    def wrap_context(self, owner: Any, name: str, label: str) -> None:
        """A function returning a context manager: its entry and exit are timed, not its body."""
        original = getattr(owner, name)

        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.clock()
            manager = original(*args, **kwargs)
            value = manager.__enter__()
            self.add(label, self.clock() - start)
            try:
                yield value
            finally:
                start = self.clock()
                manager.__exit__(None, None, None)
                self.add(label, self.clock() - start)

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def instrument(clock: Any) -> Timers:
    """Wrap what capture calls (and the plain forward's SDPA attention) with timers on ``clock``."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from interp_assert.measure.attention import fused, kernels, native, paths
    from interp_assert.measure.capture import run

    timers = Timers(clock)
    holder = types.SimpleNamespace(sdpa=sdpa_attention_forward)
    timers.wrap(holder, "sdpa", "plain_attention")
    AttentionInterface.register("sdpa", holder.sdpa)
    timers.wrap(paths, "choose", "choose")
    timers.wrap(run, "describe", "choose")
    for path_type in {type(path) for path in paths.PATHS}:
        timers.wrap_context(path_type, "installed", "install")
    timers.wrap(kernels, "aten", "kernels")
    timers.wrap(kernels, "flex", "kernels")
    timers.wrap(native, "attention", "kernels")
    timers.wrap(fused.blockwise, "blockwise_attention", "kernels")  # with its scoring (score_rows, timed apart)
    timers.wrap(run._Run, "targets_for", "scoring")
    timers.wrap(fused, "_target_weights", "scoring")
    timers.wrap(run._Run, "score_normaliser", "scoring")
    timers.wrap(run._Run, "score_rows", "scoring")
    timers.wrap_context(kernels, "one_thread", "threads")
    timers.wrap_context(fused, "one_thread", "threads")
    timers.wrap(run._Accumulator, "result", "result")
    norm_hook = run._Run._norm_hook

    def timed_norm_hook(self: Any, index: int) -> Any:
        hook = norm_hook(self, index)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = timers.clock()
            try:
                return hook(*args, **kwargs)
            finally:
                timers.add("norms", timers.clock() - start)

        return timed

    run._Run._norm_hook = timed_norm_hook  # type: ignore[method-assign]
    return timers


def time_breakdown(model_name: str, tokens: int, batch: int, path: str, one_thread: bool) -> dict[str, Any]:
    """Rounds of plain, pfs and all, in turn, instrumented; each component's share of the round's
    plain forward, the median over rounds. ``one_thread``: torch on one thread, timed by the
    thread's CPU time (the native kernel then runs on the calling thread too)."""
    import torch

    if one_thread:
        torch.set_num_threads(1)
    clock = time.thread_time if one_thread else time.perf_counter
    loaded = load(model_name)
    ids = token_ids(loaded, tokens, batch)
    found = runners(path)
    timers = instrument(clock)
    methods = ["plain", "ours-pfs", "ours-all"]
    for method in methods:
        found[method](loaded, ids[:, :16])  # warm up
    timers.take()
    rounds: list[dict[str, dict[str, float]]] = []
    spent = 0.0
    # short prompts: enough rounds for a median; long ones: as the table's budget allows
    while len(rounds) < (ROUNDS if tokens >= 512 else 25) and (spent < ROUND_BUDGET_S or len(rounds) < 3):
        this: dict[str, dict[str, float]] = {}
        for method in methods:
            start = clock()
            found[method](loaded, ids)
            total = clock() - start
            spent += total
            this[method] = {"total": total, **timers.take()}
        rounds.append(this)

    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    result: dict[str, Any] = {
        "rounds": len(rounds),
        "plain_ms": median([r["plain"]["total"] for r in rounds]) * 1e3,
        "plain_attention_pct": median([r["plain"].get("plain_attention", 0) / r["plain"]["total"] for r in rounds])
        * 100,
    }
    for method in ("pfs", "all"):
        shares: dict[str, list[float]] = {}
        fixed: list[float] = []
        for r in rounds:
            ours, plain = r[f"ours-{method}"], r["plain"]
            base = plain["total"]
            parts = {c: ours.get(c, 0.0) for c in COMPONENTS}
            parts["kernels"] -= plain.get("plain_attention", 0.0)  # beyond the plain forward's attention
            parts["other"] = ours["total"] - base - sum(parts.values())
            parts["total"] = ours["total"]
            for name, seconds in parts.items():
                shares.setdefault(name, []).append(seconds / base * 100)
            fixed.append(sum(ours.get(c, 0.0) for c in ("choose", "install", "result")) * 1e3)
        result[method] = {name: median(values) for name, values in shares.items()}
        result[method + "_fixed_ms"] = median(fixed)
    return result


def allocations(model_name: str, tokens: int, batch: int, path: str) -> dict[str, Any]:
    """Per method, the bytes its operators allocate during one run (torch profiler), and by operator
    the difference from the plain forward's."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    loaded = load(model_name)
    ids = token_ids(loaded, tokens, batch)
    found = runners(path)
    by_method: dict[str, dict[str, float]] = {}
    for method in ("plain", "ours-pfs", "ours-all"):
        found[method](loaded, ids[:, :16])
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            found[method](loaded, ids)
        by_method[method] = {
            event.key: event.self_cpu_memory_usage / 2**20
            for event in prof.key_averages()
            if event.self_cpu_memory_usage > 0 and not event.key.startswith("[")
        }
    plain = by_method["plain"]
    result: dict[str, Any] = {"plain": {"total_mb": sum(plain.values())}}
    for method in ("pfs", "all"):
        ours = by_method[f"ours-{method}"]
        extra = {op: ours.get(op, 0.0) - plain.get(op, 0.0) for op in set(ours) | set(plain)}
        ranked = sorted(((op, mb) for op, mb in extra.items() if abs(mb) >= 0.05), key=lambda item: -abs(item[1]))
        result[method] = {"total_mb": sum(ours.values()), "extra_by_op": ranked}
    return result


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
