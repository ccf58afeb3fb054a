"""``interp-assert doctor``: what this machine will use, in a few lines (versions, caches, kernels,
and the attention path capture takes per device), so a slow or surprising run can be explained."""

from __future__ import annotations

import os
from pathlib import Path


def lines() -> list[str]:
    import torch
    import transformers

    from interp_assert.measure.attention import native
    from interp_assert.version import package_version

    cache = os.environ.get("INTERP_ASSERT_CACHE") or str(Path.home() / ".cache" / "interp_assert")
    found = [
        f"interp_assert {package_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"cache folder: {cache}" + ("" if os.environ.get("INTERP_ASSERT_CACHE") else " (set INTERP_ASSERT_CACHE)"),
        native.status(),
        "cpu attention path: "
        + (
            "fused: PyTorch's flash kernel (output and log-sum-exp), the native kernel where breadth, focus or "
            "the max statistic are wanted"
            if native.available()
            else "fused: PyTorch's flash kernel, one more pass each for breadth and the row maximum "
            "(blockwise when both are wanted)"
        ),
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        found.append(f"cuda attention path: fused, FlexAttention (compiled) on {names}")
    else:
        found.append("cuda: not available")
    return found
