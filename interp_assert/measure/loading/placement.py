"""Where a big model's weights go: ``device_map``, ``max_memory`` and ``offload_folder``.

Values come from a spec's header or the command line (``--interp-device-map``,
``--interp-max-memory``, ``--interp-offload-folder``), are checked here with one-line errors
that name the value and what is valid, and are handed to ``from_pretrained`` (accelerate
places the weights straight on their devices). Nothing here imports torch at import time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from interp_assert.vocab import VALID_DEVICES, parse_device

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
MODULE_PATTERN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
SIZE_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
VALID_MAP = (
    f"use {', '.join(STRATEGIES)}, or a mapping of module name ('' for the whole model) to a device "
    f"({VALID_DEVICES}, a GPU number, or disk)"
)
MAX_SIZE = 2**50  # 1 PiB: far beyond any device, far below what accelerate's arithmetic handles
VALID_SIZE = "a size such as 20GiB, 500MB or 1.5GB, or a whole number of bytes"
VALID_MEMORY_KEY = "cpu, disk, mps, a GPU number, cuda, cuda:N or xpu:N"

# A device map as LoadOptions keeps it (hashable): a strategy, or (module, device) pairs.
DeviceMap = str | tuple[tuple[str, str | int], ...]
MaxMemory = tuple[tuple[str | int, int], ...]


def check_device_map(value: object) -> DeviceMap:
    """A strategy name, or a non-empty mapping module -> device. Raises ``ValueError`` saying what is valid."""
    if isinstance(value, str):
        if value not in STRATEGIES:
            hint = " (for one device, use device: instead)" if _is_device(value) else ""
            raise ValueError(f"device_map {value!r} is not valid{hint}; {VALID_MAP}")
        return value
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"device_map {value!r} is not valid; {VALID_MAP}")
    pairs: list[tuple[str, str | int]] = []
    for module, device in value.items():
        if not isinstance(module, str) or (module and not MODULE_PATTERN.match(module)):
            raise ValueError(
                f"device_map key {module!r} is not a module name (e.g. model.layers.3, or ''); {VALID_MAP}"
            )
        pairs.append((module, check_map_device(module, device)))
    return tuple(pairs)


def check_map_device(module: str, device: object) -> str | int:
    if isinstance(device, bool) or not isinstance(device, str | int):
        raise ValueError(f"device_map {module!r}: {device!r} is not a device; {VALID_MAP}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device_map {module!r}: GPU number {device} is negative; {VALID_MAP}")
        return device
    if device == "disk":
        return device
    try:
        parse_device(device)
    except ValueError as exc:
        raise ValueError(f"device_map {module!r}: {exc}, a GPU number, or disk") from None
    return device


def parse_size(value: object) -> int:
    """``"20GiB"`` (or ``"1000000000"``, bytes) -> bytes. Raises ``ValueError`` naming the value and the
    valid forms; exact arithmetic, so no size overflows a float."""
    if isinstance(value, str) and len(value) > 40:
        raise ValueError(f"size '{value[:20]}...' ({len(value)} characters) is not valid; give {VALID_SIZE}")
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"size {value} is not positive; give {VALID_SIZE}")
        size = value
    else:
        match = SIZE_PATTERN.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"size {value!r} is not valid; give {VALID_SIZE}")
        size = int(Fraction(match.group(1)) * UNITS[match.group(2)])
        if size < 1:
            raise ValueError(f"size {value!r} is zero; give {VALID_SIZE}")
    if size > MAX_SIZE:
        raise ValueError(f"size {value!r} is more than any machine holds (at most 1 PiB); give {VALID_SIZE}")
    return size


def check_max_memory(value: object) -> MaxMemory:
    """A non-empty mapping device -> size, as accelerate wants it (GPU numbers as ints, sizes in bytes)."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"max_memory {value!r} is not valid; give a mapping of device ({VALID_MEMORY_KEY}) to size")
    pairs: list[tuple[str | int, int]] = []
    for device, size in value.items():
        key = memory_key(device)
        try:
            pairs.append((key, parse_size(size)))
        except ValueError as exc:
            raise ValueError(f"max_memory {device!r}: {exc}") from None
    return tuple(pairs)


def memory_key(device: object) -> str | int:
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return device
    if isinstance(device, str):
        if device in ("cpu", "disk", "mps"):
            return device
        if device.isdigit():
            return int(device)
        try:
            kind, index = parse_device(device)
        except ValueError:
            kind, index = "", None
        if kind in ("cuda", "xpu"):
            return index or 0
    raise ValueError(f"max_memory key {device!r} is not a device; use {VALID_MEMORY_KEY}")


def check_offload_folder(path: Path) -> Path:
    """``path`` if it is a folder or can become one; a file (or a file on the way) is an error."""
    if "\x00" in str(path):
        raise ValueError(f"offload_folder {str(path)!r} cannot be a folder (a NUL byte in its name)")
    try:
        existing = next((place for place in (path, *path.parents) if place.exists()), None)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte: not a folder this machine can have
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"offload_folder {str(path)[:200]!r} cannot be a folder here ({reason})") from None
    if existing is not None and not existing.is_dir():
        what = "the offload folder" if existing == path else f"{existing}, on the way to the offload folder,"
        raise ValueError(f"offload_folder {str(path)!r}: {what} is a file, not a folder; give a folder")
    return path


def parse_device_map_flag(text: str) -> DeviceMap:
    """``--interp-device-map``: a strategy, ``MODULE=DEVICE,MODULE=DEVICE``, or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return check_device_map(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"device_map {text!r} is not valid JSON ({exc.msg}); {VALID_MAP}") from None
    if "=" not in text:
        return check_device_map(text)
    return check_device_map({module: _number_or_text(device) for module, device in _pairs(text, "MODULE=DEVICE")})


def parse_max_memory_flag(text: str) -> MaxMemory:
    """``--interp-max-memory``: ``DEVICE=SIZE,DEVICE=SIZE`` (``0=20GiB,cpu=60GiB``) or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return check_max_memory(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"max_memory {text!r} is not valid JSON ({exc.msg})") from None
    return check_max_memory(dict(_pairs(text, "DEVICE=SIZE")))


def _pairs(text: str, form: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not value:
            raise ValueError(f"{part.strip()!r} in {text!r} is not {form}; give {form}[,{form}...]")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _number_or_text(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _is_device(text: str) -> bool:
    try:
        parse_device(text)
    except ValueError:
        return False
    return True


def describe(device_map: DeviceMap) -> str:
    """How a device map is recorded beside numbers (environment, reports)."""
    if isinstance(device_map, str):
        return device_map
    return ",".join(f"{module or '<all>'}={device}" for module, device in device_map)


def pretrained_kwargs(
    device_map: DeviceMap, max_memory: MaxMemory | None, offload_folder: Path | None
) -> dict[str, Any]:
    """``from_pretrained``'s placement arguments."""
    kwargs: dict[str, Any] = {"device_map": device_map if isinstance(device_map, str) else dict(device_map)}
    if max_memory is not None:
        kwargs["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        offload_folder.mkdir(parents=True, exist_ok=True)
        kwargs["offload_folder"] = str(offload_folder)
    return kwargs


def check_covered(
    reference: str, source: Path | str, device_map: tuple[tuple[str, str | int], ...], common: dict[str, Any]
) -> None:
    """An explicit device map names only modules the model has, and places every parameter
    (accelerate would leave an unplaced one on the meta device without a word)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from interp_assert.errors import ModelLoadError

    config = AutoConfig.from_pretrained(source, **common)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=common["trust_remote_code"])
    modules = dict(skeleton.named_modules())
    for module, _ in device_map:
        if module and module not in modules:
            top = ", ".join(name for name in modules if name and "." not in name)
            block = next((name for name in modules if name.endswith(".0")), "")
            raise ModelLoadError(
                f"model {reference!r}: device_map names module {module!r}, which this {type(skeleton).__name__} "
                f"does not have; its top-level modules are {top}" + (f", its first block is {block}" if block else "")
            )
    placed = [module for module, _ in device_map]
    missing = [
        name
        for name, _ in skeleton.named_parameters()
        if not any(not module or name == module or name.startswith(module + ".") for module in placed)
    ]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(
            f"model {reference!r}: device_map places no device for parameter(s) {', '.join(missing[:3])}{more}; "
            "give every module a device (a key '' covers the whole model), or use device_map: auto"
        )
