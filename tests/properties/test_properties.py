"""The property registry: built-ins are one module each, and an installed package adds its own
through the ``interp_assert.properties`` entry-point group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interp_assert import properties
from interp_assert.spec import parse_spec, spec_json_schema

PLUGIN = '''
from typing import Literal

from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext


class StrongHeads(Bounded):
    """The fraction of all heads whose role score reaches ``threshold``."""

    property: Literal["strong_heads"]
    role: Literal["previous_token", "first_token"]
    threshold: float = 0.5

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset([self.role]))

    def check(self, context: CheckContext) -> Outcome:
        table = context.measurements.role_scores[self.role]
        value = float((table >= self.threshold).mean())
        passed, line = self.within(f"fraction of {self.role} heads >= {self.threshold:g}", value)
        return Outcome(passed, line, value=value)
'''

SPEC = """\
model: tiny-neo
prompts:
  repeated:
    bos: prepend
    random_tokens: {{length: 10, repeats: 2, count: 2, seed: 0}}
expectations:
  - name: one_previous_token_head
    property: strong_heads
    role: previous_token
    threshold: 0.9
    prompts: repeated
    {bounds}
"""


def install_plugin(pytester: pytest.Pytester) -> None:
    """A package with an entry point, on sys.path, as ``pip install`` would leave it."""
    (pytester.path / "strong_heads_plugin.py").write_text(PLUGIN)
    dist = pytester.path / "strong_heads_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: strong-heads-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[interp_assert.properties]\nstrong_heads = strong_heads_plugin:StrongHeads\n"
    )
    pytester.syspathinsert()


def test_builtin_properties_are_registered_by_their_tags() -> None:
    tags = set(properties.registered())
    assert {"head_score", "top_heads", "snapshot", "generated_text", "attention_stat"} <= tags
    for tag, cls in properties.registered().items():
        assert properties.tag_of(cls) == tag and cls.__module__.startswith("interp_assert.properties.")


def test_an_installed_property_runs_in_a_spec(pytester: pytest.Pytester) -> None:
    install_plugin(pytester)
    (pytester.path / "model_specs").mkdir()
    spec = pytester.path / "model_specs" / "plugin.yaml"
    spec.write_text(SPEC.format(bounds="at_least: 0.1"))  # tiny-neo: L0H0 of 8 heads -> 0.125
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(passed=1)

    spec.write_text(SPEC.format(bounds="at_least: 0.5"))
    failed = pytester.runpytest("model_specs")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(
        ["*fraction of previous_token heads >= 0.9 = 0.1250, expected at_least 0.5: short by 0.3750"]
    )
    # the plug-in's keys are validated like a built-in's, with positions
    spec.write_text(SPEC.format(bounds="at_least: 0.5\n    treshold: 1"))
    invalid = pytester.runpytest("model_specs")
    invalid.stdout.fnmatch_lines(["*plugin.yaml:13:5: unknown key 'treshold'; valid keys here: *threshold*"])
    assert "strong_heads" in json.dumps(spec_json_schema())


def test_a_property_registered_in_process_validates(pytester: pytest.Pytester) -> None:
    install_plugin(pytester)
    import strong_heads_plugin  # type: ignore[import-not-found]

    cls = strong_heads_plugin.StrongHeads
    assert properties.registered()["strong_heads"] is cls
    spec = parse_spec(SPEC.format(bounds="at_least: 2"), "x.yaml")
    assert "at_least: 2.0 is outside [0, 1]" in spec.entries[0].problems[0][1]


def test_a_clashing_tag_is_refused(tmp_path: Path) -> None:
    from typing import Literal

    from interp_assert.properties.base import Expectation

    class Impostor(Expectation):
        property: Literal["head_score"]

    with pytest.raises(properties.PropertyPluginError, match="two properties answer to 'head_score'"):
        properties._registry(("clash",), (Impostor,))


# ---- every built-in check's failure path, on hand-made measurements (pure: no model) ----


def measured(**fields: object) -> object:
    import numpy as np

    from interp_assert.measure.measurements import Measurements

    first = np.array([[0.9, 0.1, 0.2], [0.95, 0.9, 0.1]])  # 2 layers x 3 heads
    roles = {
        "first_token": first,
        "previous_token": np.array([[0.05, 0.8, 0.1], [0.0, 0.05, 0.7]]),
        "self": np.full((2, 3), 0.05),
        "focus": np.array([[0.9, 0.8, 0.3], [0.95, 0.9, 0.7]]),
        "breadth": np.full((2, 3), 0.4),
    }
    defaults = dict(n_layers=2, n_heads=3, role_scores=roles, hidden_norms=np.array([1.0, 3.0, 2.0]))
    defaults["hidden_norms_without_first"] = np.array([1.0, 3.0, 2.0])
    defaults["max_weight"] = np.array([[0.9, 0.8, 0.3], [1.0, 0.9, 0.7]])
    defaults["mean_weight"] = np.full((2, 3), 0.2)
    return Measurements(**(defaults | fields))  # type: ignore[arg-type]


FAILING = [
    (
        {"property": "head_score", "head": "L0H1", "role": "previous_token", "at_least": 0.9},
        "L0H1 previous_token = 0.8000, expected at_least 0.9: short by 0.1000",
    ),
    (
        {"property": "top_heads", "role": "previous_token", "k": 1, "include": ["L1H2"]},
        "top 1 previous_token heads do not include the expected set; missing: L1H2 0.7000 (rank 2)",
    ),
    (
        {"property": "layer_score", "role": "first_token", "layer": 0, "at_least": 0.5},
        "layer 0 mean first_token = 0.4000, expected at_least 0.5: short by 0.1000",
    ),
    (
        {"property": "dominant_layer", "role": "first_token", "layer": 0},
        "layer 1 dominates first_token (mean 0.6500), not layer 0 (mean 0.4000, short by 0.2500)",
    ),
    (
        {"property": "role_fraction", "label": "first_token", "layers": [0, -1], "at_least": 0.6},
        "fraction of first_token heads in layers 0-1 = 0.5000, expected at_least 0.6: short by 0.1000",
    ),
    (
        {"property": "hidden_norm_trend", "layers": [0, -1], "direction": "increasing"},
        "hidden norms over indices 0-2 are not increasing within tolerance 0; 1 step(s) break it: 1->2: 3 -> 2",
    ),
    (
        {"property": "hidden_norm_ratio", "at_most": 1.5},
        "hidden norm ratio [2]/[0] (2/1) = 2.0000, expected at_most 1.5: over by 0.5000",
    ),
    (
        {"property": "attention_stat", "stat": "max", "layers": [0, 1], "at_least": 0.95},
        "1 of 2 layers out of bounds: layer 0 max = 0.9000, expected at_least 0.95: short by 0.0500",
    ),
    (
        {"property": "sink_rate", "at_least": 0.75},
        "sink rate (first_token > 0.3) over all layers = 0.5000, expected at_least 0.75: short by 0.2500",
    ),
]


@pytest.mark.parametrize(("keys", "headline"), FAILING, ids=[keys["property"] for keys, _ in FAILING])
def test_each_check_fails_with_the_number(keys: dict[str, object], headline: str) -> None:
    from interp_assert.properties import CheckContext, expectation_adapter

    expectation = expectation_adapter().validate_python({"name": "x", "prompts": "p", **keys})
    outcome = expectation.evaluate(CheckContext(measured()))  # type: ignore[arg-type]
    assert not outcome.passed
    assert outcome.headline.startswith(headline), outcome.headline


def test_generated_text_failure_shows_the_text() -> None:
    from interp_assert.properties import CheckContext, GeneratedText

    expectation = GeneratedText(property="generated_text", name="x", prompts="p", contains="Paris")
    outcome = expectation.evaluate(CheckContext(measured(generated_texts=(" Lyon.", " Paris."))))  # type: ignore[arg-type]
    assert not outcome.passed and outcome.headline == "1 of 2 generated text(s) do not contain 'Paris': ' Lyon.'"
    assert outcome.value == " Lyon." and outcome.shown == "' Lyon.'"


# ---- the same properties from a Python test: the ``interp`` fixture ----

PYTHON_TEST = """
REPEATED = {"bos": "prepend", "random_tokens": {"length": 10, "repeats": 2, "count": 2, "seed": 0}}


def test_previous_token_head(interp):
    neo = interp.model("tiny-neo")
    assert neo.head_score("L0H0", "previous_token", prompts=REPEATED) > 0.99
    neo.expect("top_heads", prompts=REPEATED, role="induction", k=1, include=["L1H0"])


def test_a_false_claim(interp):
    interp.model("tiny-neo").expect("head_score", prompts=REPEATED, head="L0H1", role="previous_token", at_least=0.9)
"""


def test_interp_fixture_states_properties_from_python(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_model=PYTHON_TEST)
    result = pytester.runpytest("test_model.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ExpectationFailed: expectation 'python' (head_score) failed",
            "*L0H1 previous_token = 0.1220, expected at_least 0.9: short by 0.7780",
            "*model: 'tiny-neo'",
        ]
    )


def test_public_api_is_lazy_and_complete() -> None:
    import interp_assert

    for name in interp_assert.__all__:
        assert getattr(interp_assert, name) is not None, name


def test_massive_activation_on_hand_made_peaks() -> None:
    import numpy as np

    from interp_assert.measure.measurements import ActivationPeaks
    from interp_assert.properties import CheckContext, expectation_adapter

    peaks = ActivationPeaks(
        value=np.array([2.0, 40.0, 900.0, 1200.0]),
        median=np.array([0.5, 0.4, 0.3, 0.5]),
        sequence=np.zeros(4, dtype=int),
        position=np.array([3, 0, 0, 0]),
        dimension=np.array([7, 12, 12, 12]),
    )
    context = CheckContext(measured(activation_peaks=peaks))  # type: ignore[arg-type]

    def check(**keys: object) -> object:
        keys = {"property": "massive_activation", "name": "m", "prompts": "p", **keys}
        return expectation_adapter().validate_python(keys).evaluate(context)

    holds = check(position=0, dimension=12, first_index=[2, 2], at_least=2000)
    assert holds.passed and holds.headline.startswith("massive from index 2 (2 indices); largest |x| 900 = 3000x")
    wrong = check(first_index=[1, 1], dimension=7)
    assert not wrong.passed
    assert wrong.headline == (
        "first massive index is 2, expected in [1, 1]; "
        "largest activation not in dimension 7 at index 2 (in dimension 12)"
    )
    loose = check(position=0, threshold=1000)  # 1200 > 1000 but 1200/0.5 = 2400 >= 1000: index 3 only
    assert loose.passed and loose.measured["first_massive_index"] == 3


def test_logit_lens_forms_on_hand_made_numbers() -> None:
    import numpy as np

    from interp_assert.measure.measurements import LogitLens
    from interp_assert.properties import CheckContext, expectation_adapter

    lens = LogitLens(agreement=np.array([0.0, 0.2, 0.6, 1.0]), kl=np.array([9.0, 4.0, 4.4, 0.0]))
    context = CheckContext(measured(logit_lens=lens))  # type: ignore[arg-type]

    def check(**keys: object) -> object:
        keys = {"property": "logit_lens", "name": "l", "prompts": "p", **keys}
        return expectation_adapter().validate_python(keys).evaluate(context)

    assert check(agreement_at_least=0.5, by_index=2).passed
    short = check(agreement_at_least=0.5, by_index=1)
    assert short.headline == "agreement at index 1 = 0.2000, expected at least 0.5: short by 0.3000"
    assert check(first_reaching=0.5, within=[2, 2]).passed
    assert not check(first_reaching=0.5, within=[3, -1]).passed
    rises = check(kl_non_increasing=[0, -1])
    assert rises.headline == "KL rises over indices 0-3: 1->2: 4 -> 4.4"
    assert rises.shown == "KL 1->2 +10.00%"  # an audit row shows the number that failed, not an index
    assert check(kl_non_increasing=[0, -1], tolerance=0.1).passed
    both = check(first_reaching=0.5, within=[2, 2], kl_non_increasing=[0, -1], tolerance=0.2)
    assert both.passed and both.shown == "0.5 at 2; KL 1->2 +10.00%"


@pytest.mark.slow
def test_logit_lens_on_smollm2_reads_the_answer_late() -> None:
    from interp_assert.api import Interp

    prose = ["The old lighthouse keeper climbed the spiral stairs every evening to light the lamp."]
    smol = Interp().model("smollm2-135m-instruct")
    outcome = smol.expect("logit_lens", prompts=prose, first_reaching=0.3, within=[20, 30])
    assert outcome.passed
    with pytest.raises(AssertionError, match=r"agreement at index 5 = 0\.0"):
        smol.expect("logit_lens", prompts=prose, agreement_at_least=0.5, by_index=5)


NEW_KIND_PROBLEMS = [
    ("property: logit_lens\n    agreement_at_least: 0.5", "'agreement_at_least' and 'by_index' go together"),
    ("property: logit_lens", "state something to check: agreement_at_least + by_index"),
    ("property: logit_lens\n    first_reaching: 0.5\n    within: [5, 2]", "range [5, 2] is empty"),
    ("property: massive_activation", "state something to check: 'position', 'dimension', 'first_index'"),
    ("property: massive_activation\n    factor: 0.5", "factor: Input should be greater than 1"),
    ("property: sink_rate\n    eps: 1.5\n    at_least: 0.1", "eps: Input should be less than 1"),
    ("property: sink_rate\n    at_least: 1.5", "at_least: 1.5 is outside [0, 1]"),
]


@pytest.mark.parametrize(("keys", "message"), NEW_KIND_PROBLEMS)
def test_new_kinds_refuse_bad_keys_with_a_position(keys: str, message: str) -> None:
    text = (
        SPEC.split("expectations:")[0].format() + f"expectations:\n  - name: bad\n    prompts: repeated\n    {keys}\n"
    )
    spec = parse_spec(text, "bad.yaml")
    [(location, problem)] = spec.entries[0].problems
    assert location is not None and location.path == "bad.yaml" and location.line >= 7
    assert message in problem, problem


def test_interp_fixture_honours_an_override(pytester: pytest.Pytester) -> None:
    """A run of Python tests only: the override applies by name and is not refused for want of a spec."""
    pytester.makepyfile(
        test_model="""
def test_override(interp):
    model = interp.model("my-model")
    assert model.loaded.reference == "tiny-neo"
"""
    )
    pytester.runpytest("test_model.py", "--interp-model", "my-model=tiny-neo").assert_outcomes(passed=1)


def test_every_property_documents_itself() -> None:
    """Every built-in property has its ``reference`` row (keys, passes when), from which
    ``python scripts/gen_docs.py`` writes docs/properties.md (``tests/test_docs.py`` checks the page)."""
    from interp_assert.properties import BUILTIN
    from interp_assert.spec.schema import property_table

    assert all(cls.reference[0] and cls.reference[1] for cls in BUILTIN)
    assert property_table().count("\n") == len(BUILTIN) + 1


def test_loss_property_means_the_positions_and_says_by_how_much() -> None:
    import numpy as np

    from interp_assert.errors import CheckInputError
    from interp_assert.measure.measurements import Measurements
    from interp_assert.properties import CheckContext, expectation_adapter

    losses = np.full((2, 9), 4.0)  # T = 10
    losses[:, 5:] = 0.5  # positions 6..9: predictable
    m = Measurements(2, 4, token_losses=(losses,))

    def loss(**keys: object) -> object:
        return expectation_adapter().validate_python({"name": "x", "prompts": "p", "property": "loss"} | keys)

    held = loss(positions=[6, -1], at_most=0.6).evaluate(CheckContext(m))  # type: ignore[attr-defined]
    assert held.passed and held.value == 0.5
    broken = loss(at_most=1.0).evaluate(CheckContext(m))  # type: ignore[attr-defined]
    assert not broken.passed
    assert (
        "mean next-token loss on every position (nats) = 2.4444, expected at_most 1: over by 1.4444" in broken.headline
    )
    with pytest.raises(CheckInputError, match="losses were not captured"):
        loss(at_most=1.0).check(CheckContext(Measurements(2, 4)))  # type: ignore[attr-defined]
