"""Hub ids as transformers loads them: a real local hub cache (``HF_HOME/hub/models--org--name``
with ``refs/`` and ``snapshots/<sha>/``), read offline (``HF_HUB_OFFLINE=1``), by id, by branch
and by full commit sha; a revision the cache lacks is one line saying how to pre-fetch it.

No network is used or mocked: the cache is built on disk from real saved models, exactly as
``hf download`` leaves it.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from interp_assert.drift.snapshot import revision_change
from interp_assert.errors import ModelLoadError
from interp_assert.measure.capture.prompts import PromptBatch
from interp_assert.measure.capture.run import measure
from interp_assert.measure.loading import hub
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, content_hash, environment, load_model
from interp_assert.measure.measurements import CaptureRequest
from tests.builders import hub_cache, llama_config, save_model

REPO = "tiny-org/tiny-llama"
REQUEST = CaptureRequest(roles=frozenset({"previous_token", "first_token"}), hidden_norms=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two checkpoints of one architecture: different random weights (seeds 1 and 2)."""
    return {
        "main": save_model(llama_config(), tmp_path_factory.mktemp("seed1"), seed=1),
        "v2": save_model(llama_config(), tmp_path_factory.mktemp("seed2"), seed=2),
    }


@pytest.fixture()
def cache(saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``HF_HOME`` pointing at a hub cache of REPO with branches main (seed 1) and v2 (seed 2), offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache(tmp_path / "hf", REPO, saved)


def _tokens() -> list[PromptBatch]:
    import torch

    generator = torch.Generator().manual_seed(0)
    block = torch.randint(4, 64, (2, 10), generator=generator)
    return [PromptBatch(torch.cat([torch.zeros(2, 1, dtype=torch.long), block, block], dim=1))]


def _score(loaded: LoadedModel) -> np.ndarray:
    return measure(loaded, _tokens(), REQUEST).role_scores["previous_token"]


def test_the_cache_is_laid_out_as_the_hub_leaves_it(cache: dict[str, str], tmp_path: Path) -> None:
    repo = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-llama"
    assert (repo / "refs" / "main").read_text() == cache["main"]
    snapshot = repo / "snapshots" / cache["v2"]
    assert (snapshot / "model.safetensors").is_symlink()
    assert (snapshot / "model.safetensors").resolve().parent == (repo / "blobs").resolve()
    assert hub.cached_revisions(REPO) == ["main", "v2"]


def test_by_id_branch_and_commit(cache: dict[str, str], saved: dict[str, Path]) -> None:
    by_id = load_model(REPO, LoadOptions())
    by_branch = load_model(REPO, LoadOptions(revision="v2"))
    by_commit = load_model(REPO, LoadOptions(revision=cache["v2"]))
    main_local = load_model(str(saved["main"]), LoadOptions())
    v2_local = load_model(str(saved["v2"]), LoadOptions())
    # what was resolved: the snapshot folder read, and its commit
    assert by_id.commit == cache["main"] and Path(by_id.source).name == cache["main"]
    assert by_branch.commit == by_commit.commit == cache["v2"]
    assert content_hash(by_branch.source) == content_hash(str(saved["v2"])) != "unknown"
    # different revisions load different weights, proven by a measured number
    main_scores, v2_scores = _score(by_id), _score(by_branch)
    assert np.abs(main_scores - v2_scores).max() > 1e-4  # 1000x the agreement of equal weights below
    np.testing.assert_allclose(main_scores, _score(main_local), atol=1e-7)
    np.testing.assert_allclose(v2_scores, _score(v2_local), atol=1e-7)
    np.testing.assert_allclose(_score(by_commit), v2_scores, atol=1e-7)


def test_the_revision_is_recorded(cache: dict[str, str]) -> None:
    recorded = environment(load_model(REPO, LoadOptions(revision="v2")))
    assert (recorded["revision"], recorded["commit"]) == ("v2", cache["v2"])
    plain = environment(load_model(REPO, LoadOptions()))
    assert "revision" not in plain and plain["commit"] == cache["main"]


def test_a_revision_the_cache_lacks_says_how_to_fetch_it(cache: dict[str, str]) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(REPO, LoadOptions(revision="v9"))
    message = str(caught.value)
    assert "\n" not in message
    assert f"model '{REPO}' at revision 'v9' is not a known alias" in message
    assert "it holds main, v2" in message and "HF_HUB_OFFLINE is set, so it cannot be downloaded offline" in message
    assert f"pre-fetch it with `hf download {REPO} --revision v9`" in message
    fetch = r"`hf download tiny-org/missing`"
    with pytest.raises(ModelLoadError, match=r"'tiny-org/missing' is not .*" + fetch):
        load_model("tiny-org/missing", LoadOptions())


def test_a_revision_of_a_local_folder_or_alias_is_refused(saved: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"is a local path .*so revision 'v2' cannot apply"):
        load_model(str(saved["main"]), LoadOptions(revision="v2"))
    with pytest.raises(ModelLoadError, match=r"'tiny-neo' is a built-in alias, so revision 'main' cannot apply"):
        load_model("tiny-neo", LoadOptions(revision="main"))


@pytest.mark.parametrize("revision", ["../../etc", "main branch", "-rf", "a..b", "x.lock", ""])
def test_bad_revisions_are_named(revision: str) -> None:
    assert hub.revision_problem(revision) == f"revision {revision!r} is not valid; give {hub.VALID_REVISION}"


def test_revision_change_note() -> None:
    old = {"model": REPO, "revision": "main", "commit": "a" * 40}
    assert revision_change(old, dict(old)) == ""
    assert revision_change({"model": "x"}, {"model": "x"}) == ""  # local models record no revision
    assert revision_change(old, old | {"revision": "v2", "commit": "b" * 40}) == (
        f"the snapshot was recorded at revision 'main' (commit {'a' * 12}); "
        f"this run measures revision 'v2' (commit {'b' * 12})"
    )
    # main moved: same name, another commit
    assert "commit bbbbbbbbbbbb" in revision_change(old, old | {"commit": "b" * 40})


SPEC = """\
model: {model}
{header}prompts:
  rep:
    bos: prepend
    random_tokens: {{length: 10, repeats: 2, count: 2, seed: 0}}
expectations:
  - name: fingerprint
    property: snapshot
    prompts: rep
  - name: prev
    property: head_score
    head: L0H0
    role: previous_token
    prompts: rep
    at_least: 0.0
"""


def test_pytest_run_pins_revisions_and_names_them_in_drift(cache: dict[str, str], pytester: pytest.Pytester) -> None:
    specs = pytester.path / "model_specs"
    specs.mkdir()
    (specs / "hub.yaml").write_text(SPEC.format(model=REPO, header="revision: main\n"))
    recorded = pytester.runpytest("model_specs", "--snapshot-update")
    recorded.assert_outcomes(passed=2)
    ambr = (specs / "__snapshots__" / "hub.ambr").read_text()
    assert "  revision = main\n" in ambr and f"  commit = {cache['main']}\n" in ambr

    moved = pytester.runpytest("model_specs", "--interp-revision", f"{REPO}=v2", "--junitxml=out.xml")
    moved.assert_outcomes(passed=1, failed=1)
    moved.stdout.fnmatch_lines(
        [
            f"*the snapshot was recorded at revision 'main' (commit {cache['main'][:12]}); "
            f"this run measures revision 'v2' (commit {cache['v2'][:12]})*"
        ]
    )
    properties = dict((p.get("name"), p.get("value")) for p in ET.parse(pytester.path / "out.xml").iter("property"))
    assert properties["revision"] == "v2" and properties["commit"] == cache["v2"]
    assert properties["weights_sha256"] != "unknown"

    typo = pytester.runpytest("model_specs", "--interp-revision", "tiny-org/other=v2")
    assert typo.ret == pytest.ExitCode.USAGE_ERROR
    typo.stderr.fnmatch_lines(["*--interp-revision tiny-org/other=v2: no collected spec uses a model named*"])

    missing = pytester.runpytest("model_specs", "--interp-revision", f"{REPO}=v9")
    missing.assert_outcomes(errors=2)
    fetch = f"hf download {REPO} --revision v9"
    missing.stdout.fnmatch_lines([f"*at revision 'v9' is not a known alias*{fetch}*"])


def test_discover_keeps_the_revision(cache: dict[str, str], tmp_path: Path) -> None:
    from interp_assert.commands.cli import main

    output = tmp_path / "found.yaml"
    assert main(["discover", REPO, "--revision", "v2", "-o", str(output)]) == 0
    text = output.read_text()
    assert re.search(r"^model: tiny-org/tiny-llama\nrevision: v2\n", text, re.MULTILINE)


def test_smollm2_from_a_hub_cache(smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real SmolLM2 weights (the converted GGUF), laid out as a hub cache by symlinks, load by their hub id."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commits = hub_cache(tmp_path / "hf", "HuggingFaceTB/SmolLM2-135M-Instruct", {"main": smollm2_dir}, link=True)
    from_hub = load_model("HuggingFaceTB/SmolLM2-135M-Instruct", LoadOptions())
    assert from_hub.commit == commits["main"]
    assert json.loads((Path(from_hub.source) / "config.json").read_text())["num_hidden_layers"] == 30
    texts = from_hub.tokenizer("The old lighthouse keeper climbed the stairs.", add_special_tokens=False).input_ids
    import torch

    batch = [PromptBatch(torch.tensor([[from_hub.tokenizer.bos_token_id, *texts]]))]
    local = load_model(str(smollm2_dir), LoadOptions())
    hub_scores = measure(from_hub, batch, REQUEST).role_scores["previous_token"]
    np.testing.assert_allclose(hub_scores, measure(local, batch, REQUEST).role_scores["previous_token"], atol=1e-7)


def test_an_unreachable_hub_is_said_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online but nothing answers (here: a closed local port as the endpoint): one line naming the
    endpoint, instead of a minute of download retries; no proxy is involved."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    wanted = r"from the Hugging Face hub \(cannot reach http://127\.0\.0\.1:9 \(ConnectionRefusedError"
    with pytest.raises(ModelLoadError, match=wanted):
        load_model("someone/some-model", LoadOptions())
