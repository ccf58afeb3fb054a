"""The same properties from Python, without a YAML file: the ``interp`` pytest fixture.

    def test_previous_token_head(interp):
        smol = interp.model("smollm2-135m-instruct")
        assert smol.head_score("L16H0", "previous_token", prompts=["The cat sat on the mat."]) > 0.6
        smol.expect("sink_rate", prompts=PROSE, at_least=0.7)   # fails with a spec item's failure text

Models load once per session; a prompt set is measured once per set of needs. ``prompts``
is a list of texts (BOS prepended), or a mapping in spec format (``{"bos": ..., "texts": ...}``
or ``{"random_tokens": {...}}``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from interp_assert.errors import CheckInputError, InterpAssertError
from interp_assert.evaluation import Evaluation, ModelIdentity
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, environment, load_model
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.properties import CheckContext, expectation_adapter
from interp_assert.run_options import RunOptions
from interp_assert.runner import measure_named, model_record
from interp_assert.spec import PromptSet
from interp_assert.vocab import DType, Role, parse_head

Prompts = Sequence[str] | Mapping[str, Any] | PromptSet


class ExpectationFailed(AssertionError):
    """An expectation stated from Python did not hold; the message reads like a spec item's failure."""


class Interp:
    """Models by reference, loaded once, with the run's options (``--interp-*`` flags)."""

    def __init__(self, options: RunOptions | None = None) -> None:
        self.options = options or RunOptions()
        self._models: dict[tuple[str, LoadOptions], Model] = {}

    def model(
        self, reference: str, *, dtype: DType | None = None, device: str | None = None, revision: str | None = None
    ) -> Model:
        """``reference`` loaded once per session with the run's options; ``revision`` for a hub id
        (``--interp-revision`` wins, and so do ``--interp-device-map`` and its companions)."""
        target = self.options.overrides.get(reference, reference)
        load = self.options.load_options(reference, device=device, dtype=dtype, revision=revision)
        key = (target, load)
        if key not in self._models:
            self._models[key] = Model(
                reference, load_model(target, load), update_snapshots=self.options.update_snapshots
            )
        return self._models[key]


class Model:
    """One loaded model: measure prompt sets and state expectations about them."""

    def __init__(self, name: str, loaded: LoadedModel, *, update_snapshots: bool = False) -> None:
        self.name = name
        self.loaded = loaded
        self.update_snapshots = update_snapshots  # pytest's --snapshot-update
        self._measured: dict[tuple[str, CaptureRequest], Measurements] = {}

    def measure(self, prompts: Prompts, request: CaptureRequest) -> Measurements:
        prompt_set = as_prompt_set(prompts)
        key = (prompt_set.model_dump_json(), request)
        if key not in self._measured:
            self._measured[key] = measure_named(self.loaded, "prompts", prompt_set, request)
        return self._measured[key]

    def head_score(self, head: str, role: Role, *, prompts: Prompts) -> float:
        """One head's role score (see docs/spec.md, Scores)."""
        layer, index = parse_head(head)
        table = self.measure(prompts, CaptureRequest(roles=frozenset([role]))).role_scores[role]
        if not (0 <= layer < table.shape[0] and 0 <= index < table.shape[1]):
            raise CheckInputError(f"head {head} is out of range: this model has {table.shape[0]} x {table.shape[1]}")
        return float(table[layer, index])

    def role_scores(self, role: Role, *, prompts: Prompts) -> Any:
        """``[layers, heads]`` array of one role's scores."""
        return self.measure(prompts, CaptureRequest(roles=frozenset([role]))).role_scores[role].copy()

    def expect(
        self,
        property: str,
        *,
        prompts: Prompts,
        name: str = "python",
        snapshot_owner: str | Path | None = None,
        **keys: Any,
    ) -> Evaluation:
        """Check one expectation, written as a spec would (``property`` and its keys), and return its
        :class:`~interp_assert.evaluation.Evaluation` (the record pytest, report, audit and track show).
        Raises :class:`ExpectationFailed` with the measured numbers when it does not hold.

        A ``snapshot`` is stored under ``name`` in ``__interp_snapshots__/<module>.ambr`` beside the
        calling test module (or ``snapshot_owner``, a ``.py`` path), and recorded with pytest's
        ``--snapshot-update`` as a spec's is."""
        __tracebackhide__ = True  # pytest shows the caller's line and the message, not this frame
        owner = Path(snapshot_owner) if snapshot_owner is not None else Path(sys._getframe(1).f_code.co_filename)
        if property == "snapshot" and owner.suffix != ".py":
            raise InterpAssertError(
                f"expect('snapshot', name={name!r}) needs a .py test module to store it beside; "
                f"{owner} is not one: pass snapshot_owner=__file__"
            )
        try:
            expectation = expectation_adapter().validate_python(
                {"property": property, "name": name, "prompts": "prompts", **keys}
            )
        except Exception as exc:  # pydantic's ValidationError: say it in the spec's words
            raise InterpAssertError(f"expectation {property!r} {keys}: {exc}") from None
        measured = self.measure(prompts, expectation.requirements())
        context = CheckContext(
            measured,
            spec_path=str(owner),
            environment=environment(self.loaded) | {"model": self.name},
            update_snapshots=self.update_snapshots,
        )
        low, high = expectation.bounds()
        model = ModelIdentity.from_record(self.name, model_record(self.loaded))
        evaluation = Evaluation(
            str(owner), name, property, "", model, expectation.evaluate(context), bound_low=low, bound_high=high
        )
        if not evaluation.passed:
            lines = [
                f"expectation {name!r} ({property}) failed",
                f"  {evaluation.headline}",
                *(f"  {detail}" for detail in evaluation.details),
                f"  model: {self.name!r}",
            ]
            raise ExpectationFailed("\n".join(lines))
        return evaluation


def as_prompt_set(prompts: Prompts) -> PromptSet:
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, Mapping):
        return PromptSet.model_validate(dict(prompts))
    if isinstance(prompts, str):
        raise InterpAssertError(f"prompts={json.dumps(prompts)}: give a list of texts, not one string")
    return PromptSet.model_validate({"bos": "prepend", "texts": list(prompts)})


__all__ = ["ExpectationFailed", "Interp", "Model", "as_prompt_set"]
