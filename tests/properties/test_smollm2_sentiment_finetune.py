"""A real fine-tune fails the shipped sentiment probe: the LoRA adapter in
``examples/sentiment-flip/adapter`` (scripts/finetune_sentiment_flip.py, 12 steps on reviews
answered with the opposite sentiment, blocks 0-18 only; see tests/sentiment_finetune.py), saved
by peft, run in place of SmolLM2 with ``--interp-model``.

The same recipe with the right answers is the control: the probe still separates the classes
(AUROC, selectivity and the causal check hold) and only the stored direction's cosine catches
that the representation rotated. So the flipped adapter fails for what it did to the probed
property, not merely for being a fine-tune.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

SPEC = REPO / "model_specs" / "smollm2-features.yaml"
DIRECTIONS = REPO / "model_specs" / "smollm2-features.safetensors"
SHIPPED = REPO / "examples" / "sentiment-flip" / "adapter"


def run_probe(pytester: pytest.Pytester, model: Path) -> dict[str, float]:
    """Run the shipped spec's sentiment probe on ``model``; the numbers its failure message states."""
    target = pytester.path / "model_specs"
    target.mkdir(exist_ok=True)
    shutil.copy(SPEC, target / SPEC.name)
    shutil.copy(DIRECTIONS, target / DIRECTIONS.name)
    result = pytester.runpytest(
        "model_specs", "-p", "no:cacheprovider", "-k", "sentiment", f"--interp-model=smollm2-135m-instruct={model}"
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # the adapter names the spec's own model as its base: that name is the alias here, not the adapter
    assert "base 'smollm2-135m-instruct' found the built-in alias 'smollm2-135m-instruct'" in out, out
    number = r"([-+]?\d+\.\d+)"
    found = {
        "auroc": re.search(rf"held-out AUROC of the positive_reviews/negative_reviews probe .*= {number}", out),
        "selectivity": re.search(rf"selectivity = {number}", out),
        "cosine": re.search(rf"cosine to the stored direction = {number}", out),
        "shift": re.search(rf"moves logit\(' positive'\) - logit\(' negative'\) from \S+ to \S+ \({number}", out),
    }
    missing = [k for k, v in found.items() if v is None]
    assert not missing, f"{missing} not in the output:\n{out}"
    return {k: float(v.group(1)) for k, v in found.items() if v is not None}


def test_shipped_flip_adapter_fails_the_probe(pytester: pytest.Pytester, smollm2_dir: Path) -> None:
    # base (the spec's descriptions, tests/properties/test_smollm2_features.py): AUROC 0.969, selectivity
    # 0.503, cosine 1.000, causal shift +4.451. Measured on the adapter: 0.500, -0.013, 0.074, -0.321.
    numbers = run_probe(pytester, SHIPPED)
    assert numbers["auroc"] < 0.85 and numbers["selectivity"] < 0.35
    assert numbers["cosine"] < 0.5 and numbers["shift"] < 3.0


def test_flip_recipe_reproduces_the_shipped_adapter(smollm2_dir: Path, tmp_path: Path) -> None:
    """Training again (about 20 s on 2 idle cores) gives the shipped weights: bit-identical on the
    machine that made them; elsewhere the CPU kernels may round differently, so the test asks for
    the same tensors to within a cosine of 0.999 each."""
    import torch
    from safetensors.torch import load_file

    from tests.sentiment_finetune import train_sentiment_flip

    run = train_sentiment_flip(smollm2_dir, tmp_path / "training", steps=12)
    assert run.losses[-1] < 0.25 * run.losses[0], run.losses
    assert run.base_name == "smollm2-135m-instruct"
    assert not (tmp_path / "training" / "smollm2-135m-instruct").exists(), "the base link is removed"
    fresh = load_file(str(run.path / "adapter_model.safetensors"))
    shipped = load_file(str(SHIPPED / "adapter_model.safetensors"))
    assert sorted(fresh) == sorted(shipped)
    assert any(".layers.18." in key for key in fresh) and not any(".layers.19." in key for key in fresh)
    for key, tensor in shipped.items():
        similarity = torch.nn.functional.cosine_similarity(fresh[key].flatten(), tensor.flatten(), dim=0)
        assert similarity > 0.999, (key, float(similarity))


def test_true_label_control_keeps_the_probe_and_only_rotates_it(
    pytester: pytest.Pytester, smollm2_dir: Path, tmp_path: Path
) -> None:
    from tests.sentiment_finetune import train_sentiment_flip

    run = train_sentiment_flip(smollm2_dir, tmp_path / "control", steps=12, flip=False)
    numbers = run_probe(pytester, run.path)  # measured: AUROC 1.000, selectivity 0.494, cosine 0.657, shift +15.7
    assert numbers["auroc"] >= 0.85 and numbers["selectivity"] >= 0.35 and numbers["shift"] >= 3.0
    assert numbers["cosine"] < 0.95


def test_audit_of_the_flip_adapter_fails_the_probe_and_draws_both_models(tmp_path: Path) -> None:
    """``interp-assert audit SPEC --checkpoint ADAPTER --report DIR`` on the shipped spec, kept to
    the code feature, one SAE quality item and the probe (the rest costs minutes and shows nothing new)."""
    import contextlib
    import html
    import io

    from interp_assert.commands.cli import main

    head, _, items = SPEC.read_text().partition("\nexpectations:\n")
    kept = [i for i in items.split("\n  - name: ") if i.split("\n")[0] in ("code_feature", "sentiment_probe")]
    kept += [i for i in items.split("\n  - name: ") if i.startswith("sae_ce_recovered_code")]
    assert len(kept) == 3
    spec = tmp_path / "features.yaml"
    spec.write_text(head + "\nexpectations:\n" + "".join("\n  - name: " + i.rstrip("\n") + "\n" for i in kept))
    shutil.copy(DIRECTIONS, tmp_path / DIRECTIONS.name)
    report, out = tmp_path / "report", io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["audit", str(spec), "--checkpoint", str(SHIPPED), "--report", str(report)])
    text = out.getvalue()
    assert code == 1, text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isalpha()}
    assert rows["sentiment_probe"][1] == "FAIL" and float(rows["sentiment_probe"][2]) >= 0.85, text
    assert float(rows["sentiment_probe"][3]) < 0.85
    assert rows["code_feature"][1] == "pass" and rows["sae_ce_recovered_code"][1] == "pass", text
    page = html.unescape((report / "index.html").read_text())
    cosine = re.search(r"cosine to stored direction (\S+) -> (\S+);", page)
    assert cosine is not None and float(cosine.group(1)) > 0.95 and float(cosine.group(2)) < 0.5
    for name in ("probe-sentiment_probe.png", "feature-code_feature-compare.png",
                 "feature-code_feature-checkpoint.png", "sae-quality-sae_ce_recovered_code.png"):  # fmt: skip
        assert (report / name).stat().st_size > 1000 and f"src='{name}'" in page
