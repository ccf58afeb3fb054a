"""Peak host memory of loading a model, against the size of its weights on disk.

    python benchmarks/load_memory.py            # SmolLM2 and a Llama-3.2-1B-shaped model (about 3 minutes)
    python benchmarks/load_memory.py --small    # a ~500M-parameter Llama instead of the 1B one

Each case loads the model with ``interp_assert.measure.loading.models.load_model`` in a fresh subprocess and
reads the process's resident-set high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) just
before the load (after importing torch and transformers) and just after it. Printed per case:

- ``peak``: the high-water mark after the load, the whole process;
- ``load``: that minus the high-water mark before it: what loading itself added at its peak;
- ``+forward``: the high-water mark after one 8-token forward pass, minus the one before the
  load. Safetensors are memory-mapped and a weight's pages become resident only when read, so
  ``load`` can be far below the weights' size; the forward pass reads every weight once, so
  ``+forward`` is what holding the model really costs (file pages of the page cache included);
- each as a ratio to the weights' size on disk (``*.safetensors``). Target: under 1.3x;
- ``disk``: how many modules of the device map were offloaded to disk.

The parent process never imports torch (the models are prepared in a child of their own):
Linux carries a process's ``ru_maxrss`` across ``fork`` and ``exec``, so a large parent would
raise every child's reading.

Ways to load:

- ``plain``: the default path (``device: cpu``);
- ``device_map``: ``device_map: auto`` (accelerate places the weights; on a machine without a
  GPU everything lands on the CPU);
- ``offload``: ``device_map: auto`` with ``max_memory`` for the CPU at half the weights' size,
  so accelerate offloads the rest to disk (read back per forward pass).

Models: SmolLM2-135M-Instruct (the GGUF converted to float32 safetensors, as the alias loads it)
and a model of Llama-3.2-1B's shape (16 layers, 2048 wide, 32 query / 8 key-value heads, vocab
128256, tied embeddings: 1.24 B parameters) with random bfloat16 weights, written shard by
shard so that building it never holds more than one shard in memory, loaded in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/interp_assert_bench")
SHARD_BYTES = 512 << 20
MODES = ("plain", "device_map", "offload")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a ~500M-parameter Llama instead of the 1B one")
    parser.add_argument("--work", type=Path, default=WORK, help=f"where the random model is written (default {WORK})")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DTYPE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.prepare:
        print(json.dumps([str(smollm2()), str(random_llama(args.work, small=args.small))]))
        return 0
    # This process stays small (no torch): a child's ru_maxrss starts from its parent's at fork.
    command = [sys.executable, __file__, "--work", str(args.work), "--prepare", *(["--small"] if args.small else [])]
    prepared = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if prepared.returncode != 0:
        raise SystemExit(f"preparing the models failed:\n{prepared.stderr[-3000:]}")
    smollm2_dir, llama_dir = json.loads(prepared.stdout.strip().splitlines()[-1])
    name = "Llama-500M-shaped (bfloat16)" if args.small else "Llama-3.2-1B-shaped (bfloat16)"
    models = [("SmolLM2-135M (float32)", Path(smollm2_dir), "float32"), (name, Path(llama_dir), "bfloat16")]
    print(f"parent high-water before the cases: {gib(high_water())} (children start from this at fork)")
    print(
        f"{'model':31} {'mode':10} {'weights':>9} {'peak':>9} {'x':>6} {'load':>9} {'x':>6} "
        f"{'+forward':>9} {'x':>6} {'seconds':>7} disk"
    )
    for label, path, dtype in models:
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        for mode in MODES:
            result = run_child(mode, dtype, path, args.work)
            peak, before, forward = result["peak"], result["before"], result["forward"]
            print(
                f"{label:31} {mode:10} {gib(size):>9} {gib(peak):>9} {peak / size:>5.2f}x "
                f"{gib(peak - before):>9} {(peak - before) / size:>5.2f}x "
                f"{gib(forward - before):>9} {(forward - before) / size:>5.2f}x {result['seconds']:>7.1f} "
                f"{result['modules_on_disk']}",
                flush=True,
            )
    return 0


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def run_child(mode: str, dtype: str, path: Path, work: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--work", str(work), "--child", mode, dtype, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{mode} load of {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def high_water() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def child(mode: str, dtype: str, path: str) -> int:
    sys.path.insert(0, str(ROOT))
    import torch  # imported before the first reading: the baseline holds the libraries
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from interp_assert.measure.loading.models import LoadOptions, input_device, load_model

    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    options = LoadOptions(dtype=dtype)  # type: ignore[arg-type]
    if mode == "device_map":
        options = LoadOptions(dtype=dtype, device_map="auto")  # type: ignore[arg-type]
    elif mode == "offload":
        offload = WORK / f"offload-{Path(path).name}"
        shutil.rmtree(offload, ignore_errors=True)
        options = LoadOptions(
            dtype=dtype,  # type: ignore[arg-type]
            device_map="auto",
            max_memory=(("cpu", size // 2),),
            offload_folder=offload,
        )
    before = high_water()
    started = time.perf_counter()
    loaded = load_model(path, options)
    seconds = time.perf_counter() - started
    peak = high_water()
    placed = getattr(loaded.model, "hf_device_map", None)
    on_disk = sum(1 for device in (placed or {}).values() if device == "disk")
    # Safetensors are memory-mapped: a weight's pages become resident when first read. One short
    # forward pass reads every weight, so this high-water mark holds them all.
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], device=input_device(loaded)), use_cache=False)
    after_forward = high_water()
    result = {"before": before, "peak": peak, "forward": after_forward, "seconds": seconds, "modules_on_disk": on_disk}
    print(json.dumps(result))
    return 0


def smollm2() -> Path:
    sys.path.insert(0, str(ROOT))
    from interp_assert.measure.loading.models import ALIASES, LoadOptions, gguf_as_safetensors

    return gguf_as_safetensors(ALIASES["smollm2-135m-instruct"](), LoadOptions())


def random_llama(work: Path, *, small: bool) -> Path:
    """A Llama-3.2-1B-shaped model (or ~500M with ``small``) with random bfloat16 weights, written
    shard by shard from a meta-device skeleton (only one shard's tensors exist at a time)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    name = "llama-500m-random-bf16" if small else "llama-1b-random-bf16"
    target = work / name
    if (target / "model.safetensors.index.json").exists():
        return target
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=1536 if small else 2048,
        intermediate_size=6144 if small else 8192,
        num_hidden_layers=12 if small else 16,
        num_attention_heads=24 if small else 32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        dtype="bfloat16",
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    staging = work / f".{name}-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    names: list[str] = []

    def flush() -> None:
        if shard:
            file = f"model-{len(names) + 1:05d}.safetensors"
            save_file(shard, str(staging / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            names.append(file)
            shard.clear()

    total = 0
    for parameter_name, parameter in skeleton.state_dict().items():
        if parameter_name == "lm_head.weight":  # tied to the embeddings
            continue
        if parameter_name.endswith("norm.weight"):
            tensor = torch.ones(parameter.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(parameter.shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[parameter_name] = tensor
        total += tensor.numel() * 2
        if sum(t.numel() * 2 for t in shard.values()) >= SHARD_BYTES:
            flush()
    flush()
    final = {old: f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i, old in enumerate(names)}
    for old, new in final.items():
        (staging / old).rename(staging / new)
    index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(staging)
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        source = smollm2() / tokenizer_file
        if source.exists():
            shutil.copyfile(source, staging / tokenizer_file)
    staging.rename(target)
    return target


if __name__ == "__main__":
    sys.exit(main())
