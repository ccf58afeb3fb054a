"""``track --shard I/N``: which checkpoints a shard measures. Nothing here imports torch, so the
command line parses ``--shard`` before any heavy module loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, checkpoints: Sequence[Any]) -> tuple[Any, ...]:
        """Checkpoints i, i+n, i+2n, ... of the track's order: early and late steps in every shard."""
        return tuple(c for k, c in enumerate(checkpoints) if k % self.count == self.index - 1)


def parse_shard(text: str) -> Shard:
    """``2/4`` -> the second of four shards; the argparse type of ``--shard``."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"--shard {text!r} is not I/N (e.g. 2/4: the second of four shards, numbered from 1)")
    shard = Shard(int(index), int(count))
    if shard.count < 1 or not 1 <= shard.index <= shard.count:
        raise ValueError(f"--shard {text}: I must be 1 to N and N at least 1, e.g. 1/{max(shard.count, 1)}")
    return shard
