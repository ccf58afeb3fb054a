"""Closed vocabularies shared by the spec schema, the scores and the checks."""

from __future__ import annotations

import re
from typing import Literal, get_args

Role = Literal["previous_token", "first_token", "self", "duplicate_token", "induction", "focus", "breadth"]
ROLES: tuple[Role, ...] = get_args(Role)

# Roles scored by where a row's attention lands (a target mask); focus and
# breadth describe the shape of the row instead.
TargetRole = Literal["previous_token", "first_token", "self", "duplicate_token", "induction"]
TARGET_ROLES: tuple[TargetRole, ...] = get_args(TargetRole)

Label = Literal["previous_token", "first_token", "self", "focused", "broad"]
LABELS: tuple[Label, ...] = get_args(Label)
# Roles that are also labels: a head is labelled by the highest of these (ties in this order).
Positional = Literal["previous_token", "first_token", "self"]
POSITIONAL_LABELS: tuple[Positional, ...] = get_args(Positional)

AttentionStat = Literal["max", "mean", "focus", "breadth"]
ATTENTION_STATS: tuple[AttentionStat, ...] = get_args(AttentionStat)

BosPolicy = Literal["prepend", "none"]
DType = Literal["float32", "float16", "bfloat16"]

HEAD_PATTERN = re.compile(r"^L(\d+)H(\d+)$")


def parse_head(name: str) -> tuple[int, int]:
    """``"L5H8"`` -> ``(5, 8)``. Raises ``ValueError`` naming the valid form."""
    match = HEAD_PATTERN.match(name)
    if match is None:
        raise ValueError(f"head {name!r} is not of the form L<layer>H<head>, e.g. L5H8 (0-based)")
    return int(match.group(1)), int(match.group(2))


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"
