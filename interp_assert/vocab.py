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

BosPolicy = Literal["prepend", "none"]
DType = Literal["float32", "float16", "bfloat16"]

HEAD_PATTERN = re.compile(r"^L(\d+)H(\d+)$")

# Devices a model can be measured on. ``meta`` holds no weights; other torch kinds are not supported here.
DEVICE_PATTERN = re.compile(r"^(cpu|cuda|mps|xpu)(?::(\d+))?$")
VALID_DEVICES = "cpu, cuda, cuda:N, mps, xpu or xpu:N"


def parse_device(text: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``. Raises ``ValueError`` naming the valid forms."""
    match = DEVICE_PATTERN.match(text)
    if match is None:
        kind = text.partition(":")[0]
        hint = ""
        if kind == "meta":
            hint = " (a meta tensor holds no weights, so nothing can be measured on it)"
        elif guess := re.fullmatch(r"(?:gpu|cuda)[:_-]?(\d+)", text.strip().lower()):
            hint = f" (did you mean cuda:{guess.group(1)}?)"
        raise ValueError(f"device {text!r} is not valid{hint}; use {VALID_DEVICES}")
    return match.group(1), int(match.group(2)) if match.group(2) is not None else None


def parse_head(name: str) -> tuple[int, int]:
    """``"L5H8"`` -> ``(5, 8)``. Raises ``ValueError`` naming the valid form."""
    match = HEAD_PATTERN.match(name)
    if match is None:
        raise ValueError(f"head {name!r} is not of the form L<layer>H<head>, e.g. L5H8 (0-based)")
    return int(match.group(1)), int(match.group(2))


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"
