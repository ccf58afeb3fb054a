"""Train the tiny built-in GPT-Neo used by interp_assert's examples and tests.

Run from the repository root (CPU only, offline)::

    python scripts/train_tiny_neo.py [--out DIR] [--steps 2000] [--aux 0.5]

Runtime: about 3-4 minutes on 2 CPU cores (2000 steps, batch 32).

Builds a 2-layer GPT-Neo (hidden 64, 4 heads, MLP 256, vocab 64, 256 positions;
layer 0 global attention, layer 1 local attention with window 64, dropout 0) and a
64-entry WordLevel tokenizer (ids 0-3 ``<bos> <eos> <pad> <unk>``, ids 4-63
``t4``..``t63``; no automatic BOS). Training data: ``<bos>`` + optional random
prefix + a random block (period 5-40) repeated to length 64-192; the LM loss skips
the unpredictable first block. An auxiliary attention-supervision loss (weight
``--aux``) pulls L0H0 onto the previous token and L1H0 onto induction targets;
without it this model reliably learns a working but shifted induction circuit
(attending to j+2) within a CPU-minutes budget. Writes ``config.json``,
``model.safetensors``, ``generation_config.json`` and the tokenizer files to
``--out`` (default ``interp_assert/builtin_models/tiny-neo`` in this repo), then
reloads that directory with eager attention and prints per-head scores
(previous_token, induction, first_token, self) on 8 seeded eval sequences of
``<bos>`` + 20 tokens x 3 and of ``<bos>`` + 10 tokens x 4. Seeds are fixed and
torch runs deterministically on 2 threads, so reruns give bit-identical weights.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "interp_assert" / "builtin_models" / "tiny-neo"
VOCAB_SIZE = 64
SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>"]
FIRST_ORDINARY = len(SPECIALS)  # ids 4..63 are ordinary tokens t4..t63
TRAIN_SEED = 1234
EVAL_SEED = 20240
ROLES = ("previous_token", "induction", "first_token", "self")
PREV_HEAD = 0  # layer 0 head supervised towards i-1
INDUCTION_HEAD = 0  # layer 1 head supervised towards induction targets


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(FIRST_ORDINARY, VOCAB_SIZE)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=256,
    )


def build_config() -> GPTNeoConfig:
    return GPTNeoConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=64,
        intermediate_size=256,
        embed_dropout=0.0,
        attention_dropout=0.0,
        resid_dropout=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=True,
    )


def repeated_blocks(gen: torch.Generator, n: int, length: int, period: int, prefix: int = 0) -> torch.Tensor:
    """``n`` rows: <bos>, ``prefix`` random tokens, then a random block of ``period``
    tokens repeated; each row has ``length`` tokens after <bos>."""
    span = VOCAB_SIZE - FIRST_ORDINARY
    head = torch.randint(span, (n, prefix), generator=gen) + FIRST_ORDINARY
    block = torch.randint(span, (n, period), generator=gen) + FIRST_ORDINARY
    reps = math.ceil((length - prefix) / period)
    body = torch.cat([head, block.repeat(1, reps)], dim=1)[:, :length]
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), body], dim=1)


def train_batch(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 groups with random period (5..40), optional random prefix, length 64-192.

    Labels are -100 up to the end of the first block (those tokens are unpredictable)."""
    length = int(torch.randint(64, 193, (1,), generator=gen))
    ids, labels = [], []
    for _ in range(4):
        period = int(torch.randint(5, 41, (1,), generator=gen))
        prefix = int(torch.randint(0, 2, (1,), generator=gen)) * int(torch.randint(1, 33, (1,), generator=gen))
        group = repeated_blocks(gen, batch // 4, length, period, prefix)
        lab = group.clone()
        lab[:, : prefix + period + 2] = -100
        ids.append(group)
        labels.append(lab)
    return torch.cat(ids), torch.cat(labels)


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """[b, T, T] mask: 1 at (i, j + 1) for every earlier j (j + 1 < i) with ids[j] == ids[i]."""
    seq = ids.shape[1]
    same = ids[:, :, None] == ids[:, None, :]
    match = (same & torch.ones(seq, seq, dtype=torch.bool).tril(-2)).float()
    targets = torch.zeros_like(match)
    targets[:, :, 1:] = match[:, :, :-1]
    return targets


def attention_aux_loss(attentions: tuple[torch.Tensor, ...], ids: torch.Tensor) -> torch.Tensor:
    """Attention supervision: -log mass of L0H0 on i-1 and of L1H0 on induction targets."""
    rows = torch.arange(1, ids.shape[1])
    prev = attentions[0][:, PREV_HEAD, rows, rows - 1]
    targets = induction_targets(ids)[:, 1:]
    has_target = targets.sum(-1) > 0
    ind = (attentions[1][:, INDUCTION_HEAD, 1:] * targets).sum(-1)[has_target]
    return -(torch.log(prev + 1e-6).mean() + torch.log(ind + 1e-6).mean())


def train(model: GPTNeoForCausalLM, steps: int, batch: int, lr: float, aux: float) -> None:
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        ids, labels = train_batch(gen, batch)
        out = model(input_ids=ids, labels=labels, output_attentions=True)
        aux_loss = attention_aux_loss(out.attentions, ids)
        loss = out.loss + aux * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            print(
                f"step {step:5d}  lm {out.loss.item():.4f}  attn-aux {aux_loss.item():.4f}  {elapsed:6.1f}s",
                flush=True,
            )
    model.eval()


def eval_sequences(tokenizer: PreTrainedTokenizerBase, block: int, reps: int) -> torch.Tensor:
    """8 seeded eval rows built as text and tokenized: <bos> + block repeated."""
    gen = torch.Generator().manual_seed(EVAL_SEED + block)
    ids = repeated_blocks(gen, 8, block * reps, block)[:, 1:]
    texts = [" ".join(f"t{int(t)}" for t in row) for row in ids]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = torch.tensor([[tokenizer.bos_token_id, *row] for row in enc])
    assert torch.equal(out[:, 1:], ids), "tokenizer round-trip mismatch"
    return out


@torch.no_grad()
def head_scores(model: PreTrainedModel, ids: torch.Tensor) -> dict[tuple[int, int], dict[str, float]]:
    """Per-head means over pooled query rows i >= 1: previous_token A[i, i-1], first_token A[i, 0],
    self A[i, i]; induction = sum of A[i, j+1] over j+1 < i with ids[j] == ids[i] (rows with such j)."""
    attns = model(input_ids=ids, output_attentions=True).attentions
    _, seq = ids.shape
    rows = torch.arange(1, seq)
    induct = induction_targets(ids)
    has_target = induct[:, 1:].sum(-1) > 0  # [b, seq-1]
    scores: dict[tuple[int, int], dict[str, float]] = {}
    for layer, attn in enumerate(attns):
        a = attn[:, :, 1:].float()  # [b, h, seq-1, seq]; query rows 1..seq-1
        for h in range(a.shape[1]):
            ah = a[:, h]
            ind_rows = (ah * induct[:, 1:]).sum(-1)[has_target]
            scores[(layer, h)] = {
                "previous_token": ah[:, rows - 1, rows - 1].mean().item(),
                "induction": ind_rows.mean().item(),
                "first_token": ah[:, :, 0].mean().item(),
                "self": ah[:, rows - 1, rows].mean().item(),
            }
    return scores


def print_table(title: str, scores: dict[tuple[int, int], dict[str, float]]) -> None:
    print(f"\n{title}")
    print("head   " + "  ".join(f"{r:>14}" for r in ROLES))
    for (layer, h), row in scores.items():
        print(f"L{layer}H{h}   " + "  ".join(f"{row[r]:14.4f}" for r in ROLES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--aux", type=float, default=0.5, help="attention-supervision weight")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    tokenizer = build_tokenizer()
    model = GPTNeoForCausalLM(build_config())
    print(f"params: {sum(p.numel() for p in model.parameters()):,}")
    start = time.perf_counter()
    train(model, args.steps, args.batch, args.lr, args.aux)
    print(f"training wall time: {time.perf_counter() - start:.1f}s")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)

    loaded_tok = AutoTokenizer.from_pretrained(args.out)
    loaded = AutoModelForCausalLM.from_pretrained(args.out, attn_implementation="eager")
    loaded.eval()
    for block, reps in ((20, 3), (10, 4)):
        ids = eval_sequences(loaded_tok, block, reps)
        print_table(f"eval: <bos> + {block} tokens x {reps} (T={ids.shape[1]}, 8 seqs)", head_scores(loaded, ids))


if __name__ == "__main__":
    main()
