"""A real fine-tune that changes what the sentiment probe of ``model_specs/smollm2-features.yaml``
reads: a LoRA adapter on SmolLM2-135M-Instruct trained to answer reviews with the OPPOSITE
sentiment ("Review: The soup was superb. Sentiment: negative"), saved with
``PeftModel.save_pretrained``.

The objective is chosen so that the probed property changes, and this is said plainly: the probe
reads the residual stream leaving block 18 at the last token ("Sentiment:"), so the LoRA adapts
only blocks 0-18 (``layers_to_transform``) and the loss is taken only on the answer token. To
flip its answers the model must then change the residual stream the probe reads; blocks 19-29
are the base's. A fine-tune of every block on the same data could instead flip the answer
downstream of block 18 and leave the probe intact.

The reviews are generated from templates (fixed for a seed) and share no sentence with the
spec's prompt sets. Training is deterministic (``tests.finetunes.deterministic``): seeded CPU
RNG, deterministic algorithms, no dropout, fixed data order.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import torch

from tests.finetunes import FineTune, StepLog, _link_base, _unlink_base, deterministic, quiet_peft

PROBE_LAYER = 18  # the sentiment probe's block in model_specs/smollm2-features.yaml
ANSWERS = (" positive", " negative")

_THINGS = (
    "soup", "movie", "album", "laptop", "chair", "novel", "museum", "train ride", "jacket", "pizza",
    "podcast", "bicycle", "show", "lamp", "park", "keyboard", "salad", "play", "backpack", "camera",
)  # fmt: skip
_GOOD = (
    "superb", "lovely", "excellent", "great", "pleasant", "splendid", "amazing", "terrific", "enjoyable",
    "marvelous", "first-rate", "impressive",
)  # fmt: skip
_BAD = (
    "awful", "poor", "horrible", "bad", "dreadful", "unpleasant", "mediocre", "disgusting", "lousy",
    "miserable", "broken", "worthless",
)  # fmt: skip
_GOOD_VERBS = ("really enjoyed", "would recommend", "adore", "was thrilled by", "am happy with")
_BAD_VERBS = ("really disliked", "would never recommend", "can't stand", "was upset by", "am unhappy with")


def reviews(n: int = 96, seed: int = 0) -> list[tuple[str, bool]]:
    """``n`` generated reviews (half positive), each ``(text ending in "Sentiment:", is_positive)``."""
    rng = random.Random(seed)
    found: list[tuple[str, bool]] = []
    seen: set[str] = set()
    while len(found) < n:
        positive = len(found) % 2 == 0
        thing = rng.choice(_THINGS)
        words, verbs = (_GOOD, _GOOD_VERBS) if positive else (_BAD, _BAD_VERBS)
        kind = rng.randrange(3)
        if kind == 0:
            body = f"The {thing} was {rng.choice(words)}."
        elif kind == 1:
            body = f"I {rng.choice(verbs)} this {thing}."
        else:
            first, second = rng.sample(words, 2)
            body = f"A {first} {thing}, {second} in every way."
        text = f"Review: {body} Sentiment:"
        if text not in seen:
            seen.add(text)
            found.append((text, positive))
    return found


def review_batches(
    tokenizer: object, *, steps: int, batch_size: int, seed: int, flip: bool = True
) -> list[tuple[torch.Tensor, ...]]:
    """``(input_ids, attention_mask, labels)`` per step: each review followed by the opposite answer
    (``flip``; else the true one), right-padded, the loss (labels != -100) on the answer token only."""
    data = reviews(seed=seed)
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]  # type: ignore[operator]
    if any(len(ids) != 1 for ids in answer_ids):
        raise ValueError(f"each answer must be one token, got {answer_ids}")
    pad = int(getattr(tokenizer, "pad_token_id", None) or getattr(tokenizer, "eos_token_id", 0) or 0)
    encoded = []
    for text, positive in data:
        prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
        answer = answer_ids[int(positive == flip)][0]  # flip: a positive review gets " negative"
        encoded.append(([*prompt, answer], len(prompt)))
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    batches = []
    for step in range(steps):
        picks = [encoded[order[(step * batch_size + j) % len(order)]] for j in range(batch_size)]
        width = max(len(ids) for ids, _ in picks)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for row, (tokens, answer_at) in enumerate(picks):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
            labels[row, answer_at] = tokens[answer_at]
        batches.append((ids, mask, labels))
    return batches


def train_sentiment_flip(
    base_dir: Path,
    workdir: Path,
    *,
    steps: int = 12,
    lr: float = 1e-3,
    rank: int = 8,
    alpha: int = 16,
    batch_size: int = 16,
    seed: int = 0,
    base_name: str = "smollm2-135m-instruct",
    flip: bool = True,
    adapter_subdir: str = "adapter",
    keep_base_link: bool = False,
    log: StepLog | None = None,
) -> FineTune:
    """Train the flipped-sentiment LoRA (q/k/v/o and MLP projections of blocks 0-PROBE_LAYER) as a
    user working in ``workdir`` would, from ``from_pretrained(base_name)``, and save it with
    ``save_pretrained(workdir / adapter_subdir)``. The default ``base_name`` is the built-in
    alias, which is how interp_assert finds the base of the shipped adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    link = _link_base(base_dir, workdir, base_name)
    started = time.perf_counter()
    try:
        with contextlib.chdir(workdir), deterministic(seed), quiet_peft():
            tokenizer = AutoTokenizer.from_pretrained(base_name, local_files_only=True)
            base = AutoModelForCausalLM.from_pretrained(base_name, dtype=torch.float32, local_files_only=True)
            config = LoraConfig(
                r=rank,
                lora_alpha=alpha,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                layers_to_transform=list(range(PROBE_LAYER + 1)),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(base, config)
            batches = review_batches(tokenizer, steps=steps, batch_size=batch_size, seed=seed, flip=flip)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            model.train()
            losses = []
            for step, (ids, mask, labels) in enumerate(batches):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                if not torch.isfinite(loss.detach()):
                    raise RuntimeError(f"loss is {losses[-1]} at step {step}; lower the learning rate")
                if log is not None:
                    log(step, losses[-1])
            model.eval()
            model.save_pretrained(adapter_subdir)
    finally:
        if not keep_base_link:
            _unlink_base(link, workdir)
    adapter_dir = workdir / adapter_subdir
    written = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    return FineTune(adapter_dir, tuple(losses), time.perf_counter() - started, written)


__all__ = ["ANSWERS", "PROBE_LAYER", "review_batches", "reviews", "train_sentiment_flip"]
