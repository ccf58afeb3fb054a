"""Which checkpoints of a training run to track, in which order: paths, globs, step numbers.

Shared by ``interp-assert track`` and pytest's ``--interp-checkpoints``. Nothing here loads a
model or imports torch: checkpoints are found, named and ordered from the file system, and
their ``config.json`` files are compared so that a checkpoint of another architecture is
refused before anything loads.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from interp_assert.errors import CheckpointError

Order = Literal["step", "given"]
ORDERS: tuple[Order, ...] = ("step", "given")
GLOB_CHARS = frozenset("*?[")
_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class Checkpoint:
    given: str  # as the user wrote it (a glob's match: the path the glob produced)
    path: str  # what is loaded: an absolute path, or a built-in alias
    label: str  # the folder name, e.g. checkpoint-200: the column, the pytest id
    step: int | None  # the last integer in the folder name

    @property
    def shown(self) -> str:
        """How tables and summaries name it: ``step 200``, or the folder name without a step."""
        return f"step {self.step}" if self.step is not None else self.label


def step_of(name: str) -> int | None:
    """The last integer in a folder (or .gguf file) name: ``checkpoint-1800`` -> 1800."""
    stem = name[: -len(".gguf")] if name.endswith(".gguf") else name
    found = _LAST_INTEGER.search(stem)
    return int(found.group(1)) if found else None


Entry = tuple[str, bool]  # (text, is a glob)


def split_list(values: Iterable[str]) -> list[Entry]:
    """``--interp-checkpoints a,b --interp-checkpoints 'run/c-*'`` -> paths ``a``, ``b`` and the
    glob ``run/c-*``: an entry with ``*``, ``?`` or ``[`` is a glob."""
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return [(part, bool(GLOB_CHARS & set(part))) for part in parts]


def resolve(entries: Sequence[Entry], order: Order = "step", *, here: Path | None = None) -> tuple[Checkpoint, ...]:
    """Each entry is a path (a model folder, adapter folder or .gguf file) or a built-in alias,
    or a glob; relative paths are relative to ``here`` (the working directory). Ordered by step
    number (``order="step"``: every checkpoint needs one, and steps are unique) or as given, a
    glob's matches by step where they all have one, else by name."""
    from interp_assert.measure.models import ALIASES

    if order not in ORDERS:
        raise CheckpointError(f"checkpoint order {order!r} is not valid; choose step or given")
    here = here or Path.cwd()
    found: list[Checkpoint] = []
    for entry, is_glob in entries:
        if is_glob:
            found += _expand(entry, here)
        elif entry in ALIASES:
            found.append(Checkpoint(entry, entry, entry, step_of(entry)))
        else:
            path = (here / entry).expanduser() if not Path(entry).expanduser().is_absolute() else Path(entry)
            if not path.expanduser().exists():
                raise CheckpointError(
                    f"checkpoint {entry!r} does not exist ({path.absolute()}); give a model folder, an adapter "
                    "folder, a .gguf file or a glob such as 'run/checkpoint-*'"
                )
            found.append(_checkpoint(entry, path.expanduser()))
    if not found:
        raise CheckpointError("no checkpoint given; pass --checkpoint PATH (repeatable) or --checkpoints GLOB")
    _unique(found, order)
    if order == "step":
        found.sort(key=lambda c: c.step if c.step is not None else -1)
    return tuple(found)


def _checkpoint(given: str, path: Path) -> Checkpoint:
    absolute = path.resolve()
    return Checkpoint(given, str(absolute), path.name, step_of(path.name))


def _expand(pattern: str, here: Path) -> list[Checkpoint]:
    rooted = pattern if os.path.isabs(os.path.expanduser(pattern)) else os.path.join(here, pattern)
    matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(rooted)))]
    usable = [m for m in matches if m.is_dir() or m.suffix == ".gguf"]
    if not usable:
        what = f"only files that are not checkpoints ({', '.join(sorted(m.name for m in matches)[:3])})"
        raise CheckpointError(
            f"checkpoint glob {pattern!r} matches {what if matches else 'nothing'} under {here}; "
            "a checkpoint is a model folder, an adapter folder or a .gguf file"
        )
    shown_root = "" if os.path.isabs(os.path.expanduser(pattern)) else str(here)
    checkpoints = [_checkpoint(os.path.relpath(m, shown_root) if shown_root else str(m), m) for m in usable]
    if all(c.step is not None for c in checkpoints):
        return sorted(checkpoints, key=lambda c: c.step or 0)  # stable: paths in name order on a tie
    return sorted(checkpoints, key=lambda c: c.label)


def _unique(found: list[Checkpoint], order: Order) -> None:
    by_path: dict[str, Checkpoint] = {}
    by_label: dict[str, Checkpoint] = {}
    by_step: dict[int, Checkpoint] = {}
    for checkpoint in found:
        if checkpoint.path in by_path:
            first = by_path[checkpoint.path]
            raise CheckpointError(f"checkpoint {checkpoint.given!r} is given twice (also as {first.given!r})")
        by_path[checkpoint.path] = checkpoint
        if order == "step":
            if checkpoint.step is None:
                raise CheckpointError(
                    f"checkpoint {checkpoint.given!r} has no step number in its name (the last integer, as in "
                    "checkpoint-200); rename it, or pass --order given to keep the order you gave"
                )
            if checkpoint.step in by_step:
                first = by_step[checkpoint.step]
                raise CheckpointError(
                    f"checkpoints {first.given!r} and {checkpoint.given!r} have the same step {checkpoint.step}; "
                    "track one run at a time, or pass --order given"
                )
            by_step[checkpoint.step] = checkpoint
        if checkpoint.label in by_label:
            first = by_label[checkpoint.label]
            raise CheckpointError(
                f"checkpoints {first.given!r} and {checkpoint.given!r} have the same name {checkpoint.label!r}; "
                "names label the columns and test ids, so they must differ"
            )
        by_label[checkpoint.label] = checkpoint


# ---- architecture ----

_LAYERS = ("num_hidden_layers", "num_layers", "n_layer")
_HEADS = ("num_attention_heads", "num_heads", "n_head")
_WIDTH = ("hidden_size", "n_embd", "d_model")


def architecture(config: dict[str, Any]) -> str:
    """``gpt_neo (GPTNeoForCausalLM), 2 layers x 4 heads, 64 wide`` from a ``config.json`` mapping."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(text, dict)

    def first(keys: tuple[str, ...]) -> object:
        return next((text[k] for k in keys if k in text), "?")

    classes = config.get("architectures") or []
    kind = str(config.get("model_type", "?")) + (f" ({', '.join(map(str, classes))})" if classes else "")
    return f"{kind}, {first(_LAYERS)} layers x {first(_HEADS)} heads, {first(_WIDTH)} wide"


def read_architecture(checkpoint: Checkpoint) -> str | None:
    """The architecture a checkpoint folder's ``config.json`` states; ``None`` where there is none
    to read (an adapter, a .gguf file, an alias): loading it says what is wrong, if anything."""
    config = Path(checkpoint.path) / "config.json"
    try:
        loaded = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return architecture(loaded) if isinstance(loaded, dict) else None


def same_architecture(first: Checkpoint, first_arch: str, other: Checkpoint, other_arch: str) -> None:
    if first_arch != other_arch:
        raise CheckpointError(
            f"checkpoint {other.given!r} is {other_arch}, not {first_arch} like checkpoint {first.given!r}; "
            "track compares checkpoints of one model"
        )


def check_architectures(checkpoints: Sequence[Checkpoint]) -> None:
    """Refuse, before anything loads, a checkpoint whose config states another architecture than
    the first checkpoint's (model type, classes, layers, heads, width)."""
    known = [(c, arch) for c in checkpoints if (arch := read_architecture(c)) is not None]
    for other, arch in known[1:]:
        same_architecture(known[0][0], known[0][1], other, arch)
