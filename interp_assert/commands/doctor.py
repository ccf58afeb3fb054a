"""``interp-assert doctor``: what this machine will use, in a few lines (versions, caches, kernels,
and the attention path capture takes per device), so a slow or surprising run can be explained.

The paths and the choice are :mod:`interp_assert.measure.attention.paths`' own table and function,
the ones capture calls: what doctor says is what a run does."""

from __future__ import annotations

import os
from pathlib import Path

# The head size the choice is shown for (SmolLM2's, Llama's): the native kernel takes 16-256.
HEAD_DIM = 64


def lines() -> list[str]:
    import torch
    import transformers

    from interp_assert.measure.attention import native, paths
    from interp_assert.measure.measurements import CaptureRequest
    from interp_assert.version import package_version
    from interp_assert.vocab import ROLES

    cache = os.environ.get("INTERP_ASSERT_CACHE") or str(Path.home() / ".cache" / "interp_assert")
    found = [
        f"interp_assert {package_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"cache folder: {cache}" + ("" if os.environ.get("INTERP_ASSERT_CACHE") else " (set INTERP_ASSERT_CACHE)"),
        native.status(),
    ]
    requests = [
        ("previous/first/self", CaptureRequest(roles=frozenset(["previous_token", "first_token", "self"]))),
        ("every role and statistic", CaptureRequest(roles=frozenset(ROLES), attention_stats=True)),
    ]
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    found += paths.doctor_lines(requests, devices, HEAD_DIM)
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        found.append(f"cuda devices: {names}")
    else:
        found.append("cuda: not available")
    return found
