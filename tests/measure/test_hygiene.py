"""No hook is left on a model after a run, also after one that raised; prompts of unequal length
give the same numbers however they are batched (nothing is ever padded). Real tiny-neo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from interp_assert.errors import InterpAssertError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner, measure_prompt_set
from interp_assert.spec import PromptSet, load_spec

REPO = Path(__file__).resolve().parents[2]
ROLES = frozenset({"previous_token", "first_token", "self", "focus", "breadth", "induction", "duplicate_token"})


def hooks(model: torch.nn.Module) -> dict[str, int]:
    """Every kind of hook torch keeps, on every module, and the global ones."""
    from torch.nn.modules import module as torch_module

    counts = {"modules": 0, "global": 0}
    for each in model.modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks"):  # fmt: skip
            counts["modules"] += len(getattr(each, kind, {}) or {})
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        counts["global"] += len(getattr(torch_module, name, {}) or {})
    return counts


def attention_settings(model: torch.nn.Module) -> list[Any]:
    return [getattr(m.config, "_attn_implementation", None) for m in model.modules() if hasattr(m, "config")]


def test_no_hook_is_left_after_every_property_of_the_shipped_spec() -> None:
    spec = load_spec(REPO / "model_specs" / "tiny-neo.yaml")
    runner = Runner(RunOptions())
    model = runner.model_for(spec).model
    before, settings = hooks(model), attention_settings(model)
    for entry in spec.entries:  # every property the spec uses: scores, norms, ablations, logit lens, patterns
        runner.evaluate(spec, entry)
    runner.also_capture(spec, "repeated", CaptureRequest(roles=ROLES, patterns=frozenset({(0, 0), (1, 0)})))
    runner.measurements(spec, "repeated")
    assert hooks(model) == before
    assert attention_settings(model) == settings


def test_no_hook_is_left_after_a_capture_that_raised() -> None:
    spec = load_spec(REPO / "model_specs" / "tiny-neo.yaml")
    runner = Runner(RunOptions())
    loaded = runner.model_for(spec)
    model = loaded.model
    before, settings = hooks(model), attention_settings(model)
    layer_one = model.transformer.h[1].attn.attention
    saved = layer_one.q_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layer_one.q_proj.weight.fill_(float("nan"))  # layer 1's attention turns NaN mid-forward
        prompts = PromptSet.model_validate({"bos": "prepend", "texts": ["t5 t6 t7 t8", "t9 t10"]})
        request = CaptureRequest(roles=ROLES, attention_stats=True, hidden_norms=True, logit_lens=True, losses=True)
        with pytest.raises(InterpAssertError, match=r"layer 1|non-finite|not finite"):
            measure_prompt_set(loaded, prompts, request)
        assert hooks(model) == before
        assert attention_settings(model) == settings
    finally:
        with torch.no_grad():
            layer_one.q_proj.weight.copy_(saved)


TEXTS = ["t5 t6 t7 t8 t9 t10 t11", "t20 t21 t22", "t30 t31 t32 t33 t34 t35 t36", "t40 t41 t42 t43 t44"]


def test_prompts_of_unequal_length_give_the_same_numbers_however_batched() -> None:
    """The set is measured in batches of equal length (never padded): any order of the texts, and
    each text measured alone (its rows weighted by their number), give the same scores and norms."""
    spec = load_spec(REPO / "model_specs" / "tiny-neo.yaml")
    loaded = Runner(RunOptions()).model_for(spec)
    request = CaptureRequest(roles=frozenset({"previous_token", "first_token", "self"}), hidden_norms=True)

    def measured(texts: list[str]) -> Any:
        return measure_prompt_set(loaded, PromptSet.model_validate({"bos": "prepend", "texts": texts}), request)

    together = measured(TEXTS)
    shuffled = measured([TEXTS[2], TEXTS[1], TEXTS[3], TEXTS[0]])
    for role, scores in together.role_scores.items():
        np.testing.assert_allclose(shuffled.role_scores[role], scores, atol=1e-6, err_msg=role)
    np.testing.assert_allclose(shuffled.hidden_norms, together.hidden_norms, rtol=1e-6)

    alone = [measured([text]) for text in TEXTS]
    rows = [len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TEXTS]  # BOS + n - 1
    for role, scores in together.role_scores.items():
        weighted = sum(r * m.role_scores[role] for r, m in zip(rows, alone, strict=True)) / sum(rows)
        np.testing.assert_allclose(weighted, scores, atol=1e-6, err_msg=role)
    pad = loaded.tokenizer.pad_token_id
    assert pad is None or all(pad not in loaded.tokenizer(t)["input_ids"] for t in TEXTS)
