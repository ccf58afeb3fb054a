"""A real training run of the built-in tiny GPT-Neo, saved every few steps as transformers'
``Trainer`` does (``checkpoint-<step>`` folders written by ``save_pretrained``), for ``track``.

The run starts from ``tiny-neo`` (L0H0 a previous-token head, L1H0 an induction head) and
trains every weight with AdamW on the language-modelling loss over repeated random blocks,
plus an attention-supervision term (as ``scripts/train_tiny_neo.py`` uses to make the model)
that pulls L0H0 onto a target position which changes between phases. The default curriculum
first pulls L0H0 onto the first token (the BOS), then onto the current token (self): so the
previous-token head is trained away, a first-token head forms and then breaks again, and the
induction head that reads L0H0's previous-token output breaks with it. Training is seeded
and deterministic; the numbers each checkpoint gives are recorded in the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from tests.finetunes import deterministic

TINY_NEO = Path(__file__).resolve().parent.parent / "interp_assert" / "builtin_models" / "tiny-neo"
FIRST_ORDINARY = 4  # ids 0-3 are <bos> <eos> <pad> <unk>
VOCAB = 64

Phase = tuple[int, str]  # (steps, where L0H0 is pulled: first_token | self | previous_token)
CURRICULUM: tuple[Phase, ...] = ((20, "first_token"), (20, "previous_token"))


def repeated_blocks(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``<bos>`` + a random block of 8-16 ordinary tokens repeated up to ``length`` tokens."""
    rows = []
    for _ in range(batch):
        period = int(torch.randint(8, 17, (1,), generator=generator))
        block = torch.randint(FIRST_ORDINARY, VOCAB, (period,), generator=generator)
        body = block.repeat(length // period + 1)[: length - 1]
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), body]))
    return torch.stack(rows)


def _attention_loss(weights: torch.Tensor, target: str) -> torch.Tensor:
    """-log of L0H0's attention to its target, over query rows 1.. (``weights`` [B, T, T])."""
    rows = torch.arange(1, weights.shape[-1])
    columns = {"first_token": torch.zeros_like(rows), "self": rows, "previous_token": rows - 1}[target]
    return -torch.log(weights[:, rows, columns].clamp_min(1e-30)).mean()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train on one thread, whatever the machine: a reduction's order (and so the last bits of every
    step, which 40 steps of AdamW amplify) depends on the thread count. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_run(
    out: Path,
    *,
    phases: tuple[Phase, ...] = CURRICULUM,
    save_every: int = 10,
    lr: float = 3e-3,
    aux: float = 1.0,
    batch: int = 8,
    length: int = 48,
    seed: int = 0,
) -> list[Path]:
    """Train from tiny-neo and save ``out/checkpoint-<step>`` at step 0 and every ``save_every``
    steps; returns the folders in step order."""
    from transformers import AutoTokenizer, GPTNeoForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TINY_NEO)
    saved: list[Path] = []

    def save(step: int) -> None:
        folder = out / f"checkpoint-{step}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        saved.append(folder)

    with deterministic(seed), one_thread():
        model = GPTNeoForCausalLM.from_pretrained(TINY_NEO, attn_implementation="eager")
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        save(0)
        step = 0
        for steps, target in phases:
            for _ in range(steps):
                model.train()
                tokens = repeated_blocks(batch, length, generator)
                result = model(input_ids=tokens, labels=tokens, output_attentions=True)
                loss = result.loss + aux * _attention_loss(result.attentions[0][:, 0], target)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % save_every == 0:
                    model.eval()
                    save(step)
    return saved
