"""scripts/train_sae.py is deterministic for a fixed seed: two tiny runs (64 latents, 2,048
activations of block 3, one epoch) write the same weights, byte for byte; another seed does not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_sae", REPO / "scripts" / "train_sae.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_run(out: Path, seed: int) -> tuple[bytes, dict[str, object]]:
    arguments = ["--layer", "3", "--width", "64", "--k", "4", "--tokens", "2048", "--epochs", "1", "--batch", "256"]
    assert script().main(["--out", str(out), *arguments, "--seed", str(seed)]) == 0
    return (out / "sae_weights.safetensors").read_bytes(), json.loads((out / "cfg.json").read_text())


def test_train_sae_is_deterministic_for_a_seed(smollm2_dir: Path, tmp_path: Path) -> None:
    first, cfg = tiny_run(tmp_path / "a", seed=0)
    second, cfg_again = tiny_run(tmp_path / "b", seed=0)
    assert first == second and cfg == cfg_again
    assert cfg["d_sae"] == 64 and cfg["hook_name"] == "blocks.3.hook_resid_post"
    log = json.loads((tmp_path / "a" / "training.json").read_text())
    assert log["activations"] == 2048 and log["log"], "it trained (8 steps, logged from step 0)"
    other, _ = tiny_run(tmp_path / "c", seed=1)
    assert other != first, "the seed matters: the test would notice a run that ignores it"


def test_train_sae_keeps_a_saved_sae_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An SAE already in --out is not replaced unless --force says so; refused at once, before the model loads."""
    out = tmp_path / "sae"
    out.mkdir()
    (out / "cfg.json").write_text("mine\n")
    with pytest.raises(SystemExit) as refused:
        script().main(["--out", str(out), "--tokens", "2048"])
    assert refused.value.code == 2
    assert "already holds cfg.json; pass --force" in capsys.readouterr().err
    assert (out / "cfg.json").read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == ["cfg.json"]
