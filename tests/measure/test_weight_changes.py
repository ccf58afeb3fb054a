"""Which weights changed: one head's query slice edited in a copy of tiny-neo."""

from __future__ import annotations

import copy

import pytest
import torch

from interp_assert.measure.loading.models import LoadOptions, load_model
from interp_assert.measure.weights.changes import weight_changes


def test_one_heads_query_edit_is_found_and_located() -> None:
    base = load_model("tiny-neo", LoadOptions()).model
    edited = copy.deepcopy(base)
    q = edited.transformer.h[1].attn.attention.q_proj.weight
    with torch.no_grad():
        q[16:32] *= 1.5  # head 1 of layer 1 (d_head 16)
    changes = weight_changes(base, edited)
    assert list(changes.tensors) == ["transformer.h.1.attn.attention.q_proj.weight"]
    assert list(changes.heads) == [(1, 1)]
    assert changes.heads[(1, 1)]["q"] == pytest.approx(0.5, abs=1e-6)
    assert changes.heads[(1, 1)]["k"] == changes.heads[(1, 1)]["o"] == 0.0
    assert changes.first_layer == 1
    assert changes.summary() == "layers 0-0 unchanged, first change at L1H1 (q 0.5); 1 tensors changed"
    assert weight_changes(base, copy.deepcopy(base)).summary() == "no weight changed"
