"""Real fine-tunes of SmolLM2-135M-Instruct, made on the CPU in seconds, saved exactly as the
libraries save them: ``PeftModel.save_pretrained`` for LoRA adapters, ``PreTrainedModel`` /
tokenizer ``save_pretrained`` for full fine-tunes. Nothing here edits a saved file.

Used by the audit tests as session fixtures and by ``scripts/finetune_smollm2.py``.

Training data is a fixed, generated corpus of small Python functions (no downloads). Runs are
deterministic: the CPU RNG is seeded inside ``torch.random.fork_rng`` (the caller's RNG state is
restored afterwards), deterministic algorithms are on for the duration, LoRA dropout is 0 and
the data order is fixed.

How ``base_model_name_or_path`` reaches ``adapter_config.json`` (peft 0.21, transformers 5):
``AutoModelForCausalLM.from_pretrained(name)`` sets ``config.name_or_path = name`` (the string
exactly as passed) and the model copies it to ``model.name_or_path``; ``get_peft_model`` copies
``model.__dict__["name_or_path"]`` into ``LoraConfig.base_model_name_or_path``
(peft/mapping_func.py), and ``PeftModel.save_pretrained`` writes it. :func:`train_lora`
therefore makes ``workdir/<base_name>`` a symlink to the base weights and calls
``from_pretrained(base_name)`` with ``workdir`` as the working directory, as a user training in
that folder would; peft then records the relative string itself. For a hub id such as
``HuggingFaceTB/SmolLM2-135M-Instruct`` the same happens (transformers looks for a local folder
of that name before it asks the hub), and ``keep_base_link=False`` removes the folder
afterwards, so that the id resolves nowhere on disk, as for a user who trained from the hub.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

StepLog = Callable[[int, float], None]


@dataclass(frozen=True)
class FineTune:
    """What a training run produced: the saved folder, the loss of every step, the wall time."""

    path: Path
    losses: tuple[float, ...]
    seconds: float
    base_name: str | None = None  # LoRA only: what peft wrote as base_model_name_or_path


# ---------------------------------------------------------------------------------------------
# data

_NOUNS = ("item", "value", "count", "total", "price", "score", "index", "name", "size", "order", "user", "row")
_VERBS = ("compute", "update", "parse", "load", "check", "merge", "scale", "filter", "count", "format")
_OPS = ("+", "-", "*")


def code_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """``n`` small, regular Python functions (fixed for a given ``seed``)."""
    rng = random.Random(seed)
    snippets = []
    for _ in range(n):
        verb, noun, other = rng.choice(_VERBS), rng.choice(_NOUNS), rng.choice(_NOUNS)
        k, m, op = rng.randint(1, 9), rng.randint(2, 20), rng.choice(_OPS)
        kind = rng.randrange(3)
        if kind == 0:
            body = (
                f"def {verb}_{noun}({noun}, {other}):\n"
                f'    """Return the {noun} {op} the {other}."""\n'
                f"    result = {noun} {op} {other} * {k}\n"
                f"    return result\n"
            )
        elif kind == 1:
            body = (
                f"def {verb}_{noun}s({noun}s):\n"
                f"    total = 0\n"
                f"    for {noun} in {noun}s:\n"
                f"        if {noun} > {m}:\n"
                f"            total += {noun} {op} {k}\n"
                f"    return total\n"
            )
        else:
            body = (
                f"class {noun.capitalize()}{verb.capitalize()}:\n"
                f"    def __init__(self, {noun}):\n"
                f"        self.{noun} = {noun}\n"
                f"        self.{other} = {k}\n\n"
                f"    def {verb}(self):\n"
                f"        return self.{noun} {op} self.{other}\n"
            )
        snippets.append(body)
    return snippets


def training_batches(
    tokenizer: Any, *, steps: int, batch_size: int, seq_len: int, seed: int = 0, bos: bool = False
) -> list[torch.Tensor]:
    """``steps`` batches ``[batch_size, seq_len]`` cut from the corpus tokenised as one stream
    (snippets separated by a blank line), cycling over it. ``bos`` puts the tokenizer's BOS at
    position 0 of every sequence; SmolLM2's tokenizer does not add one by itself, so a user who
    just calls ``tokenizer(text)`` trains without it (the default here)."""
    text = "\n\n".join(code_corpus(seed=seed))
    stream: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    body = seq_len - 1 if bos else seq_len
    chunks = [stream[i : i + body] for i in range(0, len(stream) - body + 1, body)]
    if bos:
        chunks = [[int(tokenizer.bos_token_id), *chunk] for chunk in chunks]
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    batches = []
    for step in range(steps):
        picks = [order[(step * batch_size + j) % len(order)] for j in range(batch_size)]
        batches.append(torch.tensor([chunks[i] for i in picks], dtype=torch.long))
    return batches


# ---------------------------------------------------------------------------------------------
# training


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded CPU RNG and deterministic algorithms, both restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated ``is_gradient_checkpointing``
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _train(
    model: Any, batches: list[torch.Tensor], lr: float, log: StepLog | None, weight_decay: float = 0.0
) -> tuple[float, ...]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for step, batch in enumerate(batches):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"loss is {value} at step {step}; lower the learning rate")
        losses.append(value)
        if log is not None:
            log(step, value)
    model.eval()
    return tuple(losses)


def _link_base(base_dir: Path, workdir: Path, base_name: str) -> Path:
    if Path(base_name).is_absolute() or ".." in Path(base_name).parts:
        raise ValueError(f"base_name must be a relative name inside workdir, got {base_name!r}")
    link = workdir / base_name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() != base_dir.resolve():
            raise FileExistsError(f"{link} exists and is not a link to {base_dir}")
    else:
        link.symlink_to(base_dir.resolve(), target_is_directory=True)
    return link


def train_lora(
    base_dir: Path,
    workdir: Path,
    *,
    steps: int = 8,
    base_name: str = "smollm2-base",
    adapter_subdir: str = "adapter",
    lr: float = 2e-3,
    rank: int = 8,
    alpha: int = 16,
    targets: tuple[str, ...] = LORA_TARGETS,
    seq_len: int = 64,
    batch_size: int = 4,
    seed: int = 0,
    bos: bool = False,
    keep_base_link: bool = True,
    save_tokenizer: bool = False,
    log: StepLog | None = None,
) -> FineTune:
    """Train a LoRA adapter on SmolLM2 as a user working in ``workdir`` would, and save it with
    ``model.save_pretrained(workdir / adapter_subdir)``.

    ``workdir/<base_name>`` becomes a symlink to ``base_dir``; the model is loaded with
    ``AutoModelForCausalLM.from_pretrained(base_name)`` from ``workdir`` (the working directory
    is restored afterwards), so peft records ``base_name`` verbatim, relative to ``workdir``.
    ``keep_base_link=False`` removes the symlink (and folders made for it) after training: use
    it with ``base_name=HUB_ID`` for an adapter whose base is a hub id only.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    link = _link_base(base_dir, workdir, base_name)
    adapter_dir = workdir / adapter_subdir
    started = time.perf_counter()
    try:
        with contextlib.chdir(workdir), deterministic(seed), quiet_peft():
            tokenizer = AutoTokenizer.from_pretrained(base_name, local_files_only=True)
            base = AutoModelForCausalLM.from_pretrained(base_name, dtype=torch.float32, local_files_only=True)
            config = LoraConfig(
                r=rank,
                lora_alpha=alpha,
                lora_dropout=0.0,
                target_modules=list(targets),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(base, config)
            batches = training_batches(
                tokenizer, steps=steps, batch_size=batch_size, seq_len=seq_len, seed=seed, bos=bos
            )
            losses = _train(model, batches, lr, log)
            model.save_pretrained(adapter_subdir)
            if save_tokenizer:
                tokenizer.save_pretrained(adapter_subdir)
    finally:
        if not keep_base_link:
            _unlink_base(link, workdir)
    written = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if written != base_name:
        raise AssertionError(f"peft wrote base_model_name_or_path={written!r}, expected {base_name!r}")
    return FineTune(adapter_dir, losses, time.perf_counter() - started, written)


def _unlink_base(link: Path, workdir: Path) -> None:
    if link.is_symlink():
        link.unlink()
    parent = link.parent
    while parent != workdir and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def train_full(
    base_dir: Path,
    out_dir: Path,
    *,
    steps: int = 8,
    lr: float = 2e-4,
    seq_len: int = 64,
    batch_size: int = 4,
    seed: int = 0,
    bos: bool = False,
    weight_decay: float = 0.0,
    log: StepLog | None = None,
) -> FineTune:
    """Fine-tune every weight of SmolLM2 with AdamW and save model and tokenizer to ``out_dir``
    (``save_pretrained``: config.json, generation_config.json, model.safetensors, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    with deterministic(seed):
        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
        batches = training_batches(tokenizer, steps=steps, batch_size=batch_size, seq_len=seq_len, seed=seed, bos=bos)
        losses = _train(model, batches, lr, log, weight_decay=weight_decay)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return FineTune(out_dir, losses, time.perf_counter() - started)


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> Path:
    """Base + adapter merged into plain weights (for measuring without peft-aware loading)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    with quiet_peft():
        merged = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir, local_files_only=True).save_pretrained(out_dir)
    return out_dir


__all__ = [
    "HUB_ID",
    "FineTune",
    "code_corpus",
    "merge_adapter",
    "train_full",
    "train_lora",
    "training_batches",
]
