"""What changed, in words: label transitions and per-layer role moves from two fingerprints."""

from __future__ import annotations

from interp_assert.drift import fingerprint as fp
from interp_assert.drift.drift_summary import span, summarise


def fingerprint(first_token: list[list[float]], labels: list[list[str]]) -> fp.Fingerprint:
    values = {f"role_scores.first_token.L{layer}": row for layer, row in enumerate(first_token)}
    return fp.Fingerprint(values, {f"role_labels.L{layer}": row for layer, row in enumerate(labels)})


def test_span_compresses_consecutive_layers() -> None:
    assert span([3, 4, 5, 9]) == "layers 3-5, 9"
    assert span([7]) == "layer 7"


def test_whole_layers_that_lost_a_role_are_one_line() -> None:
    before = fingerprint(
        [[0.1, 0.1], [0.9, 0.9], [0.9, 0.9], [0.9, 0.9], [0.1, 0.1]],
        [["broad"] * 2] + [["first_token"] * 2] * 3 + [["broad"] * 2],
    )
    after = fingerprint(
        [[0.1, 0.1], [0.3, 0.2], [0.2, 0.2], [0.4, 0.3], [0.1, 0.1]],
        [["broad"] * 2] + [["focused"] * 2] * 3 + [["broad"] * 2],
    )
    lines = summarise(before, after, atol=0.02)
    assert lines[0] == "layers 1-3: 6 heads lost first_token (now focused)"
    assert any(line.startswith("first_token fell in layers 1-3: mean -0.633 per head") for line in lines)


def test_nothing_moved_says_nothing() -> None:
    same = fingerprint([[0.5, 0.5]], [["broad", "broad"]])
    assert summarise(same, same, atol=0.02) == ()


def test_rounding_follows_the_tolerance() -> None:
    raw = fp.Fingerprint({"role_scores.self.L0": [0.123456789], "hidden_norms.with_first": [148.61234, 2.7123456]})
    rounded = fp.rounded(raw, fp.DEFAULT_TOLERANCES)
    assert rounded.values["role_scores.self.L0"] == [0.1235]  # atol 0.02 -> steps of 1e-4
    assert rounded.values["hidden_norms.with_first"] == [148.61, 2.7123]  # rtol 0.02 -> 5 significant digits
    exact = fp.rounded(raw, {"role_scores": fp.Tolerance(), "hidden_norms": fp.Tolerance()})
    assert exact.values == raw.values
