"""Train a 2-layer GPT-Neo with the language-modelling loss alone and keep checkpoints along the
way, so ``interp-assert track`` can show an induction head forming (Olsson et al. 2022).

Run from the repository root (CPU only, offline)::

    python scripts/train_phase_change.py [--out examples/phase-change] [--steps 1000]

About 45 s on 2 cores. Checkpoints every 50 steps up to step 500 (the induction head forms
there), then every 250: 13 of them, about 3.4 MB.

The model and tokenizer are ``scripts/train_tiny_neo.py``'s (2 layers, 64 wide, 4 heads, vocab
64); the data are random blocks of period 5-20 repeated to 64 tokens, the first block's tokens
unlabelled; there is no attention supervision: nothing tells any head what to do. Seeds are fixed and torch runs on
2 threads, so a rerun gives the same weights. Each checkpoint (``checkpoint-<step>``) is saved
with ``save_pretrained`` in float16 (about 250 KB) beside the tokenizer files.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_neo import TRAIN_SEED, build_config, build_tokenizer, repeated_blocks

REPO_ROOT = Path(__file__).resolve().parent.parent
LENGTH = 64  # tokens after <bos>: short rows keep a step near 0.1 s on 2 cores


def train_batch(generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` rows of <bos> + a random block (period 5-20, drawn per quarter of the batch)
    repeated to 64 tokens; the first block's tokens are unlabelled (nothing can predict them)."""
    ids, labels = [], []
    for _ in range(4):
        period = int(torch.randint(5, 21, (1,), generator=generator))
        rows = repeated_blocks(generator, batch // 4, LENGTH, period)
        unlabelled = rows.clone()
        unlabelled[:, : period + 2] = -100
        ids.append(rows)
        labels.append(unlabelled)
    return torch.cat(ids), torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "phase-change")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50, help="save every this many steps up to --dense-until")
    parser.add_argument("--dense-until", type=int, default=500)
    parser.add_argument("--then", type=int, default=250, help="save every this many steps after that")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    from transformers import GPTNeoForCausalLM

    model = GPTNeoForCausalLM(build_config())
    tokenizer = build_tokenizer()
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))
        ),
    )

    def save(step: int) -> None:
        folder = args.out / f"checkpoint-{step}"
        copy.deepcopy(model).eval().to(torch.float16).save_pretrained(folder)  # training goes on in float32
        tokenizer.save_pretrained(folder)

    start = time.perf_counter()
    model.train()
    save(0)
    for step in range(1, args.steps + 1):
        ids, labels = train_batch(generator, args.batch)
        loss = model(input_ids=ids, labels=labels).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % (args.every if step <= args.dense_until else args.then) == 0:
            save(step)
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.1f}s", flush=True)


if __name__ == "__main__":
    main()
