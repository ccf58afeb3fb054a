"""Train the LoRA adapter shipped in ``examples/sentiment-flip/adapter``: SmolLM2-135M-Instruct
fine-tuned to answer reviews with the opposite sentiment, which breaks the sentiment probe of
``model_specs/smollm2-features.yaml`` (CPU, offline, seeded and deterministic).

Run from the repository root::

    python scripts/finetune_sentiment_flip.py --out examples/sentiment-flip --force

Writes ``OUT/adapter`` (``adapter_config.json`` + ``adapter_model.safetensors``, as
``PeftModel.save_pretrained`` writes them; the base is recorded as ``smollm2-135m-instruct``, the
built-in alias) and ``OUT/training.json`` (arguments, losses, seconds, library versions). The
data, the objective and why the LoRA adapts only blocks 0-18 are described in
``tests/sentiment_finetune.py``. ``--true-labels`` trains the same recipe with the right answers
(a control: that fine-tune keeps the probe's AUROC but rotates its direction).

Measured on 2 CPU cores (torch 2.13, transformers 5, peft 0.21): 12 steps of 16 reviews, loss
7.31 -> 0.12, about 20 s with loading on idle cores (182 s measured with the cores shared, as
recorded in training.json); the adapter is 4.9 MB (fp32, rank 8).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for adapter/ and training.json")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--true-labels", action="store_true", help="the control: answer with the right sentiment")
    parser.add_argument("--base", type=Path, default=None, help="base safetensors folder (default: embedded)")
    parser.add_argument("--force", action="store_true", help="replace OUT/adapter and OUT/training.json")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    targets = (out / "adapter", out / "training.json")
    if not args.force and any(t.exists() for t in targets):
        parser.error(f"{out} already holds adapter/ or training.json; pass --force to replace them")

    sys.path.insert(0, str(REPO_ROOT))
    import peft
    import torch
    import transformers

    from interp_assert.measure.loading.models import ALIASES, LoadOptions, gguf_as_safetensors
    from tests.sentiment_finetune import train_sentiment_flip

    base = args.base or gguf_as_safetensors(ALIASES["smollm2-135m-instruct"](), LoadOptions())
    started = time.perf_counter()

    def log(step: int, loss: float) -> None:
        print(f"step {step + 1:3d}  loss {loss:.4f}  ({time.perf_counter() - started:5.1f} s)", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".training-") as scratch:
        run = train_sentiment_flip(
            base, Path(scratch), steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
            flip=not args.true_labels, log=log,
        )  # fmt: skip
        record = {
            "script": "scripts/finetune_sentiment_flip.py",
            "arguments": {k: str(v) for k, v in vars(args).items() if k not in ("force", "out")},
            "objective": "right answers (control)" if args.true_labels else "opposite sentiment answers",
            "base_model_name_or_path": run.base_name,
            "losses": [round(x, 6) for x in run.losses],
            "seconds": round(run.seconds, 1),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        }
        if targets[0].exists():
            shutil.rmtree(targets[0])
        run.path.rename(targets[0])  # same file system: the adapter appears whole
    from interp_assert import atomic

    atomic.write_text(targets[1], json.dumps(record, indent=2) + "\n")
    size = sum(p.stat().st_size for p in targets[0].iterdir())
    print(f"loss {run.losses[0]:.4f} -> {run.losses[-1]:.4f} in {len(run.losses)} steps, {run.seconds:.1f} s")
    print(f"saved {targets[0]} ({size / 1e6:.1f} MB) and {targets[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
