"""Runs spec expectations: loads each model once, captures once per prompt set, evaluates.

Shared by the pytest plugin and the command line. Models are kept one at a
time (the plugin orders items so no model is loaded twice); measurements are
kept for the session.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from interp_assert.errors import CheckInputError, InterpAssertError, ModelLoadError, PromptError, SpecError
from interp_assert.measure import attribution
from interp_assert.measure.architecture import model_map
from interp_assert.measure.capture import generate, max_positions, measure
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.measure.models import LoadedModel, LoadOptions, environment, load_model
from interp_assert.measure.placement import check_device_map, check_max_memory
from interp_assert.measure.prompts import build_batches
from interp_assert.outcome import Outcome
from interp_assert.properties import CheckContext
from interp_assert.run_options import RunOptions
from interp_assert.spec import Entry, PromptSet, SpecFile
from interp_assert.vocab import TARGET_ROLES, TargetRole, parse_head


def model_key(spec: SpecFile, options: RunOptions) -> tuple[str, LoadOptions]:
    """Which model a spec runs on and how it is loaded, after ``--interp-model`` / ``--interp-revision``
    overrides and the device, dtype and placement options (the command line wins over the spec).

    A spec's ``revision`` pins the spec's own model: it does not follow an ``--interp-model``
    replacement, which ``--interp-revision NAME=REV`` pins instead. A spec's ``device_map``,
    ``max_memory`` and ``offload_folder`` go together; ``--interp-device`` replaces them all."""
    header = spec.header
    assert header is not None
    reference = options.overrides.get(header.model, header.model)
    if reference == header.model and not Path(reference).is_absolute():
        candidate = Path(spec.path).parent / reference
        reference = str(candidate.resolve()) if candidate.exists() else reference
    device_map, max_memory, offload = None, None, None
    if header.device_map is not None:
        device_map = check_device_map(header.device_map)
        max_memory = check_max_memory(header.max_memory) if header.max_memory else None
        if header.offload_folder is not None:
            offload = (Path(spec.path).parent / Path(header.offload_folder).expanduser()).resolve()
    load = options.load_options(
        header.model,
        device=header.device,
        dtype=header.dtype,
        revision=header.revision,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload,
    )
    return reference, load


class Runner:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self._model: tuple[tuple[str, LoadOptions], LoadedModel] | None = None
        self._measurements: dict[tuple[object, ...], Measurements] = {}
        self._extra: dict[tuple[str, str], CaptureRequest] = {}
        self._unloadable: dict[tuple[str, LoadOptions], ModelLoadError] = {}

    def model_for(self, spec: SpecFile) -> LoadedModel:
        key = model_key(spec, self.options)
        if key in self._unloadable:
            raise self._unloadable[key]  # tried once this session already; do not retry per item
        if self._model is None or self._model[0] != key:
            self._model = None  # release the previous model before loading the next
            reference, load = key
            try:
                self._model = (key, load_model(reference, load, Path(spec.path).parent))
            except ModelLoadError as exc:
                self._unloadable[key] = exc
                raise
        return self._model[1]

    def release(self) -> None:
        """Drop the loaded model (measurements are kept): another runner is about to load one."""
        self._model = None

    def context(self, spec: SpecFile, prompt_name: str) -> CheckContext:
        """What a property's check sees: the prompt set's measurements and, for snapshots, the
        spec's file, its spec-wide tolerances and the run's environment."""
        assert spec.header is not None
        loaded = self.model_for(spec)
        # The model as the user named it (the spec's, or the override's): never a machine-specific path.
        return CheckContext(
            measurements=self.measurements(spec, prompt_name),
            spec_path=spec.path,
            snapshot_tolerance=spec.header.snapshot_tolerance,
            environment=environment(loaded) | {"model": self.model_named(spec)},
            update_snapshots=self.options.update_snapshots,
        )

    def evaluate(self, spec: SpecFile, entry: Entry) -> Outcome:
        """Evaluate one valid entry. Raises :class:`SpecError` (with the entry's location) for a
        head, layer or prompt the model cannot have."""
        assert spec.header is not None and entry.expectation is not None
        expectation = entry.expectation
        try:
            outcome = expectation.evaluate(self.context(spec, expectation.prompts))
        except CheckInputError as exc:
            model = self.model_named(spec)
            raise SpecError([(entry.location, f"{entry.name}: {exc} (model {model!r})")]) from None
        role = getattr(expectation, "role", None)
        if not outcome.passed and outcome.heads and role in TARGET_ROLES:
            flag = self.token_flag(spec, expectation.prompts, outcome.heads[0], role)
            if flag:
                outcome = replace(outcome, details=(*outcome.details, f"flag: {flag}"))
        return outcome

    def token_flag(self, spec: SpecFile, prompt_name: str, head: str, role: TargetRole) -> str:
        """A line when ``head``'s ``role`` score comes mostly from one frequent query token, else ''.
        Costs one capture of the head's pattern (first sequence), so it is asked on failures only."""
        layer, index = parse_head(head)
        self.also_capture(spec, prompt_name, CaptureRequest(patterns=frozenset({(layer, index)})))
        measured = self.measurements(spec, prompt_name)
        pattern = measured.patterns.get((layer, index))
        if pattern is None:
            return ""
        rows = attribution.row_scores(pattern, measured.pattern_tokens, role)
        found = attribution.dominant_token(rows, measured.pattern_tokens)
        return attribution.describe(head, role, found) if found else ""

    def model_named(self, spec: SpecFile) -> str:
        """The model reference this run measures for ``spec``: the override's when one applies."""
        assert spec.header is not None
        return self.options.overrides.get(spec.header.model, spec.header.model)

    def overridden(self, spec: SpecFile) -> bool:
        return spec.header is not None and spec.header.model in self.options.overrides

    def also_capture(self, spec: SpecFile, prompt_name: str, request: CaptureRequest) -> None:
        """Widen what the next capture of ``prompt_name`` computes (pictures: patterns, labels),
        so evaluation and figures share one pass."""
        key = (spec.path, prompt_name)
        self._extra[key] = self._extra.get(key, CaptureRequest()) | request

    def measurements(self, spec: SpecFile, prompt_name: str) -> Measurements:
        assert spec.header is not None
        loaded = self.model_for(spec)
        request = _spec_request(spec, prompt_name) | self._extra.get((spec.path, prompt_name), CaptureRequest())
        if reads_weights_only(request):  # no prompts, no tokeniser, no forward pass
            key = (model_key(spec, self.options), "", request)
            if key not in self._measurements:
                self._measurements[key] = measure_weights(loaded, request)
            return self._measurements[key]
        prompt_set = spec.header.prompts[prompt_name]
        key = (model_key(spec, self.options), prompt_set.model_dump_json(), request)
        if key not in self._measurements:
            try:
                self._measurements[key] = measure_prompt_set(loaded, prompt_set, request)
            except PromptError as exc:
                where = spec.prompt_locations.get(prompt_name)
                raise SpecError([(where, f"prompt set {prompt_name!r}: {exc}")]) from None
        return self._measurements[key]


def measure_prompt_set(loaded: LoadedModel, prompt_set: PromptSet, request: CaptureRequest) -> Measurements:
    """Tokenise a prompt set, continue it greedily if it asks to ``generate``, and measure it.
    Raises :class:`PromptError` when the set cannot be built for this model."""
    batches = build_batches(
        prompt_set,
        loaded.tokenizer,
        vocab_size=int(loaded.config.vocab_size),
        max_positions=max_positions(loaded),
        extra_tokens=prompt_set.generate,
    )
    texts: tuple[str, ...] = ()
    if prompt_set.generate:
        prompt_lengths = [batch.tokens.shape[1] for batch in batches]
        batches = generate(loaded, batches, prompt_set.generate)
        texts = tuple(
            loaded.tokenizer.decode(row[start:], skip_special_tokens=True)
            for batch, start in zip(batches, prompt_lengths, strict=True)
            for row in batch.tokens.tolist()
        )
    return replace(measure(loaded, batches, request), generated_texts=texts)


def reads_weights_only(request: CaptureRequest) -> bool:
    """True when every measurement asked for reads the weights only (composition, copying scores)."""
    return (
        bool(request.extras)
        and request == CaptureRequest(extras=request.extras)
        and all(getattr(extra, "weights_only", False) for extra in request.extras)
    )


def measure_weights(loaded: LoadedModel, request: CaptureRequest) -> Measurements:
    """The weight-only measurements of ``request``: no prompt is tokenised and the model never runs."""
    mm = model_map(loaded.model)
    return Measurements(
        n_layers=mm.n_layers, n_heads=mm.n_heads, extras={extra: extra.run(loaded, []) for extra in request.extras}
    )


def measure_named(loaded: LoadedModel, name: str, prompt_set: PromptSet, request: CaptureRequest) -> Measurements:
    """:func:`measure_prompt_set`, with a prompt set that cannot be built named in the error."""
    try:
        return measure_prompt_set(loaded, prompt_set, request)
    except PromptError as exc:
        raise InterpAssertError(f"prompt set {name!r}: {exc}") from None


def _spec_request(spec: SpecFile, prompt_name: str) -> CaptureRequest:
    """Everything any valid expectation of ``spec`` needs from ``prompt_name``: one capture serves all."""
    request = CaptureRequest()
    for entry in spec.entries:
        if entry.expectation is not None and entry.expectation.prompts == prompt_name:
            request = request | entry.expectation.requirements()
    return request
