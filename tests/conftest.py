from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests' caches (converted GGUF, native kernel, its signing key) live in the checkout, never in
# the user's home; pytester points HOME at a temporary folder, so they are fixed here, once.
os.environ.setdefault("INTERP_ASSERT_CACHE", str(Path(__file__).resolve().parent.parent / ".test-cache"))
os.environ.setdefault("XDG_CONFIG_HOME", str(Path(os.environ["INTERP_ASSERT_CACHE"]) / "config"))
# The tests never reach the network: a hub id is read from the local cache (tests/measure/test_hub.py builds one).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pytester's in-process runs drop modules first imported inside them; transformers' lazy
# modules do not survive that, so import what the runs need here, once.
import transformers
import transformers.modeling_gguf_pytorch_utils  # noqa: F401
from transformers import GPTNeoForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401

# Likewise matplotlib: a figure module re-imported after a pytester run is a second copy whose
# classes the first copy's objects do not match ("'Figure' object has no attribute 'items'").
import interp_assert.figures.diff_figures
import interp_assert.figures.heatmaps  # noqa: F401
from tests.builders import llama_config, save_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def uniform_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head (2 KV heads) Llama whose heads all attend uniformly."""
    return save_model(llama_config(), tmp_path_factory.mktemp("uniform_llama"), zero_queries=True)


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(llama_config(), tmp_path_factory.mktemp("random_llama"), seed=1)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2's GGUF converted (once, cached) to a safetensors directory."""
    from interp_assert.measure.loading.models import ALIASES, LoadOptions, gguf_as_safetensors

    return gguf_as_safetensors(ALIASES["smollm2-135m-instruct"](), LoadOptions())


# ``pytest -m quick``: a subset that runs in about a minute on 2 idle cores (docs/development.md) and
# still crosses every layer: the spec and its schema, the scores, the import layers, every verb's
# exit status on the built-in tiny-neo, a track killed and resumed, the result cache, hook hygiene.
QUICK = (
    "tests/spec/test_spec.py",
    "tests/measure/test_scores.py",
    "tests/drift/test_drift_summary.py",
    "tests/test_layering.py",
    "tests/commands/test_exit_codes.py",
    "tests/commands/test_track_state.py",
    "tests/test_result_cache.py",
    "tests/measure/test_hygiene.py",
    "tests/pytest_plugin/test_gates.py::test_gate_rules",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that loads SmolLM2 (through the fixture, or a spec naming it) is ``slow``: derived, not hand-marked.
    A test in :data:`QUICK` is ``quick``."""
    for item in items:
        if "smollm2_dir" in getattr(item, "fixturenames", ()) or "smollm2" in item.nodeid:
            item.add_marker(pytest.mark.slow)
        if item.nodeid.startswith(QUICK):
            item.add_marker(pytest.mark.quick)
