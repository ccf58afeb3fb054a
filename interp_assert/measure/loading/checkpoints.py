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
    from interp_assert.measure.loading.models import ALIASES

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
    classes = classes if isinstance(classes, list) else [classes]  # "architectures": 5 is shown, not a crash
    kind = str(config.get("model_type", "?")) + (f" ({', '.join(map(str, classes))})" if classes else "")
    return f"{kind}, {first(_LAYERS)} layers x {first(_HEADS)} heads, {first(_WIDTH)} wide"


def _config_json(path: Path) -> dict[str, Any] | None:
    """A ``config.json`` as a mapping; ``None`` when missing, unreadable, not JSON, nested too deep
    for the parser, or not a mapping (loading the model then says what is wrong)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return loaded if isinstance(loaded, dict) else None


def declared_shape(source: Path) -> tuple[int, int] | None:
    """(layers, heads) as a model folder's ``config.json`` or a ``.gguf`` file's header states them,
    read without loading the weights; ``None`` where nothing states them (an adapter, a hub id)."""
    if source.suffix == ".gguf" and source.is_file():
        return _gguf_shape(source)
    config = _config_json(source / "config.json") if source.is_dir() else None
    if config is None:
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(text, dict)
    layers = next((text[k] for k in _LAYERS if k in text), None)
    heads = next((text[k] for k in _HEADS if k in text), None)
    if isinstance(layers, int) and isinstance(heads, int) and not isinstance(layers | heads, bool):
        return layers, heads
    return None


def _gguf_shape(path: Path) -> tuple[int, int] | None:
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
        arch_field = fields["general.architecture"]
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode()

        def number(key: str) -> int:
            field = fields[f"{arch}.{key}"]
            return int(field.parts[field.data[0]][0])

        return number("block_count"), number("attention.head_count")
    except Exception:  # any unreadable header: loading the file says what is wrong
        return None


def reference_shape(
    reference: str, base_dir: Path | None = None, revision: str | None = None
) -> tuple[int, int] | None:
    """:func:`declared_shape` of a model as a spec or a flag names it: an alias, a path (relative to
    ``base_dir`` first) or a hub id found in the local cache."""
    from interp_assert.measure.loading import hub
    from interp_assert.measure.loading.models import ALIASES, resolve

    try:
        source = resolve(reference, base_dir)
    except Exception:  # an alias whose package is missing: loading it says so
        return None
    if isinstance(source, str):
        if reference in ALIASES or not hub.in_cache(source, revision):
            return None
        folder = hub.snapshot_folder(source, revision)
        source = folder if folder is not None else Path(source)
    return declared_shape(source)


def check_shape(
    expected: str, expected_shape: tuple[int, int] | None, other: str, other_shape: tuple[int, int] | None, use: str
) -> None:
    """Refuse, before anything loads, a model whose layers x heads differ from the spec's model:
    the spec's heads and layers would name other things there (or nothing)."""
    if expected_shape is None or other_shape is None or expected_shape == other_shape:
        return
    raise CheckpointError(
        f"{other} has {other_shape[0]} layers x {other_shape[1]} heads, but {expected} has "
        f"{expected_shape[0]} layers x {expected_shape[1]} heads, so the spec's heads and layers would name "
        f"other things; {use}"
    )


def check_against_spec(
    spec_model: str,
    spec_dir: Path,
    spec_revision: str | None,
    targets: Sequence[tuple[str, str | None, str]],
    use: str,
    *,
    base: str | None = None,
) -> None:
    """Each target (a model reference, its revision, and how to name it) against the spec's model
    (or ``base``), both resolved as the loader would (relative to the spec's folder first)."""
    expected = f"the base {base!r}" if base else f"the spec's model {spec_model!r}"
    shape = reference_shape(base or spec_model, spec_dir, None if base else spec_revision)
    if shape is None:
        return
    for reference, revision, shown in targets:
        check_shape(expected, shape, shown, reference_shape(reference, spec_dir, revision), use)


def read_architecture(checkpoint: Checkpoint) -> str | None:
    """The architecture a checkpoint folder's ``config.json`` states; ``None`` where there is none
    to read (an adapter, a .gguf file, an alias): loading it says what is wrong, if anything."""
    loaded = _config_json(Path(checkpoint.path) / "config.json")
    return architecture(loaded) if loaded is not None else None


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
