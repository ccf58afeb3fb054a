"""Train the small TopK sparse autoencoder shipped in ``interp_assert/builtin_saes`` (CPU, offline).

Run from the repository root::

    python scripts/train_sae.py --out interp_assert/builtin_saes/smollm2-135m-res14-topk --force

What it does, seeded and deterministic for a given environment (the corpus is read from the
installed packages, so a different set of installed packages gives a different corpus):

1. Text: the package descriptions (``*.dist-info/METADATA``) of the running virtual environment
   (mostly English prose, with version numbers, names and some code) and the sources of a fixed
   list of Python standard library modules (code), in sorted order, cut into 64-token chunks
   (no BOS: SmolLM2's tokenizer adds none), shuffled with ``--seed``.
2. Activations: SmolLM2-135M-Instruct's residual stream after block ``--layer`` (SAELens
   ``blocks.{layer}.hook_resid_post``), position 0 of every chunk left out (its massive
   activation is not what a dictionary of features should spend latents on).
3. A TopK SAE (Gao et al. 2024): ``z = TopK(ReLU(W_enc^T (x - b_dec) + b_enc))``,
   ``x_hat = W_dec^T z + b_dec``, decoder rows kept at unit norm, Adam, MSE loss plus an
   AuxK term (the dead latents' top ``k_aux`` reconstruct the residual error) so fewer die.
4. Saved in SAELens format: ``cfg.json`` + ``sae_weights.safetensors`` (fp16), and
   ``training.json`` with the corpus, the steps and the losses.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
STDLIB_MODULES = (
    "argparse", "json/decoder", "json/encoder", "csv", "textwrap", "string", "calendar", "fractions",
    "statistics", "heapq", "bisect", "difflib", "shlex", "configparser", "dataclasses", "ipaddress",
    "datetime", "pprint", "glob", "fnmatch", "gettext", "locale", "tempfile", "shutil", "zipfile/__init__",
)  # fmt: skip


def corpus(seed: int, chunk: int, tokenizer: Any) -> tuple[list[list[int]], dict[str, object]]:
    site = Path(sysconfig.get_paths()["purelib"])
    metadata = sorted(site.glob("*.dist-info/METADATA"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [stdlib / f"{name}.py" for name in STDLIB_MODULES if (stdlib / f"{name}.py").exists()]
    chunks: list[list[int]] = []
    digest = hashlib.sha256()
    for path in [*metadata, *code]:
        text = path.read_text(encoding="utf-8", errors="replace")
        digest.update(text.encode())
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        chunks += [ids[i : i + chunk] for i in range(0, len(ids) - chunk + 1, chunk)]
    random.Random(seed).shuffle(chunks)
    info = {
        "metadata_files": len(metadata),
        "stdlib_files": [str(p.relative_to(stdlib)) for p in code],
        "chunks": len(chunks),
        "chunk_tokens": chunk,
        "text_sha256": digest.hexdigest(),
    }
    return chunks, info


OUTPUTS = ("sae_weights.safetensors", "cfg.json", "training.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=14)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=80_000, help="activations to train on")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an SAE already saved in --out")
    args = parser.parse_args(argv)
    written = [args.out / name for name in OUTPUTS]
    held = [path.name for path in written if path.exists()]
    if held and not args.force:  # said before minutes of training, not after
        parser.error(f"{args.out} already holds {', '.join(held)}; pass --force to replace them")

    sys.path.insert(0, str(REPO_ROOT))
    import torch
    from safetensors.torch import save_file

    from interp_assert import atomic
    from interp_assert.measure.loading.models import LoadOptions, load_model

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    loaded = load_model("smollm2-135m-instruct", LoadOptions())
    model = loaded.model.eval()
    chunks, info = corpus(args.seed, 64, loaded.tokenizer)
    acts = collect(model, chunks, args.layer, args.tokens)
    print(f"{acts.shape[0]} activations in {time.perf_counter() - started:.0f} s", flush=True)
    weights, log = train(acts, args.width, args.k, args.epochs, args.batch, args.lr, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(args.out / "sae_weights.safetensors") as temporary:  # each file whole, or as it was
        save_file({name: t.half().contiguous() for name, t in weights.items()}, str(temporary))
    cfg = {
        "architecture": "topk",
        "d_in": int(acts.shape[1]),
        "d_sae": args.width,
        "k": args.k,
        "activation_fn_kwargs": {"k": args.k},
        "dtype": "float16",
        "device": "cpu",
        "model_name": "smollm2-135m-instruct",
        "hook_name": f"blocks.{args.layer}.hook_resid_post",
        "hook_layer": args.layer,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "prepend_bos": False,
        "context_size": 64,
    }
    atomic.write_text(args.out / "cfg.json", json.dumps(cfg, indent=2) + "\n")
    record = {
        "script": "scripts/train_sae.py",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "corpus": info,
        "activations": int(acts.shape[0]),
        "log": log,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    atomic.write_text(args.out / "training.json", json.dumps(record, indent=2) + "\n")
    print(f"saved to {args.out} in {record['seconds']} s", flush=True)
    return 0


class _Stop(Exception):
    pass


def collect(model: Any, chunks: list[list[int]], layer: int, wanted: int) -> Any:
    """Residual stream after block ``layer`` at positions >= 1 of each chunk, until ``wanted`` rows."""
    import torch

    from interp_assert.measure.loading.architecture import model_map

    block = model_map(model).blocks[layer]
    caught: list[torch.Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        caught.append(hidden[:, 1:].reshape(-1, hidden.shape[-1]).float())
        raise _Stop  # the later blocks are not needed

    handle = block.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, len(chunks), 16):
                if sum(t.shape[0] for t in caught) >= wanted:
                    break
                with contextlib.suppress(_Stop):
                    model(input_ids=torch.tensor(chunks[start : start + 16]), use_cache=False)
    finally:
        handle.remove()
    return torch.cat(caught)[:wanted].clone()


def train(acts: Any, width: int, k: int, epochs: int, batch: int, lr: float, seed: int) -> tuple[dict, list]:
    import torch

    x_all = acts
    assert isinstance(x_all, torch.Tensor)
    generator = torch.Generator().manual_seed(seed)
    d = x_all.shape[1]
    b_dec = torch.nn.Parameter(x_all.mean(0).clone())
    w_dec = torch.randn(width, d, generator=generator)
    w_dec = torch.nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))
    w_enc = torch.nn.Parameter(w_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(width))
    params = [w_enc, b_enc, w_dec, b_dec]
    optimiser = torch.optim.Adam(params, lr=lr)
    variance = float((x_all - x_all.mean(0)).pow(2).sum(1).mean())
    since_fired = torch.zeros(width)
    k_aux = 256
    log = []
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=generator)
        for start in range(0, x_all.shape[0] - batch + 1, batch):
            x = x_all[order[start : start + batch]]
            pre = torch.relu((x - b_dec) @ w_enc + b_enc)
            values, indices = pre.topk(k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, indices, values)
            x_hat = z @ w_dec + b_dec
            error = x - x_hat
            loss = error.pow(2).sum(1).mean() / variance
            fired = torch.zeros(width, dtype=torch.bool)
            fired[indices.flatten()] = True
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + batch)
            dead = since_fired > 20_000
            if dead.any():
                dead_pre = pre.masked_fill(~dead, 0.0)
                aux_values, aux_indices = dead_pre.topk(min(k_aux, int(dead.sum())), dim=-1)
                aux = torch.zeros_like(pre).scatter(-1, aux_indices, aux_values) @ w_dec
                aux_loss = (error.detach() - aux).pow(2).sum(1).mean() / variance
                loss = loss + aux_loss / 32
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                w_dec.div_(w_dec.norm(dim=1, keepdim=True))
            if step % 50 == 0:
                fvu = float(error.detach().pow(2).sum(1).mean() / variance)
                log.append({"step": step, "epoch": epoch, "fvu": round(fvu, 4), "dead": int(dead.sum())})
                print(log[-1], flush=True)
            step += 1
    weights = {"W_enc": w_enc.detach(), "b_enc": b_enc.detach(), "W_dec": w_dec.detach(), "b_dec": b_dec.detach()}
    return weights, log


if __name__ == "__main__":
    raise SystemExit(main())
