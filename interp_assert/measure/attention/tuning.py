"""The sizes the attention paths work in: scratch per row block, rows per kernel call, chunks of
gathered dot products. They change how a capture is cut up, never its numbers (up to float
rounding of sums taken in another order), so a test passes small ones to cross every edge.

They travel as one explicit :class:`Tuning` value (``capture.run.measure(..., tuning=...)``), held by
the active capture: nothing reads or patches a module global.
"""

from __future__ import annotations

from dataclasses import dataclass

# Scratch memory for one row block: its float32 weights (and its logits, where breadth needs them).
# Small enough to add little to peak memory and stay near the CPU caches; big enough that the
# per-block overhead (Python, and a thread synchronisation per operation) stays small.
BLOCK_BYTES = 8 << 20
MIN_BLOCK_ROWS = 16
# Query rows per kernel call on a sliding-window layer (CPU): each call sees rows + window - 1 keys.
WINDOW_ROWS = 256
# Float32 scratch for row-wise products and gathered dot products (the fused path).
GATHER_BYTES = 8 << 20
# Elements of one block's target masks when the fused path finds a whole sequence's targets.
TARGET_MASK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Tuning:
    """How a capture cuts its work up (see the module's constants for what each size bounds).

    ``repeat_groups``: repeat each key/value head for its group of query heads before the CPU flash
    kernel even where the kernel takes grouped heads, as it must with torch before 2.5."""

    block_bytes: int = BLOCK_BYTES
    min_block_rows: int = MIN_BLOCK_ROWS
    window_rows: int = WINDOW_ROWS
    gather_bytes: int = GATHER_BYTES
    target_mask_elements: int = TARGET_MASK_ELEMENTS
    repeat_groups: bool = False


DEFAULT = Tuning()
