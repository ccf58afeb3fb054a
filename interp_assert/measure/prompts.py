"""Prompt sets -> token id batches. Needs a tokenizer, never a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp_assert.errors import PromptError
from interp_assert.measure.prompt_sets import PromptSet


@dataclass(frozen=True)
class PromptBatch:
    """``tokens[B, T]``: B sequences of equal length, BOS already applied per the set's policy."""

    tokens: torch.Tensor


def build_batches(
    prompt_set: PromptSet,
    tokenizer: Any,
    *,
    vocab_size: int,
    max_positions: int | None,
    extra_tokens: int = 0,
) -> list[PromptBatch]:
    """Tokenise a prompt set. Texts of different lengths become separate batches (no padding).
    ``extra_tokens`` (to be generated) count toward the context limit."""
    prefix = _bos_prefix(prompt_set, tokenizer)
    if prompt_set.texts is not None:
        sequences = [prefix + list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompt_set.texts]
        if prompt_set.bos == "none":
            _refuse_written_bos(prompt_set.texts, sequences, tokenizer)
        by_length: dict[int, list[list[int]]] = {}
        for sequence in sequences:
            by_length.setdefault(len(sequence), []).append(sequence)
        batches = [PromptBatch(torch.tensor(group, dtype=torch.long)) for group in by_length.values()]
    else:
        spec = prompt_set.random_tokens
        assert spec is not None
        # checked before anything is allocated: a huge length must be refused, not attempted
        _check_length(len(prefix) + spec.length * spec.repeats, max_positions, extra_tokens)
        batches = [PromptBatch(_random_repeated(prompt_set, tokenizer, vocab_size, prefix))]
    for batch in batches:
        _check_length(batch.tokens.shape[1], max_positions, extra_tokens)
    return batches


def _check_length(length: int, max_positions: int | None, extra_tokens: int) -> None:
    if length < 2:
        raise PromptError(f"a prompt is {length} token(s) long; at least 2 are needed to score any query row")
    if max_positions is not None and length + extra_tokens > max_positions:
        generated = f" + {extra_tokens} generated" if extra_tokens else ""
        raise PromptError(
            f"a prompt is {length}{generated} tokens long but the model's context is {max_positions} tokens; "
            "shorten it (or lower random_tokens.length / repeats / generate)"
        )


def _bos_prefix(prompt_set: PromptSet, tokenizer: Any) -> list[int]:
    if prompt_set.bos == "none":
        return []
    bos = tokenizer.bos_token_id
    if bos is None:
        raise PromptError("bos: prepend, but this model's tokenizer has no BOS token; use bos: none")
    return [int(bos)]


def _refuse_written_bos(texts: list[str], sequences: list[list[int]], tokenizer: Any) -> None:
    """``bos: none`` promises no BOS; a text that spells the BOS token (``<bos>...``) would put the
    real one in through the tokenizer's special-token parsing, so it is refused by name."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return
    for number, (text, sequence) in enumerate(zip(texts, sequences, strict=True)):
        if bos in sequence:
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise PromptError(
                f"text {number} ({shown!r}) spells the tokenizer's BOS token {tokenizer.bos_token!r}, which would "
                "put a real BOS in a set that says bos: none; remove it from the text, or use bos: prepend"
            )


def _random_repeated(prompt_set: PromptSet, tokenizer: Any, vocab_size: int, prefix: list[int]) -> torch.Tensor:
    spec = prompt_set.random_tokens
    assert spec is not None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
    if len(allowed) == 0:
        raise PromptError(f"the model's {vocab_size} token ids are all special tokens; random_tokens has none to draw")
    generator = torch.Generator().manual_seed(spec.seed)
    picks = torch.randint(len(allowed), (spec.count, spec.length), generator=generator)
    blocks = allowed[picks]
    repeated = blocks.repeat(1, spec.repeats)
    if prefix:
        repeated = torch.cat([torch.tensor(prefix).expand(spec.count, -1), repeated], dim=1)
    return repeated
