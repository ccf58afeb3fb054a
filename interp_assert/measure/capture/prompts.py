"""Prompt sets -> token id batches. Needs a tokenizer, never a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp_assert.errors import PromptError
from interp_assert.measure.prompt_sets import PromptSet


@dataclass(frozen=True)
class PairBatch:
    """The pair side of a batch of clean prompts: ``corrupt[B, T]`` (token-aligned with the clean
    ``tokens``), the answer and wrong-answer token ids ``[B]``, and each pair's index in its set."""

    corrupt: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    index: tuple[int, ...]


@dataclass(frozen=True)
class PromptBatch:
    """``tokens[B, T]``: B sequences of equal length, BOS already applied per the set's policy.
    For a pair set, ``tokens`` are the clean prompts and ``pairs`` the rest."""

    tokens: torch.Tensor
    pairs: PairBatch | None = None


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
    if prompt_set.is_pairs:
        batches = _pair_batches(prompt_set, tokenizer, prefix)
    elif prompt_set.texts is not None:
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


def _pair_batches(prompt_set: PromptSet, tokenizer: Any, prefix: list[int]) -> list[PromptBatch]:
    """Pairs grouped by token length (no padding), each checked: clean and corrupt as long as each
    other, answer and wrong one token each."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def pieces(tokens: list[int]) -> str:
        return " ".join(repr(tokenizer.decode([t])) for t in tokens)

    groups: dict[int, list[tuple[int, list[int], list[int], int, int]]] = {}
    for index, pair in enumerate(prompt_set.expanded_pairs()):
        clean, corrupt = prefix + ids(pair.clean), prefix + ids(pair.corrupt)
        if len(clean) != len(corrupt):
            at = next(
                (i for i, (a, b) in enumerate(zip(clean, corrupt, strict=False)) if a != b),
                min(len(clean), len(corrupt)),
            )
            raise PromptError(
                f"pair {index} ({pair.clean!r} / {pair.corrupt!r}): clean is {len(clean)} tokens, corrupt "
                f"{len(corrupt)}; they first differ at token {at}: clean {pieces(clean[at : at + 2])} vs corrupt "
                f"{pieces(corrupt[at : at + 2])}; patching needs clean and corrupt of equal token length "
                "(choose words that are one token each)"
            )
        answers = []
        for key in ("answer", "wrong"):
            text = getattr(pair, key)
            found = ids(text)
            if len(found) != 1:
                raise PromptError(
                    f"pair {index}: {key} {text!r} is {len(found)} tokens ({pieces(found) or 'none'}); it must be "
                    "exactly one token (mind the leading space)"
                )
            answers.append(found[0])
        groups.setdefault(len(clean), []).append((index, clean, corrupt, answers[0], answers[1]))
    batches = []
    for rows in groups.values():
        pairs = PairBatch(
            corrupt=torch.tensor([row[2] for row in rows], dtype=torch.long),
            answer=torch.tensor([row[3] for row in rows], dtype=torch.long),
            wrong=torch.tensor([row[4] for row in rows], dtype=torch.long),
            index=tuple(row[0] for row in rows),
        )
        batches.append(PromptBatch(torch.tensor([row[1] for row in rows], dtype=torch.long), pairs))
    return batches
