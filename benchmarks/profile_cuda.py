"""Where the fused CUDA capture spends its time: torch.profiler over one capture of the
Llama-3.2-1B-shaped model (see ``capture.py``), against a plain SDPA forward of the same tokens.

    python benchmarks/profile_cuda.py [--tokens 1024 4096]

Prints, per length: the plain and capture times (fastest of 3, synchronised), then the top ops by
self CUDA time and by self CPU time, and how many device-to-host copies and synchronisations
the capture makes (each one stalls the GPU queue).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(function: Any) -> float:
    import torch

    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from interp_assert.measure.capture import run as capture

    benchmark = importlib.import_module("capture")  # benchmarks/capture.py: the same model and plain forward
    llama_1b_shaped, plain = benchmark.llama_1b_shaped, benchmark.plain
    from interp_assert.measure.capture.prompts import PromptBatch
    from interp_assert.measure.measurements import CaptureRequest

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    loaded = llama_1b_shaped()
    requests = {
        "pfs3": CaptureRequest(roles=frozenset({"previous_token", "first_token", "self"})),
        "pfs5": CaptureRequest(
            roles=frozenset({"previous_token", "first_token", "self", "induction", "duplicate_token"}),
            hidden_norms=True,
        ),
    }
    for tokens in args.tokens:
        ids = torch.randint(10, int(loaded.config.vocab_size), (1, tokens), device="cuda")
        plain(loaded, ids)
        base = timed(lambda ids=ids: plain(loaded, ids))
        line = [f"T={tokens}: plain {base:.2f} ms"]
        for name, request in requests.items():

            def run(request: Any = request, ids: Any = ids) -> None:
                capture.measure(loaded, [PromptBatch(ids)], request)

            run()
            took = timed(run)
            line.append(f"{name} {took:.2f} ms ({took / base:.2f}x)")
        print("; ".join(line), flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            capture.measure(loaded, [PromptBatch(ids)], requests["pfs3"])
            torch.cuda.synchronize()
        events = prof.key_averages()
        print(events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60), flush=True)
        print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60), flush=True)
        syncs = [e for e in events if "Synchronize" in e.key or "item" in e.key or "_local_scalar_dense" in e.key]
        copies = [e for e in events if "Memcpy DtoH" in e.key or "aten::_to_copy" in e.key]
        print("syncs:", [(e.key, e.count) for e in syncs], "copies:", [(e.key, e.count) for e in copies], flush=True)


if __name__ == "__main__":
    main()
